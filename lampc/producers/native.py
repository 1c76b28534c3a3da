"""The native producer (Native): the real bf16/fp16 GEMM (lampc/numerics/native.py), FP32 accumulation inside.

Its weights are cast once: each weight operand that is a model parameter is read through a CastWeight module
(lampc/producers/cast_weight.py), one per weight and dtype in a graph, whose copy the ops take as w_low / k_low.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config.producer import Native
from ..numerics.error_bounds import absolute_floor, accumulation_gamma
from ..numerics.native import native_product, native_scores_low
from .cast_weight import CastWeight
from .registry import ProducerImpl, register


@register(Native)
class NativeImpl(ProducerImpl):
    @property
    def hardware_dtype(self):
        return self.p.format.torch_dtype

    def matmul(self, x: Tensor, w: Tensor, bias: Tensor | None, w_low: Tensor | None = None) -> Tensor:
        dtype = self.p.format.torch_dtype
        return native_product(x, w, bias, dtype, _usable(w_low, w, dtype, "w_low"))

    def scores(self, q: Tensor, k_t: Tensor, scale: float, k_low: Tensor | None = None) -> Tensor:
        """The GEMM writes the dtype; the scaling is rounded to it once more."""
        return self.scores_low(q, k_t, scale, k_low).float()

    def scores_low(self, q: Tensor, k_t: Tensor, scale: float, k_low: Tensor | None = None) -> Tensor:
        dtype = self.p.format.torch_dtype
        return native_scores_low(q, k_t, scale, dtype, _usable(k_low, k_t, dtype, "k_low"))

    def prepare_weight(self, em, w, name: str):
        """A call of the weight's CastWeight (one module per weight and dtype in a graph); none for fp32."""
        dtype = self.p.format.torch_dtype
        if dtype == torch.float32:
            return None
        module = f"lampc_cast_{self.p.format.name}_{name.replace('.', '_')}"
        return em.add_module(module, CastWeight(dtype), (w,), role="operand")

    def gamma(self, k: int) -> float:
        return accumulation_gamma(self.p.format, k, native=True)

    def floor(self, k: int, scale: float) -> float:
        return absolute_floor(self.p.format, k, 1, scale)


def _usable(low: Tensor | None, operand: Tensor, dtype: torch.dtype, name: str) -> Tensor | None:
    """The operand's prepared copy if it is one in this producer's dtype; None (cast at the call) for a copy in
    another dtype: a site whose format was respecified after its weight's cast was added (respec_sites)."""
    if low is None:
        return None
    if low.shape != operand.shape:
        raise ValueError(f"lampc native producer: {name} must have the weight's shape {tuple(operand.shape)}, got "
                         f"{tuple(low.shape)}")
    return low if low.dtype == dtype else None
