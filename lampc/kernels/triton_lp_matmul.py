"""The emulated producer as a Triton kernel: `a @ b` with the accumulator rounded to a Format, one output tile per
program, bit for bit as `lampc.numerics.lp_matmul(a, b, fmt, block_k, impl="eager")` (docs/METHOD.md §2):

    strict  (block_k = 1)  acc = RN(fl32(acc + fl32(a_k * b_k)))   k = 1..K in order, acc0 = +0
    blocked (block_k = b)  acc = RN(fl32(acc + S_j))               S_j = fl32(...fl32(+0 + p_1) + ... + p_b): the
                                                                   FP32 sum of block j's products in k order, from +0

Strict and blocked results equal the CPU reference bit for bit: it sums each block in k order from +0 without FMA
too (docs/NUMERICS.md §3).

No FMA anywhere: every launch passes `enable_fp_fusion=False`, because Triton contracts `acc + a * b` into one fused
multiply-add by default on a GPU (one rounding instead of two: not the reference's arithmetic). Triton's interpreter
(TRITON_INTERPRET=1, the CPU tests) runs numpy and never fuses, so it cannot show that contraction; the tests
compile the kernels for a CUDA target and read the PTX for it instead.

With `scale` and `bias`, the kernel returns the producer's output RN(fl32(fl32(acc * scale) + bias)) instead of the
accumulator (lampc.numerics.lp_product), applied in registers before the store: no second pass over the output.

`lp_dot_tile` is the K loop shared with the fused attention site's kernel (lampc/kernels/triton_scores.py), which
also keeps the plain FP32 sum from the same operand reads.
"""

from __future__ import annotations

import torch

from lampc.formats import Format, parse

from .triton_rounding import cdiv, rounding_constants, round_to_format, tl, triton

NO_FMA = {"enable_fp_fusion": False}
"""The compile option every launch passes: no contraction of a multiply and an add into an FMA (module docstring)."""

MAX_GRID_Z = 65535
"""CUDA's limit on the third grid dimension (the batch): larger batches are launched in slices."""


@triton.jit
def fp32_product(a_rows, b_cols, k, stride_ak, stride_bk, row_in, col_in):
    """fl32(a[:, k] * b[k, :]) over one tile: the outer product of a column of a and a row of b (0 outside)."""
    a = tl.load(a_rows + k * stride_ak, mask=row_in, other=0.0)
    b = tl.load(b_cols + k * stride_bk, mask=col_in, other=0.0)
    return a[:, None] * b[None, :]


@triton.jit
def lp_dot_tile(a_rows, b_cols, K, stride_ak, stride_bk, row_in, col_in, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_SUM: tl.constexpr, WITH_FP32: tl.constexpr,
                FMT_DROPPED: tl.constexpr, FMT_FULL: tl.constexpr, FMT_MIN_EXP: tl.constexpr,
                FMT_OVERFLOW: tl.constexpr, FMT_OVERFLOW_TO: tl.constexpr):
    """(the rounded accumulator, the plain FP32 sum) of one (BLOCK_M, BLOCK_N) output tile over k = 0..K-1.

    a_rows / b_cols: pointers to a[rows, 0] and b[0, cols]. BLOCK_SUM = block_k. WITH_FP32: also sum the products
    (strict) or the block sums (blocked) in FP32; otherwise the second result stays zero."""
    # tl.full, not tl.zeros: zeros is a @jit function of triton.language.standard, which the interpreter fails to
    # call once inductor has run in the same process (tests/test_triton_kernels.py after a torch.compile test)
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    acc32 = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    if BLOCK_SUM == 1:
        for k in range(0, K):
            product = fp32_product(a_rows, b_cols, k, stride_ak, stride_bk, row_in, col_in)
            acc = round_to_format(acc + product, FMT_DROPPED, FMT_FULL, FMT_MIN_EXP, FMT_OVERFLOW, FMT_OVERFLOW_TO)
            if WITH_FP32:
                acc32 = acc32 + product
    else:
        for k0 in range(0, K, BLOCK_SUM):
            # from +0, as the reference sums (so a block of -0 products sums to +0)
            block_sum = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
            for k in range(k0, tl.minimum(k0 + BLOCK_SUM, K)):
                block_sum = block_sum + fp32_product(a_rows, b_cols, k, stride_ak, stride_bk, row_in, col_in)
            acc = round_to_format(acc + block_sum, FMT_DROPPED, FMT_FULL, FMT_MIN_EXP, FMT_OVERFLOW, FMT_OVERFLOW_TO)
            if WITH_FP32:
                acc32 = acc32 + block_sum
    return acc, acc32


