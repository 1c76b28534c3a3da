"""generate: autoregressive decoding of a compiled model with its KV cache, as Hugging Face's `generate`.

    tokens = compiled.generate(input_ids, attention_mask, max_new_tokens=32)               # greedy
    tokens = compiled.generate(input_ids, max_new_tokens=32, do_sample=True, top_p=0.9,
                               generator=torch.Generator().manual_seed(0))                 # reproducible sampling

One prefill step over the prompt (the cached-step graph `prefill`, or `decode` for a one-token prompt), then one
decode step per new token; every step is a rewritten graph, so LAMP runs at every attention site of every step.

The semantics are those of transformers' `generate` for the same arguments:
- prompts of a batch are left-padded; positions count the tokens before each one (padding excluded), so a padded
  prompt continues exactly as it would alone;
- without an attention_mask, the mask is inferred from `pad_token_id` when the prompt holds it and it is not an
  EOS token, else every position is a token;
- a row stops at its first EOS; finished rows are filled with `pad_token_id` (EOS when there is no pad) until
  every row has finished or `max_new_tokens` were generated; the result is prompt + new tokens;
- sampling: temperature, then top-k, then top-p (transformers' own logits warpers), then a multinomial draw from
  `generator` (the global RNG when None); greedy is the argmax;
- arguments left None take the model's generation config (EOS and pad tokens, top_k, top_p, temperature);
- `streamer.put` receives the prompt, then each step's new tokens; `streamer.end()` closes it.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor


def generate(compiled, input_ids: Tensor, attention_mask: Tensor | None = None, *, max_new_tokens: int = 20,
             do_sample: bool = False, temperature: float | None = None, top_k: int | None = None,
             top_p: float | None = None, eos_token_id: int | list[int] | None = None,
             pad_token_id: int | None = None, generator: torch.Generator | None = None, streamer=None,
             **unknown) -> Tensor:
    """Prompt + up to `max_new_tokens` new tokens per row, i64[B, T + n] (see module docstring)."""
    if unknown:
        raise TypeError(f"generate() got unsupported argument(s): {', '.join(sorted(unknown))}; lampc supports "
                        "max_new_tokens, do_sample, temperature, top_k, top_p, eos_token_id, pad_token_id, "
                        "generator, streamer")
    config = compiled.generation_config
    eos = _token_list("eos_token_id", eos_token_id if eos_token_id is not None else _default(config, "eos_token_id"),
                      compiled.vocab_size)
    pad = pad_token_id if pad_token_id is not None else _default(config, "pad_token_id")
    if pad is None and eos:
        pad = eos[0]
    if pad is not None:
        pad = _token_list("pad_token_id", pad, compiled.vocab_size)[0]
    max_new_tokens = _check_count("max_new_tokens", max_new_tokens)
    warpers = _warpers(temperature, top_k, top_p, config) if do_sample else None
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a (batch, prompt length) tensor of token ids, got {shape}")
    if attention_mask is None:
        attention_mask = _infer_mask(input_ids, pad, eos)
    prompt_len = input_ids.shape[1]
    if prompt_len < 1:
        raise ValueError("input_ids: the prompt is empty; give at least one token per row")
    if prompt_len + max_new_tokens > compiled.max_len:
        raise ValueError(f"prompt length {prompt_len} + max_new_tokens {max_new_tokens} exceeds the model's context "
                         f"of {compiled.max_len} positions")
    _check_left_padded(attention_mask, input_ids)
    if streamer is not None:
        streamer.put(input_ids.cpu())
    if max_new_tokens == 0:
        if streamer is not None:
            streamer.end()
        return input_ids.clone()

    tokens, mask = input_ids, attention_mask
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    eos_ids = torch.tensor(eos, dtype=input_ids.dtype, device=input_ids.device) if eos else None
    with torch.no_grad():
        out = compiled(input_ids, attention_mask=mask, use_cache=True)
        for step in range(max_new_tokens):
            logits = out.logits[:, -1].float()
            next_tokens = _choose(tokens, logits, warpers, generator)
            if eos_ids is not None:
                next_tokens = torch.where(unfinished, next_tokens, torch.full_like(next_tokens, pad))
            tokens = torch.cat([tokens, next_tokens[:, None]], dim=-1)
            if streamer is not None:
                streamer.put(next_tokens.cpu())
            if eos_ids is not None:
                unfinished = unfinished & ~torch.isin(next_tokens, eos_ids)
                if not bool(unfinished.any()):
                    break
            if step + 1 == max_new_tokens:
                break
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=-1)
            out = compiled(next_tokens[:, None], attention_mask=mask, past_key_values=out.past_key_values,
                           use_cache=True)
    if streamer is not None:
        streamer.end()
    return tokens


def _choose(tokens: Tensor, logits: Tensor, warpers, generator) -> Tensor:
    if warpers is None:
        return torch.argmax(logits, dim=-1)
    scores = warpers(tokens, logits)
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


def _warpers(temperature, top_k, top_p, config):
    """transformers' warpers in generate's order: temperature, top-k, top-p."""
    from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    temperature = temperature if temperature is not None else _default(config, "temperature")
    top_k = top_k if top_k is not None else _default(config, "top_k")
    top_p = top_p if top_p is not None else _default(config, "top_p")
    warpers = LogitsProcessorList()
    if temperature is not None:
        temperature = _check_real("temperature", temperature)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
        if temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(temperature))
    if top_k is not None:
        top_k = _check_count("top_k", top_k)
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1 (or None for no top-k filter), got {top_k}")
        warpers.append(TopKLogitsWarper(top_k))
    if top_p is not None:
        top_p = _check_real("top_p", top_p)
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
    return warpers


def _default(config, name: str):
    return getattr(config, name, None) if config is not None else None


def _token_list(name: str, value, vocab_size: int) -> list[int]:
    values = value if isinstance(value, (list, tuple)) else [value]
    if value is None:
        return []
    out = []
    for v in values:
        if isinstance(v, Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 0 <= int(v) < vocab_size:
            raise ValueError(f"{name} must be a token id in [0, {vocab_size}) (or a list of them), got {value!r}")
        out.append(int(v))
    return out


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def _check_real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _infer_mask(input_ids: Tensor, pad: int | None, eos: list[int]) -> Tensor:
    """Hugging Face's rule: padding = the pad token, if the prompt holds it and it is not an EOS token."""
    if pad is not None and pad not in eos and bool((input_ids == pad).any()):
        return (input_ids != pad).long()
    return torch.ones_like(input_ids, dtype=torch.long)


def _check_left_padded(attention_mask: Tensor, input_ids: Tensor) -> None:
    if not isinstance(attention_mask, Tensor) or attention_mask.shape != input_ids.shape:
        shape = tuple(attention_mask.shape) if isinstance(attention_mask, Tensor) else type(attention_mask).__name__
        raise ValueError(f"attention_mask must be shaped like input_ids {tuple(input_ids.shape)}, got {shape}")
    if attention_mask.numel() == 0:
        return
    if not bool((attention_mask[:, -1] == 1).all()):
        raise ValueError("attention_mask: the last prompt position of every row must be a token; pad prompts on the "
                         "left (tokenizer.padding_side = 'left') to generate")
    if bool((attention_mask[:, 1:] < attention_mask[:, :-1]).any()):
        raise ValueError("attention_mask: padding inside a prompt; pad prompts on the left only to generate")
