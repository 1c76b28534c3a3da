"""Look-ahead at a softmax consumer: sensitivity and the selection rules (docs/METHOD.md §3).

For a row of low-precision scores `s` (…, L) and its softmax `a`, column i of the softmax Jacobian has l1 norm
`2·a_i·(1 − a_i)`; with a relative error in `s_i` the first-order output error is bounded by
`Σ_i 2·a_i·(1 − a_i)·|s_i|·|ε_i|`. Every rule here picks, per row, the entries whose FP32 recompute removes
most of that bound. All functions are pure tensor code: no host synchronisation, no Python loops over rows,
so they run unchanged on CUDA.

Conventions shared by every function:
    s_hat:   f32[..., T, L]  low-precision scores (scaled, before the additive mask)
    visible: bool[..., T, L] True where query t may attend key l (broadcastable to s_hat)
    returns: bool[..., T, L] the selection; never True at an invisible entry
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..kernels import cpu_select
from ..numerics import round_to
from ..criteria import CRITERIA
from ..policy import SitePolicy
from .record import normalised
from .tiles import counted_tiles, promote_tiles, running_max_weight, tile_reduce

MASKED_BELOW = -1.0e4
"""An additive-mask entry <= this counts as masked (HF uses finfo(float32).min; older code used -1e4)."""


def visible_from_mask(mask: Tensor | None, shape: torch.Size, is_causal: bool, device) -> Tensor:
    """Visible-key mask (bool, broadcastable to `shape`) from an additive or boolean attention mask."""
    t, l = shape[-2], shape[-1]
    visible = torch.ones((1,) * (len(shape) - 2) + (t, l), dtype=torch.bool, device=device)
    if is_causal:
        visible = visible & torch.ones(t, l, dtype=torch.bool, device=device).tril()
    if mask is not None:
        keep = mask if mask.dtype == torch.bool else mask > MASKED_BELOW
        visible = visible & keep
    return visible.expand(shape)


def masked_softmax(s: Tensor, visible: Tensor) -> Tensor:
    """softmax over the visible entries of each row; 0 at invisible entries and in rows with none visible."""
    if not torch.compiler.is_compiling() and visible.device.type == "cpu" and bool(visible.all()):
        return torch.softmax(s, dim=-1)  # nothing masked: the plain softmax
    a = torch.softmax(s.masked_fill(~visible, float("-inf")), dim=-1)  # (…, T, L); NaN in empty rows
    return a.nan_to_num(nan=0.0).masked_fill(~visible, 0.0)


def rounded_softmax(s: Tensor, exp_format) -> Tensor:
    """softmax(s, -1) with its exponentials exp(s − row max) rounded to `exp_format` (SitePolicy.exp_format; the
    sum and the division in FP32)."""
    row_max = s.amax(dim=-1, keepdim=True)
    shift = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    e = round_to(torch.exp(s - shift), exp_format)
    return e / e.sum(dim=-1, keepdim=True)


def strict_sensitivity(s_hat: Tensor, a: Tensor, gain: Tensor | None = None) -> Tensor:
    """c_i = 2·a_i·(1 − a_i)·|ŝ_i|: l1 column norm of the softmax Jacobian times the score's magnitude; with a
    soft cap, times the cap's derivative `gain` (docs/NUMERICS.md §6)."""
    weight = 2.0 * a * (1.0 - a) * s_hat.abs()
    return weight if gain is None else weight * gain


def capped(s: Tensor, softcap: float | None) -> Tensor:
    """The softmax's input: s, or c·tanh(s/c) under logit soft-capping (Gemma2)."""
    return s if softcap is None else softcap * torch.tanh(s / softcap)


def cap_gain(s: Tensor, softcap: float | None) -> Tensor | None:
    """d/ds of c·tanh(s/c) = 1 − tanh²(s/c), in (0, 1]: how much of a score's error reaches the softmax."""
    return None if softcap is None else 1.0 - torch.tanh(s / softcap).square()


def row_tau(site: SitePolicy, tau: float, relaxed: bool, visible: Tensor) -> Tensor | float:
    """Per-row threshold: tau, or with length scaling tau·sqrt(l_ref / L_t) (relaxed: capped at 1)."""
    if not site.length_scaling:
        return tau
    lengths = visible.sum(dim=-1, keepdim=True).to(torch.float32)  # (…, T, 1)
    tau_t = tau * torch.sqrt(site.l_ref / lengths)  # L_t = 0 gives inf: nothing selected
    return tau_t.clamp(max=1.0) if relaxed else tau_t


