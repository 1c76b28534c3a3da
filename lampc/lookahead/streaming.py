"""The streaming attention site: q·kᵀ, the look-ahead, the recompute, the softmax and p·v over chunks of keys,
never holding the T x L scores (SitePolicy.streaming; the op is lampc.lamp_attention, lampc/ops/attention_site.py).

The materialised site computes, for the whole (…, T, L) score matrix at once (`materialised_attention`, the
readable reference, which is the rewritten graph's chain of ops):

    ŝ = producer(q, kᵀ)·c;  S = select(ŝ);  s = ŝ with S in FP32;  p = softmax(cap(s) + mask);  out = p @ v

The streaming form walks the keys in chunks of `chunk_keys(site)` (a multiple of the tile's keys) and keeps per row
only O(1) numbers, so its memory is O(T · chunk) per head:

    pass 1 (rules that read row statistics)    for each chunk: ŝ_j; update the row's log-sum-exp (strict), its
                                               maximum logit and largest relaxed weight (relaxed), its length
                                               (length scaling)
    pass 2                                     for each chunk: ŝ_j again (the same bits: the producer is
                                               deterministic); the rule on the chunk, reading pass 1's statistics
                                               in place of whole rows; tiles; the recompute of S_j; the online
                                               softmax: m' = max(m, max f_j), l' = l·e^(m − m') + Σ e^(f_j − m'),
                                               acc' = acc·e^(m − m') + e^(f_j − m')·v_j, with f_j = cap(s_j) + mask_j
    out = acc / l

uniform and running_max (which reads the tiles in key order, as a streaming kernel does) need no pass 1: one pass
over the keys. What streams and what does not: strict needs each row's log-sum-exp before any entry is decided,
relaxed its maximum logit and its largest weight; both are statistics one pass computes, so they stream in two
passes. target, budget, random and oracle rank whole rows (a sort or a top-k over all L keys): they run
materialised only (SitePolicy refuses streaming for them).

Equal to the materialised site: the same selection, except an entry whose weight is within FP32 rounding of its
threshold (here a_i = exp(logit_i − lse) and the relaxed maximum is rescaled online, there a softmax over the whole
row); values equal up to FP32 rounding (the online softmax sums in another order). tests/test_streaming.py
checks both on GPT-2, Llama/GQA, Gemma2's soft cap and Bloom's ALiBi, with padding, prefill and decode.

exp_format rounds e^(f_j − m') to a format before it enters l and acc, as an FP8 attention kernel feeds P to its
second GEMM; the materialised site rounds e^(f − max f) (lampc.rounded_softmax): the two differ by where the
exponent's reference point is, the running maximum or the row's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..numerics import round_to
from ..policy import SitePolicy
from .error_scale import producer_error_scale
from .fused import compiled
from .recompute import recompute, recompute_in_format, recompute_into
from .softmax import SoftmaxRows, by_granularity, capped, rounded_softmax, select, visible_from_mask
from .tiles import tile_counts

CHUNK_KEYS = 256
"""Keys per chunk of a streaming site (rounded up to a multiple of the tile's keys): the temporaries are a few
(…, T, CHUNK_KEYS) buffers."""


def chunk_keys(site: SitePolicy) -> int:
    keys = site.tile[1]
    return -(-CHUNK_KEYS // keys) * keys


@dataclass
class Attention:
    """A site's output and what the statistics count, per head (dim 1 of the scores; all other dims summed):
    counts (H, 4) int64: selected visible entries, visible entries, tiles holding a selected visible entry,
    tiles holding a visible entry. selection: the whole (…, T, L) selection when asked for (tests), else None."""

    out: Tensor
    counts: Tensor
    selection: Tensor | None = None


def _head_sums(x: Tensor) -> Tensor:
    """Per-head totals of a (B, H, …) tensor (one total if it has fewer than 3 dims), int64 (H,)."""
    if x.dim() < 3:
        return x.sum().reshape(1).to(torch.int64)
    return x.sum(dim=[d for d in range(x.dim()) if d != 1]).to(torch.int64)


def _counts(selected: Tensor, visible: Tensor, tile) -> Tensor:
    visible = visible.expand(selected.shape)
    tiles_selected, tiles_visible = tile_counts(selected, visible, tile)
    return torch.stack([_head_sums(selected & visible), _head_sums(visible), _head_sums(tiles_selected),
                        _head_sums(tiles_visible)], dim=-1)


def _additive(mask: Tensor | None, visible: Tensor) -> Tensor | None:
    """What the model's softmax adds to the scores: the additive mask, or -inf where a boolean mask (or causality)
    hides a key."""
    if mask is not None and mask.dtype != torch.bool:
        return mask
    return torch.zeros(visible.shape, dtype=torch.float32, device=visible.device).masked_fill(~visible, float("-inf"))


def materialised_attention(q: Tensor, k_t: Tensor, v: Tensor, scale: float, mask: Tensor | None, is_causal: bool,
                           site: SitePolicy, producer, *, keep_selection: bool = False) -> Attention:
    """The materialised site, whole rows at once: the rewritten graph's ops (lowp_scores, lamp_select,
    recompute_scores, the mask add, the softmax, p @ v) in one function: the streaming form's reference."""
    s_hat = producer.scores(q, k_t, scale)
    visible = visible_from_mask(mask, s_hat.shape, is_causal, s_hat.device)
    bias = _bias(mask, visible, site)
    error_scale = producer_error_scale(site, q, k_t, s_hat, scale)
    selected = select(s_hat, visible, site, bias=bias, error_scale=error_scale)
    if site.recompute_format is not None:
        s = recompute_in_format(s_hat.clone(), selected, q, k_t, scale, site.recompute_format)
    else:
        s = recompute(s_hat, selected, q, k_t, scale, site.dense_above)
    additive = _additive(mask, visible) if mask is not None or is_causal else None
    logits = capped(s, site.softcap)
    logits = logits if additive is None else logits + additive
    p = torch.softmax(logits, dim=-1) if site.exp_format is None else rounded_softmax(logits, site.exp_format)
    return Attention(p @ v, _counts(selected, visible, site.tile), selected if keep_selection else None)