@triton.jit
def tile_pointers(a_ptr, b_ptr, M, N, stride_ab, stride_am, stride_bb, stride_bn, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr):
    """This program's tile: (rows, cols, a_rows, b_cols, row_in, col_in) for program ids (m tile, n tile, batch)."""
    batch = tl.program_id(2).to(tl.int64)  # batch offsets in 64 bits: large batches of large matrices
    # rows and columns in 64 bits too: rows * N passes 2^31 at T x 49152 logits from T = 43k
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = (tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    a_rows = a_ptr + batch * stride_ab + rows * stride_am
    b_cols = b_ptr + batch * stride_bb + cols * stride_bn
    return rows, cols, a_rows, b_cols, rows < M, cols < N


@triton.jit
def _lp_matmul_kernel(a_ptr, b_ptr, out_ptr, bias_ptr, scale, M, N, K, stride_ab, stride_am, stride_ak, stride_bb,
                      stride_bk, stride_bn, stride_bias, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_SUM: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr,
                      FMT_DROPPED: tl.constexpr, FMT_FULL: tl.constexpr, FMT_MIN_EXP: tl.constexpr,
                      FMT_OVERFLOW: tl.constexpr, FMT_OVERFLOW_TO: tl.constexpr):
    rows, cols, a_rows, b_cols, row_in, col_in = tile_pointers(a_ptr, b_ptr, M, N, stride_ab, stride_am, stride_bb,
                                                               stride_bn, BLOCK_M, BLOCK_N)
    acc, _ = lp_dot_tile(a_rows, b_cols, K, stride_ak, stride_bk, row_in, col_in, BLOCK_M, BLOCK_N, BLOCK_SUM, False,
                         FMT_DROPPED, FMT_FULL, FMT_MIN_EXP, FMT_OVERFLOW, FMT_OVERFLOW_TO)
    if HAS_SCALE:  # the producer's output, in registers: RN(fl32(fl32(acc * scale) + bias))
        acc = acc * scale
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + cols * stride_bias, mask=col_in, other=0.0)[None, :]
    if HAS_SCALE or HAS_BIAS:
        acc = round_to_format(acc, FMT_DROPPED, FMT_FULL, FMT_MIN_EXP, FMT_OVERFLOW, FMT_OVERFLOW_TO)
    out = out_ptr + tl.program_id(2).to(tl.int64) * M * N + rows[:, None] * N + cols[None, :]
    tl.store(out, acc, mask=row_in[:, None] & col_in[None, :])


def tile_shape(rows: int, cols: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N): powers of two from 16 to 64, no larger than the output needs."""
    def fit(n: int) -> int:
        return min(64, max(16, 1 << (max(n, 1) - 1).bit_length()))
    return fit(rows), fit(cols)


def check_operands(a, b, block_k: int) -> None:
    """a (B, M, K) and b (B, K, N) float32 on one device, batch sizes equal or one of them 1; block_k an int >= 1."""
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.dim() != 3:
            raise TypeError(f"{name} must be a 3-d float32 tensor (batch, rows, cols), got "
                            f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
    if a.shape[2] != b.shape[1]:
        raise ValueError(f"inner dimensions differ: a {tuple(a.shape)}, b {tuple(b.shape)}")
    if a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0]):
        raise ValueError(f"batch sizes differ: a {tuple(a.shape)}, b {tuple(b.shape)}")
    if a.device != b.device:
        raise ValueError(f"a is on {a.device}, b on {b.device}")
    if isinstance(block_k, bool) or not isinstance(block_k, int) or block_k < 1:
        raise ValueError(f"block_k must be an int >= 1, got {block_k!r}")


def batch_strides(a, b) -> tuple[int, int, int]:
    """(batch, a's batch stride, b's batch stride): 0 for an operand of batch 1 that the other broadcasts over."""
    batch = max(a.shape[0], b.shape[0])
    return batch, (a.stride(0) if a.shape[0] > 1 else 0), (b.stride(0) if b.shape[0] > 1 else 0)


def launch_batches(batch: int):
    """Yield (first, last) batch slices of at most MAX_GRID_Z: one launch each."""
    for first in range(0, batch, MAX_GRID_Z):
        yield first, min(first + MAX_GRID_Z, batch)


def triton_lp_matmul(a, b, fmt: Format | str, block_k: int = 1, *, scale: float | None = None, bias=None,
                     num_warps: int = 4):
    """lp_matmul(a, b, fmt, block_k) by the Triton kernel: a (B, M, K), b (B, K, N) float32 with any strides (a batch
    of 1 broadcasts; expanded, stride-0 dimensions are read in place), on a CUDA device or under TRITON_INTERPRET=1.
    Returns (B, M, N) float32, contiguous. Inputs are not rounded; NaN inputs need no canonicalising (the rounding
    replaces every NaN by the quiet NaN). An identity format (fp32, m23) runs torch.matmul, as lp_matmul does.

    scale (a float, used as float32 as torch's `tensor * scale`) and bias ((N,) float32): the producer's output
    RN(fl32(fl32(acc * scale) + bias)) instead of the accumulator, applied before the store (lampc.numerics
    lp_product: `round_to(lp_matmul(a, b) * scale + bias, fmt)`); either may be None (no multiply, no add)."""
    fmt = parse(fmt)
    check_operands(a, b, block_k)
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.dtype != torch.float32
                             or bias.shape != (b.shape[2],) or bias.device != a.device):
        raise ValueError(f"bias must be a ({b.shape[2]},) float32 tensor on {a.device}, got "
                         f"{getattr(bias, 'dtype', type(bias).__name__)} {tuple(getattr(bias, 'shape', ()))}")
    if fmt.is_identity:
        out = torch.matmul(a, b)
        out = out * scale if scale is not None else out
        return (out + bias if bias is not None else out).contiguous()
    batch, stride_ab, stride_bb = batch_strides(a, b)
    rows, inner, cols = a.shape[1], a.shape[2], b.shape[2]
    out = torch.empty(batch, rows, cols, dtype=torch.float32, device=a.device)
    if out.numel() == 0:
        return out
    block_m, block_n = tile_shape(rows, cols)
    for first, last in launch_batches(batch):
        grid = (cdiv(rows, block_m), cdiv(cols, block_n), last - first)
        _lp_matmul_kernel[grid](
            a[first:last] if a.shape[0] > 1 else a, b[first:last] if b.shape[0] > 1 else b, out[first:last],
            out if bias is None else bias, 1.0 if scale is None else float(scale),
            rows, cols, inner, stride_ab, a.stride(1), a.stride(2), stride_bb, b.stride(1), b.stride(2),
            0 if bias is None else bias.stride(0),
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_SUM=block_k, HAS_SCALE=scale is not None,
            HAS_BIAS=bias is not None, **rounding_constants(fmt), num_warps=num_warps, **NO_FMA)
    return out
