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

    def scores_with_fp32(self, q: Tensor, k_t: Tensor, scale: float) -> tuple[Tensor, Tensor] | None:
        """(ŝ, s32) shaped like q @ k_t from one Triton kernel (lampc/kernels/triton_scores.py): ŝ with this
        producer's bits, s32 the FP32 product in the same K loop. None for an identity format or without triton."""
        if self.p.format.is_identity:
            return None
        try:
            from ..kernels.triton_scores import site_operands, triton_site_scores
        except ImportError:
            return None
        q3, k3, shape = site_operands(q, k_t)
        s_hat, s32 = triton_site_scores(q3, k3, scale, self.p.format, self.p.block_k)
        return s_hat.view(shape), s32.view(shape)

    def gamma(self, k: int) -> float:
        return accumulation_gamma(self.p.format, k, self.p.block_k)

    def floor(self, k: int, scale: float) -> float:
        return absolute_floor(self.p.format, k, self.p.block_k, scale)
