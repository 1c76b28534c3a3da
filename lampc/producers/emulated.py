"""The emulated m-bit accumulator (Emulated): the bit-exact rounding model of lampc/numerics/accumulate.py.

It prepares no weight (ProducerImpl.prepare_weight): its products read the FP32 operands, so w_low / k_low are
always None here."""

from __future__ import annotations

from torch import Tensor

from ..config.producer import Emulated
from ..numerics import lp_matmul, lp_product, round_to
from ..numerics.error_bounds import absolute_floor, accumulation_gamma
from .registry import ProducerImpl, register


@register(Emulated)
class EmulatedImpl(ProducerImpl):
    def matmul(self, x: Tensor, w: Tensor, bias: Tensor | None, w_low: Tensor | None = None) -> Tensor:
        if bias is not None and (bias.dim() != 1 or bias.shape[0] != w.shape[-1]):  # a bias lp_product does not take
            return round_to(lp_matmul(x, w, self.p.format, self.p.block_k) + bias, self.p.format)
        return lp_product(x, w, self.p.format, self.p.block_k, bias=bias)  # RN(acc + bias)

    def scores(self, q: Tensor, k_t: Tensor, scale: float, k_low: Tensor | None = None) -> Tensor:
        return lp_product(q, k_t, self.p.format, self.p.block_k, scale=scale)  # RN(RN(q @ k_t) * scale)

    def gamma(self, k: int) -> float:
        return accumulation_gamma(self.p.format, k, self.p.block_k)

    def floor(self, k: int, scale: float) -> float:
        return absolute_floor(self.p.format, k, self.p.block_k, scale)
