"""How far a low-precision product can be from the exact one: a bound per entry, for every format and mode.

For ŝ = RN(fl32(acc · c)) with acc the low-precision accumulation of p_k = a_k·b_k (docs/NUMERICS.md §9):

    |ŝ − c·Σ_k p_k|  <=  γ · |c| · Σ_k |p_k|  +  α

γ depends on the format (unit roundoff u = 2^-(m+1)), the accumulation mode and K; α is the absolute floor that
subnormal rounding adds (negligible in FP32's exponent range, not in fp16's or fp8's). Σ_k |p_k| is itself
bounded by ‖a‖₂·‖b‖₂ (Cauchy–Schwarz), which costs one norm per row and per column instead of a second product.

    strict  (block_k = 1)   every term passes through up to K+1 roundings of (1 + u)(1 + u32):
                            γ = (1 + v)^(K+1) · (1 + u32) − 1,            v = (1 + u)(1 + u32) − 1
    blocked (block_k = b)   FP32 block sums (any order, FMA or not: γ_b(u32) = b·u32 / (1 − b·u32)), then
                            ⌈K/b⌉ + 1 roundings:  γ = (1 + v)^(⌈K/b⌉+1) · (1 + γ_b(u32)) − 1
    native (a real dtype)   operands rounded to the dtype, FP32 accumulation (γ_K(u32)), the output and its
                            scaling rounded to the dtype:  γ = (1 + u)^4 · (1 + γ_K(u32)) − 1

tests/test_error_bounds.py checks every bound against measured errors (random and outlier-heavy operands, every
format, both modes) and how tight it is.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lampc.formats import Format, parse

U32 = 2.0**-24
"""FP32's unit roundoff."""


def _gamma_n(n: int, u: float) -> float:
    """Higham's γ_n = n·u / (1 − n·u): the relative error of an n-term sum in any order."""
    if n * u >= 1.0:
        return math.inf
    return n * u / (1.0 - n * u)


def accumulation_gamma(fmt: Format | str, k: int, block_k: int = 1, *, native: bool = False,
                       rounding: str = "nearest", flush_every: int | None = None) -> float:
    """γ of the bound above for a K-term product in `fmt` (strict, blocked or native accumulation). rounding
    "toward_zero": one rounding errs by up to 2^-m (twice RN's u). flush_every: each term passes through one chunk
    of flush_every x block_k terms in low precision, then up to ceil(K / chunk) FP32 additions."""
    fmt = parse(fmt) if isinstance(fmt, str) else fmt
    if fmt.is_identity:
        return _gamma_n(k + 1, U32)  # plain FP32: the matmul and the scaling
    if flush_every is not None:
        chunk = min(k, flush_every * block_k)
        inner = accumulation_gamma(fmt, chunk, block_k, rounding=rounding)
        return (1.0 + inner) * (1.0 + _gamma_n(-(-k // max(chunk, 1)), U32)) - 1.0
    u = fmt.unit_roundoff * (2.0 if rounding == "toward_zero" else 1.0)
    if native:
        return (1.0 + u) ** 4 * (1.0 + _gamma_n(k, U32)) - 1.0
    v = (1.0 + u) * (1.0 + U32) - 1.0
    if block_k == 1:
        return (1.0 + v) ** (k + 1) * (1.0 + U32) - 1.0
    blocks = math.ceil(k / block_k)
    return (1.0 + v) ** (blocks + 1) * (1.0 + _gamma_n(min(block_k, k), U32)) - 1.0


def absolute_floor(fmt: Format | str, k: int, block_k: int = 1, scale: float = 1.0) -> float:
    """α of the bound: half a subnormal spacing per rounding (the accumulator's K or ⌈K/b⌉, then the scaling)."""
    fmt = parse(fmt) if isinstance(fmt, str) else fmt
    if fmt.is_mantissa_only:
        spacing = 2.0**-149  # FP32's subnormal spacing: mantissa-only formats keep FP32's exponent range
    else:
        spacing = fmt.min_subnormal
    roundings = k if block_k == 1 else math.ceil(k / block_k)
    return (roundings * abs(scale) + 1.0) * spacing  # generous: a full spacing per rounding


def magnitude_sum(a: Tensor, b: Tensor) -> Tensor:
    """Σ_k |a_ik·b_kj|: the exact error scale of a @ b (one FP32 product of the absolute values)."""
    return torch.matmul(a.abs(), b.abs())


def norm_product(a: Tensor, b: Tensor) -> Tensor:
    """‖a_i‖₂·‖b_j‖₂ >= Σ_k |a_ik·b_kj| (Cauchy–Schwarz): the error scale from one norm per row and column."""
    return torch.linalg.vector_norm(a, dim=-1).unsqueeze(-1) * torch.linalg.vector_norm(b, dim=-2).unsqueeze(-2)


def product_error_bound(a: Tensor, b: Tensor, fmt: Format | str, *, block_k: int = 1, scale: float = 1.0,
                        native: bool = False, scale_kind: str = "l1") -> Tensor:
    """The bound on |RN(lp(a @ b)·scale) − scale·(a @ b)| per entry; scale_kind "l1" (Σ|a·b|) or "norms"."""
    k = a.shape[-1]
    return error_bound(a, b, accumulation_gamma(fmt, k, block_k, native=native), absolute_floor(fmt, k, block_k, scale),
                       scale=scale, scale_kind=scale_kind)


def error_bound(a: Tensor, b: Tensor, gamma: float, floor: float, *, scale: float = 1.0,
                scale_kind: str = "l1") -> Tensor:
    """γ·|scale|·magnitude(a, b) + α: the bound's form, for any producer's γ and α (its ProducerImpl.gamma/floor)."""
    magnitude = magnitude_sum(a, b) if scale_kind == "l1" else norm_product(a, b)
    return gamma * abs(scale) * magnitude + floor