def _bias(mask: Tensor | None, visible: Tensor, site: SitePolicy) -> Tensor | None:
    """The finite part of the mask the look-ahead's softmax sees (ALiBi: SitePolicy.biased), 0 where hidden."""
    if not site.biased or mask is None:
        return None
    return torch.where(visible, mask, torch.zeros((), dtype=mask.dtype, device=mask.device)).expand(visible.shape)


class _Keys:
    """The site's inputs cut into chunks of keys: scores, visibility, the additive mask, bias and error scale of
    chunk [start, stop)."""

    def __init__(self, q, k_t, v, scale, mask, is_causal, site, producer):
        self.q, self.k_t, self.v, self.scale, self.mask = q, k_t, v, scale, mask
        self.is_causal, self.site, self.producer = is_causal, site, producer
        self.rows, self.length = q.shape[-2], k_t.shape[-1]
        self.shape = torch.broadcast_shapes(q.shape[:-2], k_t.shape[:-2]) + (self.rows, self.length)

    def bounds(self):
        step = chunk_keys(self.site)
        return [(start, min(start + step, self.length)) for start in range(0, self.length, step)]

    def chunk(self, start: int, stop: int):
        """(ŝ, visible, additive mask or None, bias or None, error scale or None, k_t) of keys [start, stop)."""
        k_t = self.k_t[..., start:stop]
        s_hat = self.producer.scores(self.q, k_t, self.scale)
        mask = None if self.mask is None else self.mask[..., start:stop]
        visible = visible_from_mask(mask, s_hat.shape, False, s_hat.device)
        if self.is_causal:  # key l visible from row t when l <= t, as visible_from_mask's tril
            rows = torch.arange(self.rows, device=s_hat.device).unsqueeze(-1)
            visible = visible & (torch.arange(start, stop, device=s_hat.device) <= rows)
        additive = _additive(mask, visible) if mask is not None or self.is_causal else None
        error_scale = producer_error_scale(self.site, self.q, k_t, s_hat, self.scale)
        return s_hat, visible, additive, _bias(mask, visible, self.site), error_scale, k_t


