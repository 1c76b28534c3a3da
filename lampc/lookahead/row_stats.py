"""Strict and uniform selection from row statistics: the CPU fast path of a fused site (SitePolicy.fused).

The general `softmax.select` writes several score-sized temporaries (the softmax, the sensitivity, ...). The strict
rule needs far less. With lse the log-sum-exp of a row, a_i = exp(ŝ_i − lse) and d = lse − ŝ_i ≥ 0, c = |lse|:

    2·a_i·(1 − a_i)·|ŝ_i|  ≤  2·e^(−d)·(c + d)  ≤  2·(c + 2/e)·e^(−d/2)    (d ≤ 2·e^(d/2 − 1) for d ≥ 0)

so an entry can pass `> tau` only if d < d*, the largest root of h(d) = ln(2·(c + d)) − d − ln(tau). h is concave:
from d0 = 2·ln(2·(c + 2/e) / tau) (a root bound from the right-hand inequality), Newton steps stay at or above the
root and close in on it, so the band never loses an entry that can pass. The selection is then: one compiled pass
for lse and max per row, one comparison for the candidates ŝ_i > lse − d*, and the exact rule on the few
candidates. No softmax-sized temporary is written; when few rows have their maximum in the band (flat rows, as in
random models and many heads of trained ones), only those rows are compared. The uniform rule (non-finite entries
only) reads one sum. Scores with a non-finite entry anywhere take the general rule (`select`), which handles them.

It equals `select_strict` up to the rounding of a_i (here exp(ŝ − lse), there a softmax): an entry whose
sensitivity is within a few FP32 ulps of tau may fall on the other side. The sum and the candidates are read on
the host (`bool`, `nonzero`): CPU only; accelerators take the general compiled path.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..policy import SitePolicy
from .fused import compiled
from .recompute import flat_positions
from .softmax import select

SLACK = 1.0e-3
"""Extra width of the candidate band (in units of the scores): covers the rounding of lse and d*."""


def supports(site: SitePolicy, device: torch.device) -> bool:
    """Whether `select_from_row_stats` implements this site's rule on this device."""
    return (device.type == "cpu" and site.rule.row_statistics and not site.length_scaling
            and site.softcap is None and site.error_scale == "score" and site.granularity == "entry")