def target_counts(a: Tensor, visible: Tensor, tau: float) -> Tensor:
    """Paper v1: per row, the length of the shortest prefix (by descending a) with 2 − A_S − 2·min(a) ≤ tau."""
    a_sorted = a.masked_fill(~visible, -1.0).sort(dim=-1, descending=True).values.clamp(min=0.0)
    prefix_mass = torch.cumsum(a_sorted, dim=-1)  # A_S for |S| = 1..L
    prefix_mass = torch.cat([torch.zeros_like(prefix_mass[..., :1]), prefix_mass[..., :-1]], dim=-1)  # |S| = 0..L-1
    min_a = a.masked_fill(~visible, float("inf")).amin(dim=-1, keepdim=True)
    fails = (2.0 - prefix_mass - 2.0 * min_a) > tau  # monotone in |S|: True for |S| < count
    lengths = visible.sum(dim=-1, keepdim=True)
    return fails.sum(dim=-1, keepdim=True).minimum(lengths)  # (…, T, 1)


def select_top(score: Tensor, visible: Tensor, count: Tensor) -> Tensor:
    """Per row, the `count` visible entries with the largest `score` (count: int tensor (…, T, 1));
    ties go to the lowest key index (stable sort)."""
    order = score.masked_fill(~visible, float("-inf")).sort(dim=-1, descending=True, stable=True).indices
    ranks = torch.arange(score.shape[-1], device=score.device)
    chosen_sorted = ranks < count  # (…, T, L) in sorted order
    return torch.zeros_like(visible).scatter(-1, order, chosen_sorted) & visible


def select_top_k(score: Tensor, visible: Tensor, count: Tensor, k_max: int) -> Tensor:
    """select_top when no row takes more than k_max entries: a partial top-k instead of a full sort.

    Ties at the threshold go to the lowest key index, as with a stable sort."""
    k_max = min(k_max, score.shape[-1])
    if k_max <= 0:
        return torch.zeros_like(visible)
    masked = score.masked_fill(~visible, float("-inf"))
    top = masked.topk(k_max, dim=-1).values  # (…, T, k_max), descending
    threshold = top.gather(-1, (count - 1).clamp(min=0, max=k_max - 1))  # the count-th largest per row
    greater = masked > threshold
    equal = masked == threshold
    room = count - greater.sum(dim=-1, keepdim=True)
    chosen = greater | (equal & (equal.cumsum(dim=-1) <= room))
    return chosen & visible & (count > 0)


def budget_k_max(length: int, budget) -> int:
    """The most entries a budget picks in a row of `length` keys (a static bound: no host sync)."""
    return min(budget, length) if isinstance(budget, int) else math.ceil(budget * length)


def budget_counts(visible: Tensor, budget) -> Tensor:
    """k per row (capped at the row's visible length) or ceil(fraction·L_t)."""
    lengths = visible.sum(dim=-1, keepdim=True)
    if isinstance(budget, int):
        return lengths.clamp(max=budget)
    return torch.ceil(budget * lengths.to(torch.float32)).to(lengths.dtype)


class TorchRows:
    """What every torch implementation of `lampc.criteria.RuleInputs` does the same way, over `self.usable` (the
    entries a rule may pick): thresholds, row maxima, top-count selection, counting."""

    usable: Tensor

    def nothing(self) -> Tensor:
        return torch.zeros_like(self.usable)

    def row_max(self, weight: Tensor) -> Tensor:
        return weight.amax(dim=-1, keepdim=True)

    def times(self, a, b):
        return a * b

    def above(self, weight: Tensor, threshold) -> Tensor:
        return (weight > threshold) & self.usable

    def top(self, score: Tensor, count: Tensor, k_max: int | None = None) -> Tensor:
        if k_max is None:
            return select_top(score, self.usable, count)
        return select_top_k(score, self.usable, count, k_max)

    def count(self, selection: Tensor) -> Tensor:
        return selection.sum(dim=-1, keepdim=True)

    _draws: Tensor | None = None

    def draws(self) -> Tensor:
        """The call's uniform draws (the random baseline), as the caller gave them: the look-ahead draws nothing."""
        if self._draws is None:
            raise ValueError("criterion 'random' needs this call's uniform draws (draws=...; the ops take them from "
                             "the graph's lampc_draws_<site> node, lampc/ops/random.py)")
        return self._draws