class _RowStatistics:
    """Pass 1's result, per row (…, T, 1), merged over chunks online: the maximum of the look-ahead's logits over
    the usable entries, the sum of their exponentials and the largest relaxed weight (both relative to that
    maximum), the row's length, and its log-sum-exp."""

    def __init__(self):
        self.max = self.sum = self.relaxed_max = self.lengths = self.lse = None

    def add(self, chunk_max: Tensor, chunk_sum: Tensor, chunk_z: Tensor, lengths: Tensor) -> None:
        """Merge one chunk's statistics (`chunk_statistics`, relative to the chunk's own maximum)."""
        if self.max is None:
            self.max, self.sum, self.relaxed_max, self.lengths = chunk_max, chunk_sum, chunk_z, lengths
        else:
            new_max = torch.maximum(self.max, chunk_max)
            shift = _finite_or_zero(new_max)
            old, new = _rescale(self.max, shift), _rescale(chunk_max, shift)
            self.sum = self.sum * old + chunk_sum * new
            self.relaxed_max = torch.maximum(self.relaxed_max * old, chunk_z * new)
            self.lengths = self.lengths + lengths
            self.max = new_max
        self.lse = torch.log(self.sum) + _finite_or_zero(self.max)  # -inf for a row with nothing usable yet

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.lse, self.max, self.relaxed_max, self.lengths


def _finite_or_zero(row_max: Tensor) -> Tensor:
    """The reference point of a row's exponentials: its maximum, or 0 while nothing in it is finite."""
    return torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))


def _rescale(old_max: Tensor, shift: Tensor) -> Tensor:
    """e^(old reference − new reference): what sums taken against the old maximum are multiplied by (0 where the
    old one had nothing finite: its sums are 0)."""
    return torch.where(torch.isfinite(old_max), torch.exp(_finite_or_zero(old_max) - shift), torch.zeros_like(shift))


class _ChunkRows(SoftmaxRows):
    """SoftmaxRows of one chunk whose whole-row quantities come from pass 1 (`statistics`: lse, maximum logit,
    largest relaxed weight, length, per row): the probabilities exp(logit − lse), the relaxed weights relative to
    the row's maximum logit, the row maximum of those weights, and the row lengths of length scaling."""

    def __init__(self, *args, statistics: tuple | None, **kwargs):
        super().__init__(*args, **kwargs)
        self.statistics = statistics

    def probabilities(self) -> Tensor:
        if self._a is None:
            a = torch.exp(self.logits - self.statistics[0])
            self._a = a.masked_fill(~self.usable, 0.0).nan_to_num(nan=0.0)
        return self._a

    def relaxed_weight(self) -> Tensor:
        z = self.error_scale * torch.exp(self.logits - self.statistics[1])
        return (z if self.gain is None else z * self.gain).masked_fill(~self.usable, 0.0).nan_to_num(nan=0.0)

    def row_max(self, weight: Tensor) -> Tensor:
        return self.statistics[2]  # the relaxed rule's only row maximum: its weight's, over the row

    def row_tau(self, tau: float, relaxed: bool):
        if not self.site.length_scaling:
            return tau
        tau_t = tau * torch.sqrt(self.site.l_ref / self.statistics[3].to(torch.float32))
        return tau_t.clamp(max=1.0) if relaxed else tau_t


def _needs_statistics(site: SitePolicy) -> bool:
    """Whether the rule reads whole-row statistics (pass 1): strict and relaxed do, uniform and running_max not."""
    return site.rule.looks_ahead and not site.rule.tiled


def _chunk_rows(s_hat, visible, bias, error_scale, site, statistics) -> _ChunkRows:
    visible = visible.expand(s_hat.shape)
    return _ChunkRows(s_hat, visible, visible & torch.isfinite(s_hat), site, bias=bias,
                      error_scale=None if error_scale is None else error_scale.expand(s_hat.shape),
                      statistics=statistics)


# -- one chunk's steps: pure functions of tensors and the site, run eagerly or through torch.compile (FUSED) ----


def chunk_statistics(s_hat, visible, bias, error_scale, site):
    """Pass 1 on one chunk: per row, the maximum usable logit, and relative to it the sum of exponentials and the
    largest relaxed weight; and the number of visible keys."""
    rows = _chunk_rows(s_hat, visible, bias, error_scale, site, None)
    logits = rows.logits.masked_fill(~rows.usable, float("-inf"))
    chunk_max = logits.amax(dim=-1, keepdim=True)
    e = torch.exp(logits - _finite_or_zero(chunk_max))
    z = rows.error_scale * e
    chunk_z = (z if rows.gain is None else z * rows.gain).masked_fill(~rows.usable, 0.0).amax(dim=-1, keepdim=True)
    return chunk_max, e.sum(dim=-1, keepdim=True), chunk_z, rows.visible.sum(dim=-1, keepdim=True)


