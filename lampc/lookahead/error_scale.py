"""The error scale a rule multiplies each entry's sensitivity by: the paper's |ŝ_i|, or a bound on the producer's
error for that entry (SitePolicy.error_scale; docs/NUMERICS.md §9).

    "score"  |ŝ_i|                       the paper's rule: a relative error in every entry
    "l1"     γ·|c|·Σ_k |q_k·k_ik| + α    the accumulation's error bound (one FP32 product of the absolute values)
    "norms"  γ·|c|·‖q‖₂·‖k_i‖₂ + α        its Cauchy–Schwarz bound: one norm per query and per key, O(T·d)

An entry whose score is small because large terms cancel carries a large error the paper's weight never sees; the
bounds see it. With "l1" or "norms", tau is in units of the first-order bound on the consumer's error.
"""

from __future__ import annotations

from torch import Tensor

from ..numerics.error_bounds import product_error_bound
from ..policy import SitePolicy


def producer_error_scale(site: SitePolicy, a: Tensor, b: Tensor, scale: float = 1.0) -> Tensor | None:
    """The per-entry error scale of RN(a @ b · scale) under `site`, shaped like the product (broadcastable);
    None for "score" (the rules then read |ŝ| themselves)."""
    if site.error_scale == "score":
        return None
    return product_error_bound(a, b, site.format, block_k=site.block_k, scale=scale,
                               native=site.backend == "native", scale_kind=site.error_scale)