class SoftmaxRows(TorchRows):
    """`lampc.criteria.RuleInputs` at a softmax consumer, in torch: rows of low-precision scores ŝ, the softmax
    `a` of what the consumer sees (the capped scores plus any additive bias), and the cap's derivative. Each
    quantity is computed on first use, so a rule pays only for what it reads."""

    def __init__(self, s_hat: Tensor, visible: Tensor, usable: Tensor, site: SitePolicy, *, s_fp32=None,
                 draws: Tensor | None = None, bias: Tensor | None = None, error_scale: Tensor | None = None):
        self.s_hat, self.visible, self.usable, self.site = s_hat, visible, usable, site
        self._error_scale = error_scale
        self.s_fp32, self._draws, self.bias = s_fp32, draws, bias
        self.capped_hat, self.gain = capped(s_hat, site.softcap), cap_gain(s_hat, site.softcap)
        self.logits = self.capped_hat if bias is None else self.capped_hat + bias  # what the softmax sees
        self._a = None

    @property
    def error_scale(self) -> Tensor:
        """What each entry's error scales with: |ŝ_i| (the paper's), or the site's bound (SitePolicy.error_scale)."""
        return self.s_hat.abs() if self._error_scale is None else self._error_scale

    def probabilities(self) -> Tensor:
        if self._a is None:
            self._a = masked_softmax(self.logits, self.usable)  # the consumer's probabilities
        return self._a

    def strict_weight(self) -> Tensor:
        return strict_sensitivity(self.error_scale, self.probabilities(), self.gain)

    def relaxed_weight(self) -> Tensor:
        """z_i = |ŝ_i|·exp(logit_i − max logit) (· gain_i under a soft cap): only a running row max is needed.
        (|ŝ_i|: the entry's error scale, see SitePolicy.error_scale.)"""
        row_max = self.logits.masked_fill(~self.usable, float("-inf")).amax(dim=-1, keepdim=True)
        z = self.error_scale * torch.exp(self.logits - row_max)
        return (z if self.gain is None else z * self.gain).masked_fill(~self.usable, 0.0)  # (…, T, L)

    def row_tau(self, tau: float, relaxed: bool):
        return row_tau(self.site, tau, relaxed, self.visible)

    running_max_before: Tensor | None = None  # a streaming site's running maximum of the earlier key chunks

    def running_max_weight(self, tile):
        """exp(tile's logit maximum − the running maximum before it), per entry (lookahead/tiles.py)."""
        weight, self.running_max_after = running_max_weight(self.logits, self.usable, tile, self.running_max_before)
        return weight

    def target_counts(self, a: Tensor, tau: float) -> Tensor:
        return target_counts(a, self.usable, tau)

    def budget_counts(self, budget) -> Tensor:
        return budget_counts(self.visible, budget)

    def budget_k_max(self, budget) -> int:
        return budget_k_max(self.s_hat.shape[-1], budget)

    def true_error(self) -> Tensor:
        """2·p_i·(1 − p_i)·|z_i − ẑ_i|: p from the FP32 scores, z what the softmax sees of each (bias cancels)."""
        if self.s_fp32 is None:
            raise ValueError("criterion 'oracle' needs the FP32 scores (s_fp32)")
        capped_fp32 = capped(self.s_fp32, self.site.softcap)
        p = masked_softmax(capped_fp32 if self.bias is None else capped_fp32 + self.bias, self.usable)
        return (2.0 * p * (1.0 - p) * (capped_fp32 - self.capped_hat).abs()).nan_to_num(nan=0.0)


def select(
    s_hat: Tensor,
    visible: Tensor,
    site: SitePolicy,
    *,
    s_fp32: Tensor | None = None,
    draws: Tensor | None = None,
    bias: Tensor | None = None,
    error_scale: Tensor | None = None,
) -> Tensor:
    """The selection of `site.criterion` (its rule in lampc.criteria); a non-finite ŝ is always selected, masked
    or not. error_scale: each entry's error scale when it is not |ŝ_i| (lookahead/error_scale.py).

    A masked score that overflowed would stay inf after the additive mask (inf + finfo.min = inf) and turn the
    softmax row into NaN; selected, it is recomputed in FP32 (finite wherever the FP32 model is). The recompute
    rate counts visible entries only, so these never show in it.

    s_fp32 (the true FP32 scores) is needed by "oracle" only; draws (uniforms shaped like s_hat) by "random" only.
    bias: a finite additive term the softmax sees beside the scores (ALiBi; 0 at masked entries); the error scale
    stays |ŝ_i|.
    """
    if _plain_cpu_site(site, s_hat, bias, error_scale):
        selected = _select_in_c(s_hat, visible, site)  # the non-finite entries included
    else:
        rows = softmax_rows(s_hat, visible, site, s_fp32=s_fp32, draws=draws, bias=bias, error_scale=error_scale)
        if site.granularity == "tile" and site.rule.counted:  # random / oracle tiles, at count_from's tile counts
            return _counted_tiles(rows, site) | ~torch.isfinite(s_hat)
        selected = site.rule.select(rows, site) | ~torch.isfinite(s_hat)  # non-finite: always, visible or not
    return by_granularity(selected, s_hat, visible, site)


