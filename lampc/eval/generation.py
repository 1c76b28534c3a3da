"""Generation metrics: does a low-precision model keep the FP32 model's greedy continuation, and for how long?

    probe = GenerationProbe.build(model, prompts, new_tokens=32)     # FP32 greedy continuations, once
    probe.measure(compiled) -> {"gen_match_tokens": ..., "gen_identical": ..., "gen_decode_rate": ...}

- `gen_match_tokens`: mean number of new tokens before the first one that differs from FP32's (new_tokens when
  the whole continuation matches). Once a token differs the two continuations condition on different text, so
  this is the length of agreement, not a count of errors.
- `gen_identical`: the share of prompts whose new_tokens tokens all equal FP32's.
- `gen_prefill_rate`, `gen_decode_rate`: the recompute rate (mean over sites, visible entries) of the prompt pass
  and of the one-token decode steps, counted apart;
- `gen_prefill_keys_per_row`, `gen_decode_keys_per_row`: the mean number of visible keys per attention row in each
  (a short row has few keys, each heavy, so more of them are recomputed: see lampc.eval.caveats);
- `gen_match_tokens_lo`, `_hi`: its 95% percentile-bootstrap interval over prompts (lampc.eval.uncertainty), from
  the per-prompt values kept in `gen_per_prompt`.

Both sides decode greedily for exactly `new_tokens` tokens (no EOS stop), the reference with the uncompiled model
and its own transformers cache (`fp32_greedy`, written independently of lampc's decode graphs).
"""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..capture_step import cache_argument, returned_cache
from ..cells import CellCompiler
from ..criteria import NO_LOOKAHEAD
from ..policy import NO_RECOMPUTE
from ..site_kinds import KINDS
from .caveats import generation_notes

NO_EOS: list[int] = []  # generate() with eos_token_id=[]: never stop early


def fp32_greedy(model: nn.Module, prompts: Tensor, new_tokens: int, attention_mask: Tensor | None = None) -> Tensor:
    """The uncompiled model's greedy new tokens i64[N, new_tokens], with its own KV cache, no EOS stop."""
    mask = torch.ones_like(prompts) if attention_mask is None else attention_mask
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out_tokens = []
    with torch.no_grad():
        out = model(input_ids=prompts, attention_mask=mask, position_ids=positions, use_cache=True)
        for step in range(new_tokens):
            token = out.logits[:, -1].float().argmax(-1)
            out_tokens.append(token)
            if step + 1 == new_tokens:
                break
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=-1)
            positions = positions[:, -1:] + 1
            out = model(input_ids=token[:, None], attention_mask=mask, position_ids=positions, use_cache=True,
                        **{cache_argument(model): returned_cache(out)})
    return torch.stack(out_tokens, dim=1) if out_tokens else prompts.new_zeros(prompts.shape[0], 0)


def first_divergence(reference: Tensor, continuation: Tensor) -> Tensor:
    """Per row, the index of the first new token that differs (the length when none differs): i64[N]."""
    differs = reference != continuation
    length = reference.shape[1]
    index = torch.where(differs.any(-1), differs.long().argmax(-1), torch.full_like(differs[:, 0], length,
                                                                                    dtype=torch.long))
    return index.long()


@dataclass
class GenerationProbe:
    """N prompts and the FP32 model's greedy continuations of `new_tokens` tokens (see module docstring)."""

    prompts: Tensor  # i64[N, P]
    reference: Tensor  # i64[N, new_tokens]
    batch_size: int = 4

    @classmethod
    def build(cls, model: nn.Module, prompts: Tensor, new_tokens: int, batch_size: int = 4) -> "GenerationProbe":
        if new_tokens < 1:
            raise ValueError(f"new_tokens must be >= 1, got {new_tokens}")
        reference = torch.cat([fp32_greedy(model, batch, new_tokens) for batch in prompts.split(batch_size)])
        return cls(prompts, reference, batch_size)

    @property
    def new_tokens(self) -> int:
        return self.reference.shape[1]

    def continuations(self, compiled) -> Tensor:
        """The compiled model's greedy new tokens for every prompt (no EOS stop), batch by batch."""
        out = []
        for batch in self.prompts.split(self.batch_size):
            tokens = compiled.generate(batch, max_new_tokens=self.new_tokens, eos_token_id=NO_EOS)
            out.append(tokens[:, batch.shape[1]:])
        return torch.cat(out)

    def measure(self, compiled) -> dict:
        """The generation columns of a sweep row for `compiled` (statistics of its step graphs reset first)."""
        from .uncertainty import bootstrap_ci

        compiled.reset_stats()
        index = first_divergence(self.reference, self.continuations(compiled))
        stats = compiled.stats()
        n, p = self.prompts.shape
        lo, hi = bootstrap_ci(index.tolist())
        return {
            "gen_prompts": n, "gen_new_tokens": self.new_tokens,
            "gen_match_tokens": float(index.float().mean()), "gen_match_tokens_lo": lo, "gen_match_tokens_hi": hi,
            "gen_identical": float((index == self.new_tokens).float().mean()),
            "gen_prefill_rate": stats.get("prefill", {}).get("overall", {}).get("layer_mean_rate", 0.0),
            "gen_decode_rate": stats.get("decode", {}).get("overall", {}).get("layer_mean_rate", 0.0),
            "gen_prefill_keys_per_row": keys_per_row(stats.get("prefill"), n * p),
            "gen_decode_keys_per_row": keys_per_row(stats.get("decode"), n * (self.new_tokens - 1)),
            "gen_per_prompt": {"match_tokens": index.tolist()},
        }


