"""Look-ahead at normalisation consumers: layer_norm and RMSNorm column sensitivities (NUMERICS.md §4).

layer_norm: LN(x)_j = γ_j (x_j − μ)/σ + β_j with σ = sqrt(var(x) + eps) and x̂ = (x − μ)/σ has Jacobian
    J_ji = (γ_j/σ)(δ_ij − 1/n − x̂_j x̂_i / n),
whose column i has l1 norm at most
    (1/σ) [ |γ_i|·|1 − 1/n − x̂_i²/n| + (1/n)·Σ_j |γ_j| + (|x̂_i|/n)·Σ_j |γ_j x̂_j| ].
RMSNorm: R(x)_j = γ_j x_j / r with r = sqrt(mean(x²) + eps) and x̃ = x / r has J_ji = (γ_j/r)(δ_ij − x̃_j x̃_i / n),
whose column i has l1 norm at most
    (1/r) [ |γ_i|·|1 − x̃_i²/n| + (|x̃_i|/n)·Σ_j |γ_j x̃_j| ].
Both bounds are large for outlier ("massive activation") coordinates and large |γ_i|. Each costs O(n) per row:
one reduction more than the norm itself. Shapes: x f32[..., n], gamma f32[n] or None (= ones) -> f32[..., n].
"""

from __future__ import annotations

import torch
from torch import Tensor


def layer_norm_column_norms(x: Tensor, gamma: Tensor | None, eps: float) -> Tensor:
    """Upper bound on the l1 norm of each Jacobian column of layer_norm at x (the bound above)."""
    n = x.shape[-1]
    gamma = torch.ones(n, dtype=x.dtype, device=x.device) if gamma is None else gamma
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, unbiased=False, keepdim=True)
    sigma = torch.sqrt(var + eps)  # (…, 1)
    x_hat = (x - mean) / sigma  # (…, n)
    g = gamma.abs()
    own = g * (1.0 - 1.0 / n - x_hat.square() / n).abs()
    shared = g.sum() / n
    coupling = x_hat.abs() / n * (g * x_hat).abs().sum(dim=-1, keepdim=True)
    return (own + shared + coupling) / sigma


def rms_norm_column_norms(x: Tensor, gamma: Tensor | None, eps: float) -> Tensor:
    """Upper bound on the l1 norm of each Jacobian column of RMSNorm at x (the bound above)."""
    n = x.shape[-1]
    gamma = torch.ones(n, dtype=x.dtype, device=x.device) if gamma is None else gamma
    r = torch.sqrt(x.square().mean(dim=-1, keepdim=True) + eps)  # (…, 1)
    x_t = x / r
    g = gamma.abs()
    own = g * (1.0 - x_t.square() / n).abs()
    coupling = x_t.abs() / n * (g * x_t).abs().sum(dim=-1, keepdim=True)
    return (own + coupling) / r
