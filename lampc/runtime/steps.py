"""The cached-step graphs of a compiled model: prefill and decode with a KV cache, rewritten like the full graph.

`StepGraphs.run(input_ids, attention_mask, position_ids, cache)` picks the step kind for the shapes (see
lampc/capture_step.py), runs that graph and returns the logits and the grown cache. Each graph is a copy of the
captured step, rewritten by the same passes under the same policy, weights shared with the full-sequence graph,
and checked against the full-sequence graph's sites (`check_step_sites`). `lampc.compile` builds every kind at
compile (`build_all`, then the source model is let go); with `steps="lazy"` each is built at the first call that
needs it. The cache holds FP32 keys and values: the recompute of a selected score needs the FP32 key, and the
value product after the softmax is FP32 as in the full-sequence graph (docs/NUMERICS.md, "Decoding").
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor, fx, nn

from ..capture import CAPTURE_LOCK, CaptureError
from ..capture_step import STEP_KINDS, CacheLayout, StepCapture, uncapturable
from ..passes import run_passes
from ..passes.result import PassResult
from ..policy import Policy
from ..ops import RandomStreams, SelectionTap, graph_taps, share_streams
from .weight_casts import WeightCasts

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


class StepSitesError(CaptureError):
    """A cached-step graph whose sites are not the full-sequence graph's, one to one (count, kinds, modules, in
    order): decoding would run a site in FP32 that the forward runs in low precision, or the other way round."""


def check_step_sites(kind: str, result: PassResult, sites, skips) -> None:
    """StepSitesError unless the `kind` step graph's sites are the full-sequence graph's `sites`, one to one; one
    warning for candidates the step graph skipped that the full-sequence graph has no skip for."""
    ours = [(s.kind, s.module) for s in result.sites]
    theirs = [(s.kind, s.module) for s in sites]
    if ours != theirs:
        reasons = {(s.kind, s.module): s.reason for s in result.skips}
        missing = [f"{k} @ {m}" + (f" (skipped: {reasons[k, m]})" if (k, m) in reasons else "")
                   for k, m in theirs if (k, m) not in ours]
        extra = [f"{k} @ {m}" for k, m in ours if (k, m) not in theirs]
        detail = "; ".join(([f"missing {', '.join(missing)}"] if missing else [])
                           + ([f"not in the full-sequence graph: {', '.join(extra)}"] if extra else [])) \
            or "the same sites in another order"
        raise StepSitesError(
            f"the {kind} step graph (generate, use_cache) has {len(ours)} site(s) where the full-sequence graph has "
            f"{len(theirs)}: {detail}. Decoding would not run the policy the forward runs. Compile with "
            "steps=\"none\" to compile the full-sequence graph alone (no generate, no cache)")
    known = {(s.kind, s.module) for s in skips}
    new = [s for s in result.skips if s.reason != "already rewritten by lampc" and (s.kind, s.module) not in known]
    if new and ours:
        first = new[0]
        warnings.warn(f"lampc: {len(new)} candidate(s) left in FP32 in the {kind} step graph beside its {len(ours)} "
                      f"site(s), where the full-sequence graph skipped none; first: {first.kind} @ "
                      f"{first.module or '(top level)'}: {first.reason}", stacklevel=6)


class StepGraphs(nn.Module):
    """The step graphs of one compiled model (see module docstring).

    source: the captured steps to build from (it holds the model), None once every kind is built. sites, skips: the
    full-sequence graph's, which every step graph must match. layout: the cache layout, when no source gives it."""

    def __init__(self, source: StepCapture | None, policy: Policy, weights: WeightCasts, *, sites=(),
                 skips=(), layout: CacheLayout | None = None):
        super().__init__()
        self.source = source  # a plain object: holds the source model without registering its parameters
        self.policy = policy
        self.weights = weights  # the compiled model's weight casts (lampc/runtime/weight_casts.py)
        self.full_sites, self.full_skips = list(sites), list(skips)
        self._layout = layout
        self.graphs = nn.ModuleDict()
        self.results: dict[str, PassResult] = {}
        self.tap_settings = {"enabled": True, "keep_last": False}
        self.ran: dict[str, str] = {}  # phase -> the step kind that ran last in it
        self.announce = False  # warn at the first build on use (lazy by default, not by choice: lampc.api.STEPS)
        self.random_streams = RandomStreams()  # the random baseline's streams: the compiled model sets its own

    @property
    def layout(self) -> CacheLayout:
        if self._layout is None:
            self._layout = self._source().layout
        return self._layout

    def graph(self, kind: str) -> fx.GraphModule:
        if kind not in self.graphs:
            with CAPTURE_LOCK:  # threads that ask for the same new graph at once: one builds it, the others wait
                if kind not in self.graphs:
                    self._announce(kind)
                    self._build(kind)
        return self.graphs[kind]

    def _announce(self, kind: str) -> None:
        if self.announce:
            self.announce = False
            warnings.warn(f"lampc: building the {kind} step graph now, at the first cached call that needs it "
                          "(torch.export capture and rewrite: about as long as the compile; a first generate builds "
                          "two of the three). Choose when: lampc.compile(..., steps=\"eager\") builds all at "
                          "compile (and lets the model go), steps=\"lazy\" builds on use without this warning, "
                          "steps=\"none\" builds none", stacklevel=3)

    def build_all(self) -> None:
        """Capture, rewrite and check every step kind not built yet (what lampc.compile does); the source model is
        let go once all are built. A model whose steps cannot be captured keeps none: each cached call raises why
        (`UncapturableSteps`); a step graph whose sites differ from the full graph's raises StepSitesError here."""
        with CAPTURE_LOCK:
            try:
                for kind in self.pending:
                    self._build(kind)
            except StepSitesError:
                raise
            except CaptureError as err:  # the model cannot decode: its forward is compiled all the same
                self.graphs.clear()
                self.results.clear()
                self.source = uncapturable(self.source.model, self.source, err)

    @property
    def pending(self) -> list[str]:
        """The step kinds not built yet (steps="lazy": built at the first call that needs them)."""
        return [kind for kind in STEP_KINDS if kind not in self.graphs]

    def _source(self) -> StepCapture:
        if self.source is None:
            raise RuntimeError("this compiled model's step graphs were saved without their source model; "
                               "compile the model again to build them")
        return self.source

    def _build(self, kind: str) -> None:
        result = run_passes(self._source().graph(kind), self.policy)
        check_step_sites(kind, result, self.full_sites, self.full_skips)
        share_streams(result.graph_module, self.random_streams)
        self.weights.adopt(result.graph_module)
        for tap in graph_taps(result.graph_module).values():
            tap.enabled = self.tap_settings["enabled"]
            tap.keep_last = self.tap_settings["keep_last"]
        self.results[kind] = result
        self.graphs[kind] = result.graph_module  # other threads take a graph only once it is complete
        if not self.pending:  # every kind built: the source (and the model it holds) is no longer needed
            self._layout = self.layout
            self.source = None

    def run(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor,
            cache: KVCache | None) -> tuple[Tensor, KVCache]:
        """logits f32[B, T, V] and the cache grown by the T new tokens."""
        batch, new = input_ids.shape
        layout = self.layout
        placeholder = cache is None and new == 1
        if cache is None:
            cache = KVCache(*layout.empty(batch, 1 if placeholder else 0, input_ids.device))
        if placeholder:  # one masked slot: the key gets probability 0, the values are those of an empty past
            attention_mask = torch.cat([torch.zeros_like(attention_mask[:, :1]), attention_mask], dim=1)
        kind = step_kind(batch, new, cache.length)
        logits, keys, values = self.graph(kind)(input_ids, attention_mask, position_ids, tuple(cache.keys),
                                                tuple(cache.values))
        self.ran[PHASES[kind]] = kind
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

    def phases_run(self) -> list[str]:
        """The phases ("prefill", "decode") whose graphs have run at least once."""
        return [phase for phase in ("prefill", "decode") if phase in self.ran]

    def taps(self, phase: str | None = None) -> dict[str, dict[int, SelectionTap]]:
        """Taps per step kind (only those of `phase` if given)."""
        return {kind: graph_taps(gm) for kind, gm in self.graphs.items() if phase in (None, PHASES[kind])}

    def sites(self, phase: str):
        """The sites of the first built graph of `phase` (every step graph of a model has the same sites)."""
        for kind, result in self.results.items():
            if PHASES[kind] == phase:
                return result.sites
        return []
