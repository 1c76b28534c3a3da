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
- the length, with `max_new_tokens` left None (HF's default): the generation config's `max_new_tokens`, else its
  `max_length` (prompt included), else 20 new tokens, cut at the model's context (HF's model-agnostic default);
- sampling: temperature, then top-k, then top-p (transformers' own logits warpers), then a multinomial draw from
  `generator` (the global RNG when None); greedy is the argmax;
- arguments left None take the model's generation config (EOS and pad tokens, top_k, top_p, temperature), and
  what it leaves unset transformers' own defaults (`SAMPLING_DEFAULTS`: top_k 50 when sampling);
- `streamer.put` receives the prompt, then each step's new tokens; `streamer.end()` closes it.

Where lampc is stricter than transformers: a temperature, top_k or top_p that no sampler could use (temperature
<= 0, top_k < 1, top_p outside (0, 1]) is refused even with greedy decoding, where HF ignores it; sampling flags
given with greedy decoding give one warning naming them (HF logs one). Every argument is checked before the
first step (a generator that is not a torch.Generator, a streamer without put/end, input ids that are not integer
token ids of the vocabulary, a mask that is not an integer tensor of 0 and 1), so nothing is computed or streamed
before a refusal. `do_sample` left None is greedy decoding, where transformers reads None as the generation
config's `do_sample` (a model whose config samples samples there).
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
import torch
from torch import Tensor

from .inputs import check_attention_mask as _check_attention_mask, check_input_ids as _check_input_ids

DEFAULT_NEW_TOKENS = 20  # transformers' model-agnostic default length (GenerationConfig's max_length of 20 new)


def generate(compiled, input_ids: Tensor, attention_mask: Tensor | None = None, *, max_new_tokens: int | None = None,
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
    _check_generator(generator)
    _check_streamer(streamer)
    warpers = _sampling(do_sample, temperature, top_k, top_p, config)
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a (batch, prompt length) tensor of token ids, got {shape}")
    if attention_mask is None:
        attention_mask = _infer_mask(input_ids, pad, eos)
    prompt_len = input_ids.shape[1]
    if prompt_len < 1:
        raise ValueError("input_ids: the prompt is empty; give at least one token per row")
    max_new_tokens = new_token_count(max_new_tokens, config, prompt_len, compiled.max_len)
    if prompt_len + max_new_tokens > compiled.max_len:
        raise ValueError(f"prompt length {prompt_len} + max_new_tokens {max_new_tokens} exceeds the model's context "
                         f"of {compiled.max_len} positions")
    _check_input_ids(input_ids, compiled.vocab_size, compiled.max_len, min_len=1)  # dtype and token ids
    _check_attention_mask(attention_mask, input_ids)  # shape, integer dtype, 0/1
    _check_left_padded(attention_mask)
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


def new_token_count(max_new_tokens, config, prompt_len: int, context: int) -> int:
    """How many tokens to generate, as transformers decides it (see module docstring)."""
    if max_new_tokens is None:
        max_new_tokens = _default(config, "max_new_tokens")
    if max_new_tokens is not None:
        return _check_count("max_new_tokens", max_new_tokens)
    max_length = _default(config, "max_length")
    if max_length is None:  # HF: 20 new tokens, cut at the position table
        if prompt_len >= context:
            raise ValueError(f"prompt length {prompt_len} leaves no room for a new token in the model's context of "
                             f"{context} positions")
        return min(prompt_len + DEFAULT_NEW_TOKENS, context) - prompt_len
    max_length = _check_count("generation_config.max_length", max_length)
    if prompt_len >= max_length:
        raise ValueError(f"the prompt has {prompt_len} tokens and the model's generation config sets "
                         f"max_length={max_length} (prompt included): nothing is left to generate; give "
                         "max_new_tokens")
    return max_length - prompt_len


SAMPLING_DEFAULTS = {"temperature": 1.0, "top_k": 50, "top_p": 1.0}
"""What transformers' generate samples with when neither the call nor the generation config sets a value
(GenerationConfig's model-agnostic defaults): a sampled token is one of the 50 most likely unless told otherwise."""


def _sampling(do_sample, temperature, top_k, top_p, config):
    """The warpers when sampling, None for greedy; explicit values are checked either way (module docstring)."""
    if do_sample is None:
        do_sample = False  # greedy; transformers would take generation_config.do_sample (module docstring)
    if not isinstance(do_sample, (bool, np.bool_)):  # a string "False" would sample
        raise TypeError(f"do_sample must be True or False, got {do_sample!r}")
    checks = {"temperature": _check_temperature, "top_k": _check_top_k, "top_p": _check_top_p}
    given = {name: check(value) for (name, check), value in zip(checks.items(), (temperature, top_k, top_p))}
    if not do_sample:
        inert = {"temperature": 1.0, "top_p": 1.0}  # values that change no distribution
        flags = [f"{name}={value}" for name, value in given.items()
                 if value is not None and value != inert.get(name)]
        if flags:
            warnings.warn(f"generate: do_sample=False (greedy decoding), so {', '.join(flags)} "
                          f"{'has' if len(flags) == 1 else 'have'} no effect; pass do_sample=True to sample",
                          stacklevel=4)
        return None
    return _warpers(*(value if value is not None else checks[name](_default_or(config, name, SAMPLING_DEFAULTS[name]))
                      for name, value in given.items()))


def _warpers(temperature, top_k, top_p):
    """transformers' warpers in generate's order: temperature, top-k, top-p. The values are checked already (by
    _sampling: the call's once, the generation config's as it takes them)."""
    from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    warpers = LogitsProcessorList()
    if temperature is not None and temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k is not None:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p is not None and top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


def _check_temperature(value) -> float | None:
    if value is None:
        return None
    value = _check_real("temperature", value)
    if not value > 0:
        raise ValueError(f"temperature must be > 0 (or None), got {value}; for greedy decoding pass do_sample=False")
    return value


def _check_top_k(value) -> int | None:
    if value is None:
        return None
    value = _check_int("top_k", value)
    if value < 1:
        raise ValueError(f"top_k must be >= 1 (or None for no top-k filter), got {value}")
    return value


def _check_top_p(value) -> float | None:
    if value is None:
        return None
    value = _check_real("top_p", value)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {value}")
    return value


def _check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator (or None for the global RNG), got "
                        f"{type(generator).__name__}")


def _check_streamer(streamer) -> None:
    if streamer is not None and not all(callable(getattr(streamer, name, None)) for name in ("put", "end")):
        raise TypeError(f"streamer must have put(tokens) and end() methods (a transformers BaseStreamer), got "
                        f"{type(streamer).__name__}")


def _default(config, name: str):
    return getattr(config, name, None) if config is not None else None


def _default_or(config, name: str, fallback):
    value = _default(config, name)
    return fallback if value is None else value


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


def _check_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


def _check_count(name: str, value) -> int:
    value = _check_int(name, value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _check_real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _infer_mask(input_ids: Tensor, pad: int | None, eos: list[int]) -> Tensor:
    """Hugging Face's rule: padding = the pad token, if the prompt holds it and it is not an EOS token."""
    if pad is not None and pad not in eos and bool((input_ids == pad).any()):
        return (input_ids != pad).long()
    return torch.ones_like(input_ids, dtype=torch.long)


def _check_left_padded(attention_mask: Tensor) -> None:
    """Every row's padding comes before its tokens (the mask is already checked: shape, integer 0/1)."""
    if attention_mask.numel() == 0:
        return
    if not bool((attention_mask[:, -1] == 1).all()):
        raise ValueError("attention_mask: the last prompt position of every row must be a token; pad prompts on the "
                         "left (tokenizer.padding_side = 'left') to generate")
    if bool((attention_mask[:, 1:] < attention_mask[:, :-1]).any()):
        raise ValueError("attention_mask: padding inside a prompt; pad prompts on the left only to generate")
