"""The cached-step graphs of a compiled model: prefill and decode with a KV cache, rewritten like the full graph.

`StepGraphs.run(input_ids, attention_mask, position_ids, cache)` picks the step kind for the shapes (see
lampc/capture_step.py), builds that graph on first use (a fresh copy of the captured step, rewritten by the same
passes under the same policy, weights shared with the full-sequence graph), runs it and returns the logits and the
grown cache. The cache holds FP32 keys and values: the recompute of a selected score needs the FP32 key, and the
value product after the softmax is FP32 as in the full-sequence graph (docs/NUMERICS.md, "Decoding").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, fx, nn

from ..capture import CAPTURE_LOCK
from ..capture_step import StepCapture
from ..passes import run_passes
from ..passes.result import PassResult
from ..policy import Policy
from ..numerics.native import LowPrecisionWeights
from ..ops import SelectionTap, graph_taps

PHASES = {"prefill": "prefill", "decode": "decode", "decode_1": "decode"}
"""Step kind -> the phase its statistics count in (generate's prompt pass, or one token at a time)."""


@dataclass(frozen=True)
class KVCache:
    """The FP32 keys and values of every past position, per layer: f32[B, H_kv, P, D] each.

    What a compiled model's cached forward returns as `past_key_values` and takes back on the next call. One it
    returned carries the cache layout it was built for (`_layout`, private): handed back, it is checked against the
    batch alone instead of layer by layer; a KVCache built by hand (no `_layout`) is checked in full."""

    keys: tuple[Tensor, ...]
    values: tuple[Tensor, ...]
    _layout: object = field(default=None, compare=False, repr=False)

    @property
    def length(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0] if self.keys else 0


@dataclass
class StepOutput:
    """What a cached forward returns: logits f32[B, T, V] and the grown cache (`cache` is the same object, under
    the name transformers 5 uses)."""

    logits: Tensor
    past_key_values: KVCache | None = None
    loss: Tensor | None = None

    @property
    def cache(self) -> KVCache | None:
        return self.past_key_values

    def __getitem__(self, name: str):
        return getattr(self, name)

    def __setitem__(self, name: str, value) -> None:
        setattr(self, name, value)

    def to_tuple(self) -> tuple:
        """(loss if set, logits, past_key_values if set), as a transformers output's to_tuple."""
        return tuple(v for v in (self.loss, self.logits, self.past_key_values) if v is not None)


def step_kind(batch: int, new: int, past: int) -> str:
    """The captured shape class that serves (batch, new tokens, past length); past 0 with one token: decode over a
    placeholder slot."""
    if new >= 2:
        return "prefill"
    return "decode_1" if batch == 1 else "decode"


class StepGraphs(nn.Module):
    """The step graphs of one compiled model, each built on first use (see module docstring)."""

    def __init__(self, capture: StepCapture, policy: Policy, weights: LowPrecisionWeights):
        super().__init__()
        self.capture = capture  # a plain object: holds the source model without registering its parameters
        self.policy = policy
        self.weights = weights  # the compiled model's native-backend weight cache
        self.graphs = nn.ModuleDict()
        self.results: dict[str, PassResult] = {}
        self.tap_settings = {"enabled": True, "keep_last": False}

    def graph(self, kind: str) -> fx.GraphModule:
        if kind not in self.graphs:
            with CAPTURE_LOCK:  # threads that ask for the same new graph at once: one builds it, the others wait
                if kind not in self.graphs:
                    self._build(kind)
        return self.graphs[kind]

    def _build(self, kind: str) -> None:
        result = run_passes(self.capture.graph(kind), self.policy)
        self.weights.register(result.graph_module.parameters())
        for tap in graph_taps(result.graph_module).values():
            tap.enabled = self.tap_settings["enabled"]
            tap.keep_last = self.tap_settings["keep_last"]
        self.results[kind] = result
        self.graphs[kind] = result.graph_module  # last: other threads take a graph only once it is complete

    def run(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor,
            cache: KVCache | None) -> tuple[Tensor, KVCache]:
        """logits f32[B, T, V] and the cache grown by the T new tokens."""
        batch, new = input_ids.shape
        layout = self.capture.layout
        placeholder = cache is None and new == 1
        if cache is None:
            cache = KVCache(*layout.empty(batch, 1 if placeholder else 0, input_ids.device))
        if placeholder:  # one masked slot: the key gets probability 0, the values are those of an empty past
            attention_mask = torch.cat([torch.zeros_like(attention_mask[:, :1]), attention_mask], dim=1)
        gm = self.graph(step_kind(batch, new, cache.length))
        logits, keys, values = gm(input_ids, attention_mask, position_ids, tuple(cache.keys), tuple(cache.values))
        grown = KVCache(tuple(keys), tuple(values), _layout=layout)
        # full_cache (capture_step.py) swaps transformers' sliding-window layers for ones that keep every position;
        # this guards a cache layer type that crops and that full_cache did not replace
        if grown.length != attention_mask.shape[1]:
            raise NotImplementedError(
                f"the model's cache keeps {grown.length} of {attention_mask.shape[1]} positions; lampc decodes "
                "models whose cache keeps every position")
        if placeholder:
            grown = KVCache(tuple(k[:, :, 1:] for k in grown.keys), tuple(v[:, :, 1:] for v in grown.values),
                            _layout=layout)
        return logits, grown

    def taps(self, phase: str | None = None) -> dict[str, dict[int, SelectionTap]]:
        """Taps per step kind (only those of `phase` if given)."""
        return {kind: graph_taps(gm) for kind, gm in self.graphs.items() if phase in (None, PHASES[kind])}

    def sites(self, phase: str):
        """The sites of the first built graph of `phase` (every step graph of a model has the same sites)."""
        for kind, result in self.results.items():
            if PHASES[kind] == phase:
                return result.sites
        return []
