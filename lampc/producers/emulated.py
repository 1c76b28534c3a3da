"""The emulated m-bit accumulator (Emulated): the bit-exact rounding model of lampc/numerics/accumulate.py.

It prepares no weight (ProducerImpl.prepare_weight): its products read the FP32 operands, so w_low / k_low are
always None here. A truncating or flushed accumulator (rounding, flush_every), or one over low-precision operands
(operand_format, lampc/numerics/operands.py), runs lp_matmul and rounds its output in torch ops (flushed: not at
all, the product is FP32); the plain one runs lp_product, the output rounded in the kernel."""

from __future__ import annotations

from torch import Tensor

from ..config.producer import Emulated
from ..numerics import lp_matmul, lp_product, round_to
from ..numerics.operands import quantize
from ..numerics.error_bounds import absolute_floor, accumulation_gamma
from .registry import ProducerImpl, register


@register(Emulated)
class EmulatedImpl(ProducerImpl):
    def matmul(self, x: Tensor, w: Tensor, bias: Tensor | None, w_low: Tensor | None = None) -> Tensor:
        odd_bias = bias is not None and (bias.dim() != 1 or bias.shape[0] != w.shape[-1])  # not lp_product's form
        if not self.p.plain or odd_bias:
            acc = self._accumulate(x, w)
            acc = acc if bias is None else acc + bias
            return acc if self.p.flush_every is not None else round_to(acc, self.p.format)
        return lp_product(x, w, self.p.format, self.p.block_k, bias=bias)  # RN(acc + bias)

    def scores(self, q: Tensor, k_t: Tensor, scale: float, k_low: Tensor | None = None) -> Tensor:
        if not self.p.plain:
            acc = self._accumulate(q, k_t) * scale
            return acc if self.p.flush_every is not None else round_to(acc, self.p.format)
        return lp_product(q, k_t, self.p.format, self.p.block_k, scale=scale)  # RN(RN(q @ k_t) * scale)

    def _accumulate(self, a: Tensor, b: Tensor) -> Tensor:
        """The accumulator with its rounding mode and flushes, over the operands in operand_format (their scales
        multiplied back in FP32) when it has one; flushed, its value is FP32 (not rounded again)."""
        fmt = self.p.operand_format
        if fmt is not None:
            (a, a_scale), (b, b_scale) = (quantize(a, fmt, self.p.operand_block, -2),
                                          quantize(b, fmt, self.p.operand_block, -1))
        acc = lp_matmul(a, b, self.p.format, self.p.block_k, rounding=self.p.rounding,
                        flush_every=self.p.flush_every)
        return acc if fmt is None else acc * a_scale * b_scale

    def scores_with_fp32(self, q: Tensor, k_t: Tensor, scale: float) -> tuple[Tensor, Tensor] | None:
        """(ŝ, s32) shaped like q @ k_t from one Triton kernel (lampc/kernels/triton_scores.py): ŝ with this
        producer's bits, s32 the FP32 product in the same K loop. None for an identity format or without triton."""
        if self.p.format.is_identity or not self.p.plain:  # the Triton site kernel rounds to nearest, unflushed
            return None
        try:
            from ..kernels.triton_scores import site_operands, triton_site_scores
        except ImportError:
            return None
        q3, k3, shape = site_operands(q, k_t)
        s_hat, s32 = triton_site_scores(q3, k3, scale, self.p.format, self.p.block_k)
        return s_hat.view(shape), s32.view(shape)

    def gamma(self, k: int) -> float:
        return accumulation_gamma(self.p.format, k, self.p.block_k, rounding=self.p.rounding,
                                  flush_every=self.p.flush_every)

    def floor(self, k: int, scale: float) -> float:
        chunk = k if self.p.flush_every is None else min(k, self.p.flush_every * self.p.block_k)
        return absolute_floor(self.p.format, chunk, self.p.block_k, scale) * -(-k // max(chunk, 1))