def chunk_selection(s_hat, visible, bias, error_scale, site, statistics, running_max):
    """Pass 2's decision on one chunk: (the selection as the site recomputes it, the running maximum after the
    chunk for running_max, else None)."""
    rows = _chunk_rows(s_hat, visible, bias, error_scale, site, statistics)
    rows.running_max_before = running_max
    selected = site.rule.select(rows, site) | ~torch.isfinite(s_hat)
    after = rows.running_max_after if site.rule.tiled else None
    return by_granularity(selected, s_hat, visible, site), after


def chunk_exponentials(s, additive, row_max, site):
    """The online softmax's step on one chunk of recomputed scores: (the new row maximum, e^(f − it) (rounded to
    exp_format), their row sums), f = cap(s) + mask; row_max: the maximum before the chunk (−inf at the first)."""
    f = capped(s, site.softcap)
    f = f if additive is None else f + additive
    new_max = torch.maximum(row_max, f.amax(dim=-1, keepdim=True))
    p = torch.exp(f - _finite_or_zero(new_max))
    if site.exp_format is not None:
        p = round_to(p, site.exp_format)
    return new_max, p, p.sum(dim=-1, keepdim=True)


def chunk_counts(selected, visible, tile):
    """Per head (H, 4): selected visible entries, visible entries, tiles with a selected visible entry, tiles with a
    visible entry."""
    return _counts(selected, visible, tile)


FUSED = True
"""The switch: each chunk step (chunk_statistics, chunk_selection, chunk_exponentials, chunk_counts) through
torch.compile (one loop nest per step instead of a dozen passes over the chunk; the first call of each compiles);
False: eager PyTorch, the readable reference, which tests/test_streaming.py checks them against."""


def _step(fn):
    return compiled(fn) if FUSED and not torch.compiler.is_compiling() else fn


def streaming_attention(q: Tensor, k_t: Tensor, v: Tensor, scale: float, mask: Tensor | None, is_causal: bool,
                        site: SitePolicy, producer, *, keep_selection: bool = False) -> Attention:
    """The site's output softmax(cap(s) + mask) @ v over chunks of keys (module docstring). q (…, T, D),
    k_t (…, D, L), v (…, L, Dv), mask broadcastable to (…, T, L), additive or boolean, or None; producer: the
    site's ProducerImpl."""
    keys = _Keys(q, k_t, v, scale, mask, is_causal, site, producer)
    statistics = None
    if _needs_statistics(site):
        merged = _RowStatistics()
        for start, stop in keys.bounds():
            s_hat, visible, _, bias, error_scale, _ = keys.chunk(start, stop)
            merged.add(*_step(chunk_statistics)(s_hat, visible, bias, error_scale, site))
        statistics = merged.tensors()
    running_max = None  # of the low-precision logits, for running_max
    row_max = total = acc = counts = None
    kept = []
    for start, stop in keys.bounds():
        s_hat, visible, additive, bias, error_scale, k_chunk = keys.chunk(start, stop)
        selected, running_max = _step(chunk_selection)(s_hat, visible, bias, error_scale, site, statistics,
                                                       running_max)
        s = _recomputed(s_hat, selected, q, k_chunk, scale, site)
        before = torch.full_like(s[..., :1], float("-inf")) if row_max is None else row_max
        new_max, p, chunk_total = _step(chunk_exponentials)(s, additive, before, site)
        chunk_acc = p @ keys.v[..., start:stop, :]
        if row_max is None:
            total, acc = chunk_total, chunk_acc
        else:
            factor = _rescale(row_max, _finite_or_zero(new_max))
            total, acc = total * factor + chunk_total, acc * factor + chunk_acc
        row_max = new_max
        chunk = _step(chunk_counts)(selected, visible, site.tile)
        counts = chunk if counts is None else counts + chunk
        if keep_selection:
            kept.append(selected)
    out = acc / total
    return Attention(out.to(v.dtype), counts, torch.cat(kept, dim=-1) if keep_selection else None)


def _recomputed(s_hat: Tensor, selected: Tensor, q: Tensor, k_t: Tensor, scale: float, site: SitePolicy) -> Tensor:
    s_hat = s_hat.contiguous()
    if site.recompute_format is not None:
        return recompute_in_format(s_hat, selected, q, k_t, scale, site.recompute_format)
    return recompute_into(s_hat, selected.contiguous(), q, k_t, scale, site.dense_above)
