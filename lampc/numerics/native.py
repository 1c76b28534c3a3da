"""The native backend's fast path: real low-precision matmuls with weights cast once, not at every call.

`native_product(x, w, bias, fmt)` computes x @ w (+ bias) with both operands in fmt's torch dtype (bf16, fp16),
FP32 accumulation inside the GEMM, and the result rounded to the dtype then widened to float32 (what a bf16
GEMM writes). Inside `cached_weights(model_cache)` (a compiled model runs its graphs so), the model's registered
weights are cast once and cached; activations are cast at every call, as autocast does.
"""

from __future__ import annotations

import math
import weakref
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

class LowPrecisionWeights:
    """One compiled model's weights in low-precision dtypes, cast once and reused while they do not change.

    Only registered tensors (the model's parameters) are cached; each entry is stamped with the tensor's version,
    data pointer and shape, so an in-place update, a `.data =` swap or a resize recasts it. Keyed by id() and
    checked against a weak reference (tensors compare by value, so no WeakSet); a freed weight leaves the cache.
    """

    def __init__(self, tensors=()):
        self._static: dict[int, weakref.ref] = {}
        self._cache: dict[tuple[int, torch.dtype], tuple[tuple, Tensor]] = {}
        self.register(tensors)

    def register(self, tensors) -> None:
        """Mark tensors (model parameters) whose low-precision copies may be cached across calls."""
        for t in tensors:
            if isinstance(t, Tensor):
                key = id(t)
                self._static[key] = weakref.ref(t, lambda _, key=key: self._forget(key))

    def _forget(self, key: int) -> None:
        self._static.pop(key, None)
        for cache_key in [k for k in self._cache if k[0] == key]:
            del self._cache[cache_key]

    def low(self, w: Tensor, dtype: torch.dtype) -> Tensor:
        """w in `dtype`; from the cache when w (or the tensor it views) is a registered weight."""
        base = w._base if w._base is not None else w
        ref = self._static.get(id(base))
        if ref is None or ref() is not base or not base.is_contiguous():
            return w.to(dtype)
        entry = self._cache.get((id(base), dtype))
        stamp = (base._version, base.data_ptr(), tuple(base.shape))  # in-place updates, `.data =` swaps, resizes
        if entry is None or entry[0] != stamp:
            entry = (stamp, base.detach().to(dtype))
            self._cache[(id(base), dtype)] = entry
        low_base = entry[1]
        return low_base.as_strided(w.shape, w.stride(), w.storage_offset() - base.storage_offset())


_ACTIVE: ContextVar[LowPrecisionWeights | None] = ContextVar("lampc_low_precision_weights", default=None)


@contextmanager
def cached_weights(weights: LowPrecisionWeights):
    """Within this block (this thread or task), native matmuls take their weights from `weights` (a compiled
    model's own cache). Outside any such block every operand is cast at every call."""
    token = _ACTIVE.set(weights)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def _low(w: Tensor, dtype: torch.dtype) -> Tensor:
    weights = _ACTIVE.get()
    return w.to(dtype) if weights is None else weights.low(w, dtype)


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
