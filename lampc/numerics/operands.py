"""Low-precision operands with per-block scales: what an FP8 GEMM reads (SitePolicy.operand_format).

An FP8 attention kernel quantizes q by tiles of rows and k by tiles of keys, each tile with one FP32 scale (its
absolute maximum over the format's largest finite value), multiplies the FP8 values with its accumulator, and
multiplies the scales back in FP32:

    a (…, M, K) -> a_q = RN_fmt(a / s_a),  s_a = amax over each `block` rows (all K) / max_finite(fmt)
    b (…, K, N) -> b_q = RN_fmt(b / s_b),  s_b = amax over each `block` columns (all K) / max_finite(fmt)
    a @ b       ≈  (a_q @ b_q) · s_a · s_b          (the product of a_q and b_q by the site's accumulator)

A block of zeros gets scale 1. Formats with FP32's exponent range (bf16, m7, ...) need no scale (1); their
operands are only rounded.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..formats import Format, parse
from .rounding import round_to


def _block_amax(x: Tensor, block: int, dim: int) -> Tensor:
    """The absolute maximum of x over each `block` indices along `dim` (-2: rows, -1: columns) and the whole other
    matrix dimension, one value per index along `dim` (size 1 along the other)."""
    other = -1 if dim == -2 else -2
    line = x.abs().amax(dim=other)  # (…, M) or (…, N)
    n = line.shape[-1]
    per_block = torch.nn.functional.pad(line, (0, -n % block)).unflatten(-1, (-1, block)).amax(dim=-1)
    return per_block.repeat_interleave(block, dim=-1)[..., :n].unsqueeze(other)


def quantize(x: Tensor, fmt: Format | str, block: int, dim: int) -> tuple[Tensor, Tensor]:
    """(x_q, scale): x's blocks of `block` indices along `dim` (-2: rows, -1: columns) scaled into `fmt` and
    rounded; x ≈ x_q · scale (scale broadcastable to x)."""
    fmt = parse(fmt)
    if fmt.has_fp32_range:
        return round_to(x, fmt), torch.ones((), dtype=x.dtype, device=x.device)
    amax = _block_amax(x, block, dim)
    scale = torch.where(amax > 0, amax / fmt.max_finite, torch.ones_like(amax))
    return round_to(x / scale, fmt), scale