def _row_stats(s_low: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Per row (…, T, 1): log-sum-exp and max over the visible entries (-inf where none), and the plain sum of
    all entries (non-finite iff the row holds a non-finite score, or overflows). One pass over the scores."""
    s = s_low.to(torch.float32)
    masked = s if bias is None else s + bias  # bias: 0 where visible, -inf elsewhere (reads faster than a bool)
    return torch.logsumexp(masked, dim=-1, keepdim=True), masked.amax(dim=-1, keepdim=True), s.sum(-1, keepdim=True)


def band_width(lse: Tensor, tau: float, steps: int = 3) -> Tensor:
    """d* per row (see the module docstring): no entry further than d* below lse can pass the strict rule."""
    c = lse.abs()
    d = (2.0 * torch.log(2.0 * (c + 2.0 / math.e) / tau)).clamp(min=0.0)
    for _ in range(steps):  # Newton on the concave h: each tangent's root is >= the largest root of h
        h = torch.log(2.0 * (c + d)) - d - math.log(tau)
        slope = 1.0 / (c + d) - 1.0
        step = d - h / slope
        d = torch.where((slope < 0) & torch.isfinite(step), step.clamp(min=0.0), d)
    return d


def _strict_dense(s_low: Tensor, bias: Tensor | None, lse: Tensor, tau: float) -> Tensor:
    s = s_low.to(torch.float32)
    a = torch.exp((s if bias is None else s + bias) - lse)
    return (2.0 * a * (1.0 - a) * s.abs() > tau).to(torch.uint8)


DENSE_ABOVE = 0.02
"""Candidate fraction above which the exact rule runs densely (one compiled pass) instead of on gathered entries:
a gathered candidate costs about as much as 15-20 dense entries on this CPU (flat rows, e.g. random weights, make
most entries candidates)."""


GATHER_ROWS_BELOW = 0.25
"""Fraction of rows with a candidate below which those rows are gathered instead of comparing every score."""


def _compact(visible: Tensor) -> Tensor:
    """An expanded mask without its broadcast (stride-0) dimensions materialised."""
    index = tuple(slice(0, 1) if stride == 0 else slice(None) for stride in visible.stride())
    return visible[index]


def select_from_row_stats(s_hat: Tensor, visible: Tensor | None, site: SitePolicy, *,
                          s_low: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """The selection of `softmax.select` for the uniform and strict rules (see the module docstring), and the
    selected positions in s_hat.view(-1) in increasing order when this path knows them (else None).

    visible: None when every entry is visible (no mask, not causal). s_low: the same scores in the GEMM's own
    dtype when there is one (bf16: half the bytes to read for the statistics)."""
    every = torch.ones((1,) * s_hat.dim(), dtype=torch.bool, device=s_hat.device)
    general = every if visible is None else visible  # for the general rule
    if not site.rule.looks_ahead:  # only non-finite scores are recomputed: none if the sum is finite
        if bool(torch.isfinite(s_hat.sum())):  # host sync: CPU path
            return _nothing(s_hat)
        return select(s_hat, general, site), None
    bias = None
    if visible is not None:
        visible = _compact(visible)
        bias = torch.zeros(visible.shape, device=s_hat.device).masked_fill(~visible, float("-inf"))
    s_low = s_hat if s_low is None else s_low
    lse, row_max, row_sum = compiled(_row_stats)(s_low, bias)  # eager logsumexp alone is 3x slower
    if not bool(torch.isfinite(row_sum).all()):  # host sync (CPU path); a non-finite score: the general rule
        return select(s_hat, general, site), None
    threshold = lse - band_width(lse, site.tau) - SLACK  # (…, T, 1)
    rows = flat_positions(row_max > threshold)  # rows whose maximum is in the band
    if rows.numel() <= GATHER_ROWS_BELOW * lse.numel():  # few such rows (flat attention): look at those only
        return _select_in_rows(s_hat, visible, lse, threshold, rows, site.tau)
    candidates = s_hat > threshold  # eager: inductor stores bool slowly
    if visible is not None:
        candidates &= visible
    flat = flat_positions(candidates)  # candidate positions in the flattened scores (host sync: CPU path)
    if flat.numel() == 0:
        return candidates, flat
    if flat.numel() > DENSE_ABOVE * candidates.numel():
        return compiled(_strict_dense)(s_low, bias, lse, site.tau).view(torch.bool), None
    s_c = s_hat.reshape(-1)[flat]
    a_c = torch.exp(s_c - lse.reshape(-1)[flat // s_hat.shape[-1]])  # lse: one value per row
    keep = 2.0 * a_c * (1.0 - a_c) * s_c.abs() > site.tau
    candidates.view(-1)[flat] = keep
    return candidates, flat[keep]


def _nothing(s_hat: Tensor) -> tuple[Tensor, Tensor]:
    return torch.zeros(s_hat.shape, dtype=torch.bool, device=s_hat.device), _no_positions(s_hat)


def _no_positions(s_hat: Tensor) -> Tensor:
    return torch.zeros(0, dtype=torch.int64, device=s_hat.device)


def _select_in_rows(s_hat: Tensor, visible: Tensor | None, lse: Tensor, threshold: Tensor, rows: Tensor,
                    tau: float) -> tuple[Tensor, Tensor]:
    """The strict rule on the given rows only (flattened row indices); every other row selects nothing."""
    length = s_hat.shape[-1]
    if rows.numel() == 0:
        return _nothing(s_hat)
    selected = torch.zeros(s_hat.shape, dtype=torch.bool, device=s_hat.device)
    sub = s_hat.view(-1, length).index_select(0, rows)  # (R, L)
    candidates = sub > threshold.reshape(-1, 1)[rows]
    if visible is not None:  # the compact mask's rows: index 0 along its broadcast dimensions
        position = torch.unravel_index(rows, s_hat.shape[:-1])
        candidates &= visible[tuple(p if n > 1 else torch.zeros_like(p) for p, n in zip(position, visible.shape))]
    within = flat_positions(candidates)  # row-major positions in (R, L): rows ascend, columns within a row
    r, column = within // length, within % length
    s_c = sub[r, column]
    a_c = torch.exp(s_c - lse.reshape(-1)[rows[r]])
    keep = (2.0 * a_c * (1.0 - a_c) * s_c.abs() > tau).nonzero().squeeze(1)
    flat = rows[r[keep]] * length + column[keep]  # increasing: rows ascend, columns ascend within a row
    selected.view(-1)[flat] = True
    return selected, flat