def keys_per_row(stats: dict | None, rows_per_head: int) -> float | None:
    """Mean visible keys per attention row of one phase's statistics, over `rows_per_head` query rows per head
    (prompt tokens for prefill, one per decode step); None without attention sites or rows."""
    sites = [s for s in (stats or {}).get("sites", []) if KINDS[s["kind"]].per_head and s["per_head"]]
    if not sites or rows_per_head <= 0:
        return None
    return sum(s["visible"] / (len(s["per_head"]) * rows_per_head) for s in sites) / len(sites)


def compare_generations(model, tokenizer, prompts: list[str], overrides: dict, *, policy=None, variants=(),
                        max_new_tokens: int = 32, do_sample: bool = False, temperature=None, top_k=None, top_p=None,
                        seed: int = 0) -> dict:
    """Continue `prompts` with the LAMP policy (`policy` with `overrides`, as lampc.compile takes them) and the
    `variants`: "fp32", the model's own FP32 math (m23, no recompute: equals transformers' generate), and
    "uniform", the policy's format with no recompute. Every variant samples from the same seed; the first is the
    reference each divergence is measured from."""
    ids, mask = _left_padded(tokenizer, prompts)
    compiler = CellCompiler(model, steps="eager")  # every variant generates: each step captured once, here
    lamp = compiler(policy, **overrides)
    uniform = {**overrides, **NO_RECOMPUTE}
    runs = {"fp32": compiler(None, format="m23", criterion="uniform")} if "fp32" in variants else {}
    runs["lamp"] = lamp
    if NO_LOOKAHEAD in variants:  # the variant named after it: the same numbers, no rule (and no per-site rules)
        runs[NO_LOOKAHEAD] = compiler(None if policy is None else dataclasses.replace(policy, per_site=()), **uniform)
    options = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k,
                   top_p=top_p)
    tokens = {name: compiled.generate(ids, mask, generator=torch.Generator().manual_seed(seed), **options)
              for name, compiled in runs.items()}
    decode_stats, prefill_stats = lamp.stats("decode"), lamp.stats("prefill")
    decode, prefill = decode_stats["overall"], prefill_stats["overall"]
    eos = set(_as_list(getattr(lamp.generation_config, "eos_token_id", None)))
    first = next(iter(tokens))
    items = []
    for row, prompt in enumerate(prompts):
        reference = _until_eos(tokens[first][row, ids.shape[1]:].tolist(), eos)
        entries = []
        for name, out in tokens.items():
            new = _until_eos(out[row, ids.shape[1]:].tolist(), eos)
            at = None if name == first else _diverges_at(reference, new)
            entries.append({"variant": name, "tokens": new, "text": tokenizer.decode(new),
                            "marked": _marked(tokenizer, new, at), "diverges_at": at})
        items.append({"prompt": prompt, "variants": entries})
    per_site = f"; per-site rules at {len(lamp.policy.per_site)} site(s)" if lamp.policy.per_site else ""
    steps = tokens["lamp"].shape[1] - ids.shape[1] - 1  # decode calls: every new token but the first
    keys = {"prefill": keys_per_row(prefill_stats, int(mask.sum())),  # query rows: real prompt tokens
            "decode": keys_per_row(decode_stats, len(prompts) * steps)}  # one per prompt per decode call
    return {"policy": (lamp.policy.attention.summary if lamp.policy.attention else str(lamp.policy.to_dict()))
            + per_site,
            "max_new_tokens": max_new_tokens, "do_sample": do_sample, "seed": seed, "prompts": items,
            "recompute_rate": {"prefill": prefill["rate"], "decode": decode["rate"]},
            "keys_per_row": keys, "notes": generation_notes(keys["prefill"], keys["decode"])}


def _left_padded(tokenizer, prompts: list[str]) -> tuple[Tensor, Tensor]:
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if any(not e for e in encoded):
        raise ValueError("a prompt encodes to no tokens")
    width = max(len(e) for e in encoded)
    ids = torch.zeros(len(encoded), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, e in enumerate(encoded):
        ids[row, width - len(e):] = torch.tensor(e)
        mask[row, width - len(e):] = 1
    return ids, mask


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [int(value)]


def _until_eos(tokens: list[int], eos: set[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[:i + 1]
    return tokens


def _diverges_at(reference: list[int], tokens: list[int]) -> int | None:
    for i, (a, b) in enumerate(zip(reference, tokens)):
        if a != b:
            return i
    return None if len(reference) == len(tokens) else min(len(reference), len(tokens))


def _marked(tokenizer, tokens: list[int], at: int | None) -> str:
    if at is None or at >= len(tokens):
        return tokenizer.decode(tokens)
    return (tokenizer.decode(tokens[:at]) + "[[" + tokenizer.decode(tokens[at:at + 1]) + "]]"
            + tokenizer.decode(tokens[at + 1:]))
