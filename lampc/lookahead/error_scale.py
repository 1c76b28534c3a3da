"""The error scale a rule multiplies each entry's sensitivity by: the paper's |ŝ_i|, or a bound on the producer's
error for that entry (SitePolicy.error_scale; docs/NUMERICS.md §9).

    "score"  |ŝ_i|                          the paper's rule: a relative error in every entry
    "l1"     γ·|c|·Σ_k |q_k·k_ik| + α       the accumulation's error bound (one FP32 product of the absolute values)
    "norms"  γ·|c|·‖q‖₂·‖k_i‖₂ + α           its Cauchy–Schwarz bound: one norm per query and per key, O(T·d)
    "mixed"  max(|ŝ_i|, |c|·‖q‖₂·‖k_i‖₂/√K)  |ŝ_i|, but never below the magnitude a dot product of K cancelling
                                            terms with these norms has; tau keeps the paper's units
    "exact"  |s_i − ŝ_i|                    the true error (the FP32 product): evaluation only, the oracle's scale

An entry whose score is small because large terms cancel carries a large error the paper's weight never sees; the
bounds see it. With "l1" or "norms", tau is in units of the first-order bound on the consumer's error.
"""

from __future__ import annotations

import math

from torch import Tensor

from ..numerics.error_bounds import error_bound, norm_product
from ..policy import SitePolicy
from ..producers import implementation
from .recompute import fp32_product


def producer_error_scale(site: SitePolicy, a: Tensor, b: Tensor, out_hat: Tensor, scale: float = 1.0,
                         bias: Tensor | None = None) -> Tensor | None:
    """The per-entry error scale of ŷ = RN(a @ b · scale (+ bias)) under `site`, broadcastable to ŷ (`out_hat`);
    None for "score" (the rules then read |ŷ| themselves)."""
    kind = site.error_scale
    if kind == "score":
        return None
    if kind == "exact":
        return (fp32_product(a, b, scale, bias=bias) - out_hat).abs()
    if kind == "mixed":
        floor = norm_product(a, b) * (abs(scale) / math.sqrt(a.shape[-1]))
        return out_hat.abs().to(floor.dtype).maximum(floor)
    producer, k = implementation(site.producer), a.shape[-1]  # the bound is the producer's (docs/NUMERICS.md §9)
    return error_bound(a, b, producer.gamma(k), producer.floor(k, scale), scale=scale, scale_kind=kind)
