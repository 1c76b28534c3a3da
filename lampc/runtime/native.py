"""The native backend's fast path: real low-precision matmuls with weights cast once, not at every call.

`native_product(x, w, bias, fmt)` computes x @ w (+ bias) with both operands in fmt's torch dtype (bf16, fp16),
FP32 accumulation inside the GEMM, and the result rounded to the dtype then widened to float32 (what a bf16
GEMM writes). Weights registered with `register_static_weights` (the compiler does this for the parameters of
a native-backend graph) are cast once and cached; activations are cast at every call, as autocast does.
"""

from __future__ import annotations

import math
import weakref

import torch
from torch import Tensor

# Keyed by id(tensor), checked against a weak reference (tensors compare by value, so no WeakSet).
_STATIC: dict[int, weakref.ref] = {}
_CACHE: dict[tuple[int, torch.dtype], tuple[tuple, Tensor]] = {}


def register_static_weights(tensors) -> None:
    """Mark tensors (model parameters) whose low-precision copies may be cached across calls."""
    for t in tensors:
        if isinstance(t, Tensor):
            key = id(t)
            _STATIC[key] = weakref.ref(t, lambda _, key=key: _forget(key))


def _forget(key: int) -> None:
    _STATIC.pop(key, None)
    for cache_key in [k for k in _CACHE if k[0] == key]:
        del _CACHE[cache_key]


def _low(w: Tensor, dtype: torch.dtype) -> Tensor:
    """w in `dtype`; from the cache when w (or the tensor it views) is a registered static weight."""
    base = w._base if w._base is not None else w
    ref = _STATIC.get(id(base))
    if ref is None or ref() is not base or not base.is_contiguous():
        return w.to(dtype)
    entry = _CACHE.get((id(base), dtype))
    stamp = (base._version, base.data_ptr(), tuple(base.shape))  # in-place updates, `.data =` swaps, resizes
    if entry is None or entry[0] != stamp:
        entry = (stamp, base.detach().to(dtype))
        _CACHE[(id(base), dtype)] = entry
    low_base = entry[1]
    return low_base.as_strided(w.shape, w.stride(), w.storage_offset() - base.storage_offset())


def native_product(x: Tensor, w: Tensor, bias: Tensor | None, dtype: torch.dtype) -> Tensor:
    """fl_dtype(x @ w (+ bias)) as float32; the bias is added by the GEMM epilogue in FP32."""
    low_x, low_w = x.to(dtype), _low(w, dtype)
    if bias is not None and low_w.dim() == 2 and low_x.dim() >= 2:
        out = torch.addmm(bias.to(dtype), low_x.reshape(-1, low_x.shape[-1]), low_w)
        return out.reshape(*x.shape[:-1], w.shape[-1]).to(torch.float32)
    out = torch.matmul(low_x, low_w)
    if bias is not None:
        out = out + bias.to(dtype)
    return out.to(torch.float32)


def native_scores(q: Tensor, k_t: Tensor, scale: float, dtype: torch.dtype) -> Tensor:
    """fl_dtype(fl_dtype(q @ k_t) * scale) as float32: attention scores from a real low-precision GEMM."""
    return native_scores_low(q, k_t, scale, dtype).to(torch.float32)


def native_scores_low(q: Tensor, k_t: Tensor, scale: float, dtype: torch.dtype) -> Tensor:
    """fl_dtype(fl_dtype(q @ k_t) * scale) in `dtype`.

    A power-of-two scale (1/8 for 64-wide heads) commutes with rounding in a binary format, so it is applied to q
    before the GEMM: the same bits, over T x D entries instead of T x L."""
    if scale > 0.0 and math.frexp(scale)[0] == 0.5:
        return torch.matmul((q * scale).to(dtype), _low(k_t, dtype))
    return torch.matmul(q.to(dtype), _low(k_t, dtype)) * scale