def _counted_tiles(rows: "SoftmaxRows", site: SitePolicy) -> Tensor:
    """random or oracle with granularity="tile": as many tiles per row of tiles as count_from's tiles, chosen by the
    tiles' largest draw (random) or their summed true error (oracle)."""
    counted = CRITERIA[site.count_from].select(rows, site)
    if site.rule.draws:
        score = tile_reduce(rows.draws().masked_fill(~rows.usable, float("-inf")), site.tile, "max")
    else:
        score = tile_reduce(rows.true_error().masked_fill(~rows.usable, 0.0), site.tile, "sum")
    return counted_tiles(counted, score, rows.usable, site.tile, select_top)


def by_granularity(selected: Tensor, s_hat: Tensor, visible: Tensor, site: SitePolicy) -> Tensor:
    """The selection as the site recomputes it: the entries, or with granularity="tile" the visible entries of
    every tile holding one (lookahead/tiles.py), and the non-finite scores as ever."""
    if site.granularity == "entry":
        return selected
    return promote_tiles(selected, visible, site.tile) | ~torch.isfinite(s_hat)


def _plain_cpu_site(site: SitePolicy, s_hat: Tensor, bias: Tensor | None, error_scale: Tensor | None) -> bool:
    """Whether the C pass (`_select_in_c`) computes this selection: a rule it implements (criteria's cpu_kernel),
    no soft cap, bias, length scaling or error scale but |ŝ|, CPU float32 scores outside a trace, and the kernel
    built here (lampc.kernels: LAMPC_KERNELS=0 turns it off, the reference then runs)."""
    if not site.rule.cpu_kernel or site.softcap is not None or site.length_scaling or bias is not None:
        return False
    if error_scale is not None or s_hat.device.type != "cpu" or s_hat.dtype != torch.float32:
        return False
    return not torch.compiler.is_compiling() and cpu_select.available() is None


def _select_in_c(s_hat: Tensor, visible: Tensor, site: SitePolicy) -> Tensor:
    """The strict rule's selection, as `site.rule.select(softmax_rows(...))` computes it: torch's softmax over the
    usable entries, then the weight, the threshold and the non-finite entries in one C pass.

    The probabilities are `masked_softmax`'s at every usable entry (the same softmax of the same row); its clean-up
    of the other entries (0 where masked, 0 for a row with nothing visible) is skipped, because the C pass reads a
    only where the entry is usable."""
    s_hat = s_hat.contiguous()
    usable = (visible.expand(s_hat.shape) & torch.isfinite(s_hat)).contiguous()
    a = torch.softmax(s_hat.masked_fill(~usable, float("-inf")), dim=-1)
    return cpu_select.strict_select(s_hat, a, usable, site.tau)


def softmax_rows(s_hat: Tensor, visible: Tensor, site: SitePolicy, *, s_fp32: Tensor | None = None,
                 draws: Tensor | None = None, bias: Tensor | None = None,
                 error_scale: Tensor | None = None) -> SoftmaxRows:
    """What the rules read at a softmax site (`select`'s arguments): the usable entries are the visible finite ones."""
    visible = visible.expand(s_hat.shape)
    usable = visible & torch.isfinite(s_hat)  # the rules look at the finite scores
    return SoftmaxRows(s_hat, visible, usable, site, s_fp32=s_fp32, draws=draws, bias=bias,
                       error_scale=None if error_scale is None else error_scale.expand(s_hat.shape))


def normalised_weights(s_hat: Tensor, visible: Tensor, site: SitePolicy, *, bias: Tensor | None = None,
                       error_scale: Tensor | None = None) -> Tensor | None:
    """ν = weight / threshold of the site's rule at each usable entry (NaN elsewhere), from the rows `select`
    selects from: what calibration records (lookahead/record.py); None for a rule without a threshold."""
    return normalised(softmax_rows(s_hat, visible, site, bias=bias, error_scale=error_scale), site)


def first_order_error(s_hat: Tensor, s_fp32: Tensor, visible: Tensor, selected: Tensor) -> Tensor:
    """Σ over non-selected visible i of 2·p_i·(1 − p_i)·|s_i − ŝ_i| per row (p from the FP32 scores)."""
    p = masked_softmax(s_fp32, visible)
    term = 2.0 * p * (1.0 - p) * (s_fp32 - s_hat).abs()
    return term.masked_fill(selected | ~visible, 0.0).sum(dim=-1)

