"""The native backend's fast path: real low-precision matmuls.

`native_product(x, w, bias, dtype)` computes x @ w (+ bias) with both operands in the torch dtype (bf16, fp16),
FP32 accumulation inside the GEMM, and the result rounded to the dtype then widened to float32 (what a bf16
GEMM writes). Operands are cast at every call, as autocast does, unless the caller gives the weight's copy in the
dtype (`w_low`, `k_low`): a rewritten graph casts each weight once, through its CastWeight module
(lampc/producers/cast_weight.py).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def native_product(x: Tensor, w: Tensor, bias: Tensor | None, dtype: torch.dtype, w_low: Tensor | None = None
                   ) -> Tensor:
    """fl_dtype(x @ w (+ bias)) as float32; the bias is added by the GEMM epilogue in FP32. w_low: w in `dtype`,
    cast before (None: cast here)."""
    low_x, low_w = x.to(dtype), w.to(dtype) if w_low is None else w_low
    if bias is not None and low_w.dim() == 2 and low_x.dim() >= 2:
        out = torch.addmm(bias.to(dtype), low_x.reshape(-1, low_x.shape[-1]), low_w)
        return out.reshape(*x.shape[:-1], w.shape[-1]).to(torch.float32)
    out = torch.matmul(low_x, low_w)
    if bias is not None:
        out = out + bias.to(dtype)
    return out.to(torch.float32)


def native_scores(q: Tensor, k_t: Tensor, scale: float, dtype: torch.dtype, k_low: Tensor | None = None) -> Tensor:
    """fl_dtype(fl_dtype(q @ k_t) * scale) as float32: attention scores from a real low-precision GEMM."""
    return native_scores_low(q, k_t, scale, dtype, k_low).to(torch.float32)


def native_scores_low(q: Tensor, k_t: Tensor, scale: float, dtype: torch.dtype, k_low: Tensor | None = None
                      ) -> Tensor:
    """fl_dtype(fl_dtype(q @ k_t) * scale) in `dtype`. k_low: k_t in `dtype`, cast before (None: cast here).

    A power-of-two scale (1/8 for 64-wide heads) commutes with rounding in a binary format, so it is applied to q
    before the GEMM: the same bits, over T x D entries instead of T x L."""
    low_k = k_t.to(dtype) if k_low is None else k_low
    if scale > 0.0 and math.frexp(scale)[0] == 0.5:
        return torch.matmul((q * scale).to(dtype), low_k)
    return torch.matmul(q.to(dtype), low_k) * scale

