"""The readable reference of the low-precision accumulator (lampc/numerics/accumulate.py, `impl="eager"`).

    strict  (block_k = 1):  acc = RN(fl32(acc + fl32(a_k * b_k)))           k = 1..K in order, acc0 = +0
    blocked (block_k = b):  acc = RN(fl32(acc + S_j)),  S_j = sequential FP32 sum of block j (b terms, last shorter)

The output is processed in tiles of about TILE_ELEMENTS accumulator elements; each strict step is one
elementwise pass over a tile (multiply, add, four int32 rounding ops; blocked: multiply and add, rounding once per
block). Operands are batched, (B, M, K) and
(B, K, N), float32; NaN inputs are first made the payload-free quiet NaN (`canonical_nans`). The fast kernels (lampc/numerics/fast.py) give
these bits.
"""

from __future__ import annotations

import torch

from lampc.formats import Format
from lampc.numerics.rounding import (
    dropped_mantissa_bits,
    round_mantissa_bits_,
    round_to_,
)

# Elements of the accumulator tile processed per elementwise op: large enough to amortise the
# per-op overhead, small enough that the tile and its scratch (2 x 1 MiB) stay in L2.
TILE_ELEMENTS = 256 * 1024


def reference_lp_matmul(a: torch.Tensor, b: torch.Tensor, fmt: Format, block_k: int,
                        rounding: str = "nearest") -> torch.Tensor:
    """The readable reference on batched operands a (B, M, K), b (B, K, N)."""
    a, b = canonical_nans(a), canonical_nans(b)
    if block_k > 1:
        return blocked(a, b, fmt, block_k, rounding)
    return _strict(a, b, fmt, rounding)


def reference_lp_product(a: torch.Tensor, b: torch.Tensor, fmt: Format, block_k: int, scale: float | None,
                         bias: torch.Tensor | None) -> torch.Tensor:
    """round_to(reference_lp_matmul(a, b) * scale + bias, fmt): a producer's output (accumulate.lp_product)."""
    return output_epilogue(reference_lp_matmul(a, b, fmt, block_k), fmt, scale, bias)


def output_epilogue(acc: torch.Tensor, fmt: Format, scale: float | None, bias: torch.Tensor | None) -> torch.Tensor:
    """RN(fl32(fl32(acc * scale) + bias)) onto fmt's grid, in torch ops (in place when there is neither: acc is
    the caller's fresh accumulator)."""
    out = acc * scale if scale is not None else acc
    out = out + bias if bias is not None else out
    return round_to_(out, fmt)


# -- strict accumulation ------------------------------------------------------------------------


def _strict(a: torch.Tensor, b: torch.Tensor, fmt: Format, rounding: str = "nearest") -> torch.Tensor:
    """Strict accumulation over K in order, tiled over (batch, row) blocks of the output."""
    batch, rows, inner = a.shape
    cols = b.shape[-1]
    out = torch.empty(batch, rows, cols, dtype=torch.float32, device=a.device)
    a_cols = a.transpose(1, 2).unsqueeze(-1)  # (B, K, M, 1): a[:, :, k] as a column
    b_rows = b.unsqueeze(-2)  # (B, K, 1, N)
    for batches, row_slice in _tiles(batch, rows, cols):
        acc = out[batches, row_slice]  # (Bt, Mt, N), contiguous when Mt == M or Bt == 1
        scratch = torch.empty_like(acc)
        acc.zero_()
        for k in range(inner):
            torch.mul(a_cols[batches, k, row_slice], b_rows[batches, k], out=scratch)  # products
            acc.add_(scratch)
            _round_accumulator_(acc, fmt, rounding)
    return out


def _round_accumulator_(acc: torch.Tensor, fmt: Format, rounding: str = "nearest") -> None:
    """RN (or, rounding="toward_zero", RZ: the dropped bits cleared) of acc in place; NaNs reaching here have no
    payload (see `canonical_nans`), so clearing low bits keeps them NaN."""
    if rounding == "toward_zero":
        acc.view(torch.int32).bitwise_and_(-(1 << dropped_mantissa_bits(fmt)))
        return
    if fmt.has_fp32_range:
        round_mantissa_bits_(acc.view(torch.int32), dropped_mantissa_bits(fmt))
    else:
        round_to_(acc, fmt)


def canonical_nans(x: torch.Tensor) -> torch.Tensor:
    """x with every NaN replaced by the default quiet NaN, so NaNs survive in-place bit rounding."""
    nan_mask = torch.isnan(x)
    if not bool(nan_mask.any()):
        return x
    return x.masked_fill(nan_mask, float("nan"))


# -- blocked accumulation -----------------------------------------------------------------------


def blocked(a: torch.Tensor, b: torch.Tensor, fmt: Format, block_k: int, rounding: str = "nearest") -> torch.Tensor:
    """Blocked accumulation: per block of block_k terms in order (the last shorter), the FP32 block sum
    S_j = fl32(... fl32(fl32(+0 + p_1) + p_2) ... + p_b) of the products p = fl32(a_k * b_k), then
    acc = RN(fl32(acc + S_j)); tiled like `_strict`. a, b: with canonical NaNs (`canonical_nans`)."""
    batch, rows, inner = a.shape
    cols = b.shape[-1]
    out = torch.empty(batch, rows, cols, dtype=torch.float32, device=a.device)
    a_cols = a.transpose(1, 2).unsqueeze(-1)  # (B, K, M, 1)
    b_rows = b.unsqueeze(-2)  # (B, K, 1, N)
    for batches, row_slice in _tiles(batch, rows, cols):
        acc = out[batches, row_slice]  # (Bt, Mt, N)
        block_sum, scratch = torch.empty_like(acc), torch.empty_like(acc)
        acc.zero_()
        for k0 in range(0, inner, block_k):
            block_sum.zero_()
            for k in range(k0, min(k0 + block_k, inner)):
                torch.mul(a_cols[batches, k, row_slice], b_rows[batches, k], out=scratch)
                block_sum.add_(scratch)
            acc.add_(block_sum)
            _round_accumulator_(acc, fmt, rounding)
    return out


# -- tiles ----------------------------------------------------------------------------------------


def _tiles(batch: int, rows: int, cols: int):
    """Yield (batch slice, row slice) tiles of about TILE_ELEMENTS accumulator elements."""
    per_matrix = rows * cols
    if per_matrix == 0:
        return
    if per_matrix <= TILE_ELEMENTS:
        step = max(1, TILE_ELEMENTS // per_matrix)
        for b0 in range(0, batch, step):
            yield slice(b0, min(b0 + step, batch)), slice(0, rows)
        return
    row_step = max(1, TILE_ELEMENTS // cols)
    for b0 in range(batch):
        for r0 in range(0, rows, row_step):
            yield slice(b0, b0 + 1), slice(r0, min(r0 + row_step, rows))
