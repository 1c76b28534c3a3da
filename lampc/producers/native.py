"""The native producer (Native): the real bf16/fp16 GEMM (lampc/numerics/native.py), FP32 accumulation inside."""

from __future__ import annotations

from torch import Tensor

from ..config.producer import Native
from ..numerics.error_bounds import absolute_floor, accumulation_gamma
from ..numerics.native import native_product, native_scores_low
from .registry import ProducerImpl, register


@register(Native)
class NativeImpl(ProducerImpl):
    @property
    def hardware_dtype(self):
        return self.p.format.torch_dtype

    def matmul(self, x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
        return native_product(x, w, bias, self.p.format.torch_dtype)

    def scores(self, q: Tensor, k_t: Tensor, scale: float) -> Tensor:
        """The GEMM writes the dtype; the scaling is rounded to it once more."""
        return self.scores_low(q, k_t, scale).float()

    def scores_low(self, q: Tensor, k_t: Tensor, scale: float) -> Tensor:
        return native_scores_low(q, k_t, scale, self.p.format.torch_dtype)

    def gamma(self, k: int) -> float:
        return accumulation_gamma(self.p.format, k, native=True)

    def floor(self, k: int, scale: float) -> float:
        return absolute_floor(self.p.format, k, 1, scale)
