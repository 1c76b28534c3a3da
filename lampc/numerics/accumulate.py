"""Matmuls with a low-precision accumulator (emulated) and with a native low-precision dtype.

`lp_matmul` follows docs/METHOD.md §2: inputs stay float32, only the running sum is rounded.

    strict  (block_k = 1):  acc = RN(fl32(acc + fl32(a_k * b_k)))           k = 1..K in order, acc0 = +0
    blocked (block_k = b):  acc = RN(fl32(acc + S_j)),  S_j = FP32 dot of block j (b terms, last shorter)

The block sums `S_j` come from `torch.matmul` on the K-slice, so their internal order (and FMA use) is the
BLAS library's: blocked results are reproducible on one machine but only within FP32 rounding of each
block sum across machines (docs/NUMERICS.md). Strict results are bit-exact everywhere (no FMA: the
product and the sum are separate float32 ops).
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

from lampc.formats import Format, parse
from lampc.numerics.rounding import (
    _has_fp32_exponent_range,
    dropped_mantissa_bits,
    round_mantissa_bits_,
    round_to_,
)

# Elements of the accumulator tile processed per elementwise op: large enough to amortise the
# per-op overhead, small enough that the tile and its scratch (2 x 1 MiB) stay in L2.
TILE_ELEMENTS = 256 * 1024

# Strict steps fused into one torch.compile'd kernel (impl="compiled").
COMPILED_CHUNK = 16

IMPLS = ("eager", "compiled")
DEFAULT_IMPL = os.environ.get("LAMPC_LP_MATMUL_IMPL", "eager")


def lp_matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    fmt: Format | str,
    block_k: int = 1,
    *,
    impl: str | None = None,
) -> torch.Tensor:
    """`a @ b` (torch.matmul broadcasting) with the accumulator rounded to `fmt` (docs/METHOD.md §2).

    a: (..., M, K) float32, b: (..., K, N) float32 -> (..., M, N) float32. Inputs are not rounded.
    block_k = 1 is strict accumulation; block_k > 1 rounds after every FP32 block of block_k terms.
    An identity format (fp32, m23) runs plain torch.matmul.

    impl: "eager" (tiled torch ops) or "compiled" (strict mode with an FP32-range format only:
    COMPILED_CHUNK steps fused by torch.compile, one compile per shape, cached by inductor; falls
    back to eager with a warning if compiling fails). Default: $LAMPC_LP_MATMUL_IMPL or "eager".
    Both give bit-identical results.
    """
    fmt = _parse_fmt(fmt)
    _check_operand("a", a)
    _check_operand("b", b)
    _check_block_k(block_k)
    impl = DEFAULT_IMPL if impl is None else impl
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if fmt.is_identity:
        return torch.matmul(a, b)
    a3, b3, out_shape = _as_batched(a, b)  # (B, M, K), (B, K, N)
    a3, b3 = _canonical_nans(a3), _canonical_nans(b3)
    if block_k > 1:
        out = _blocked(a3, b3, fmt, block_k)
    elif impl == "compiled" and _has_fp32_exponent_range(fmt):
        out = _strict_compiled(a3, b3, fmt)
    else:
        out = _strict(a3, b3, fmt)
    return out.reshape(out_shape)


def native_matmul(a: torch.Tensor, b: torch.Tensor, fmt: Format | str) -> torch.Tensor:
    """Run `a @ b` in fmt's torch dtype: inputs rounded to it, FP32 accumulation inside the kernel
    (CPU bf16/fp16 GEMMs accumulate in FP32), the output rounded to the dtype, then cast to float32."""
    fmt = _parse_fmt(fmt)
    _check_operand("a", a)
    _check_operand("b", b)
    if fmt.torch_dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(
            f"fmt {fmt.name!r} has no native matmul (needs torch dtype float32, bfloat16 or float16); "
            "use lp_matmul to emulate it"
        )
    _as_batched(a, b)  # shape check with named arguments
    dtype = fmt.torch_dtype
    return torch.matmul(a.to(dtype), b.to(dtype)).to(torch.float32)


# -- strict accumulation ------------------------------------------------------------------------


def _strict(a: torch.Tensor, b: torch.Tensor, fmt: Format) -> torch.Tensor:
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
            _round_accumulator_(acc, fmt)
    return out


def _strict_compiled(a: torch.Tensor, b: torch.Tensor, fmt: Format) -> torch.Tensor:
    """Strict accumulation, COMPILED_CHUNK steps per fused kernel call, over the same cache-sized
    tiles as `_strict` (a ragged last tile costs one more compile); the K remainder runs eagerly."""
    batch, rows, inner = a.shape
    cols = b.shape[-1]
    out = torch.empty(batch, rows, cols, dtype=torch.float32, device=a.device)
    chunked = inner - inner % COMPILED_CHUNK
    try:
        kernel = _compiled_strict_chunk(dropped_mantissa_bits(fmt))
        for batches, row_slice in _tiles(batch, rows, cols):
            a_tile, b_tile = a[batches, row_slice], b[batches]  # (Bt, Mt, K), (Bt, K, N)
            acc = torch.zeros_like(out[batches, row_slice])  # (Bt, Mt, N)
            for k0 in range(0, chunked, COMPILED_CHUNK):
                k1 = k0 + COMPILED_CHUNK
                acc = kernel(acc, a_tile[..., k0:k1], b_tile[:, k0:k1])
            for k in range(chunked, inner):
                acc.add_(a_tile[..., k : k + 1] * b_tile[:, k : k + 1])
                _round_accumulator_(acc, fmt)
            out[batches, row_slice] = acc
    except Exception as err:  # noqa: BLE001 (any compiler failure: fall back, results are identical)
        warnings.warn(f"lp_matmul: torch.compile failed ({err!r}); using the eager path", stacklevel=3)
        return _strict(a, b, fmt)
    return out


@functools.cache
def _compiled_strict_chunk(dropped: int):
    """A compiled function doing COMPILED_CHUNK strict steps: (acc, a chunk, b chunk) -> acc."""
    half_minus_one = (1 << (dropped - 1)) - 1
    keep_mask = -(1 << dropped)

    def strict_chunk(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # acc (B, M, N), a (B, M, C), b (B, C, N); separate mul and add: inductor does not contract
        # them into an FMA (cpp.enable_floating_point_contract_flag is off), tests check bits.
        for k in range(COMPILED_CHUNK):
            acc = acc + a[..., k : k + 1] * b[:, k : k + 1]
            bits = acc.view(torch.int32)
            bits = (bits + (((bits >> dropped) & 1) + half_minus_one)) & keep_mask
            acc = bits.view(torch.float32)
        return acc

    return torch.compile(strict_chunk, dynamic=False)


def _round_accumulator_(acc: torch.Tensor, fmt: Format) -> None:
    """RN(acc) in place; NaNs reaching here have no payload (see `_canonical_nans`)."""
    if _has_fp32_exponent_range(fmt):
        round_mantissa_bits_(acc.view(torch.int32), dropped_mantissa_bits(fmt))
    else:
        round_to_(acc, fmt)


def _canonical_nans(x: torch.Tensor) -> torch.Tensor:
    """x with every NaN replaced by the default quiet NaN, so NaNs survive in-place bit rounding."""
    nan_mask = torch.isnan(x)
    if not bool(nan_mask.any()):
        return x
    return x.masked_fill(nan_mask, float("nan"))


# -- blocked accumulation -----------------------------------------------------------------------


def _blocked(a: torch.Tensor, b: torch.Tensor, fmt: Format, block_k: int) -> torch.Tensor:
    """FP32 block sums (torch.matmul on K-slices), each added to the rounded accumulator.

    NaNs from the BLAS carry no payload bits because the inputs' NaNs were canonicalised."""
    batch, rows, inner = a.shape
    cols = b.shape[-1]
    out = torch.empty(batch, rows, cols, dtype=torch.float32, device=a.device)
    for batches, row_slice in _tiles(batch, rows, cols):
        acc = out[batches, row_slice]  # (Bt, Mt, N)
        block_sum = torch.empty_like(acc)
        acc.zero_()
        for k0 in range(0, inner, block_k):
            k1 = min(k0 + block_k, inner)
            torch.matmul(a[batches, row_slice, k0:k1], b[batches, k0:k1], out=block_sum)
            acc.add_(block_sum)
            _round_accumulator_(acc, fmt)
    return out


# -- shapes and checks --------------------------------------------------------------------------


def _tiles(batch: int, rows: int, cols: int):
    """Yield (batch slice, row slice) tiles of about TILE_ELEMENTS accumulator elements."""
    per_matrix = rows * cols
    if per_matrix <= TILE_ELEMENTS:
        step = max(1, TILE_ELEMENTS // per_matrix)
        for b0 in range(0, batch, step):
            yield slice(b0, min(b0 + step, batch)), slice(0, rows)
        return
    row_step = max(1, TILE_ELEMENTS // cols)
    for b0 in range(batch):
        for r0 in range(0, rows, row_step):
            yield slice(b0, b0 + 1), slice(r0, min(r0 + row_step, rows))


def _as_batched(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """Broadcast like torch.matmul: a (..., M, K), b (..., K, N) -> (B, M, K), (B, K, N), out shape."""
    a2 = a.unsqueeze(0) if a.dim() == 1 else a  # (K,) -> (1, K)
    b2 = b.unsqueeze(-1) if b.dim() == 1 else b  # (K,) -> (K, 1)
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(
            f"inner dimensions differ: a.shape[-1] = {a2.shape[-1]} (a: {tuple(a.shape)}) but "
            f"b.shape[-2] = {b2.shape[-2]} (b: {tuple(b.shape)})"
        )
    try:
        batch_shape = torch.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    except RuntimeError as err:
        raise ValueError(
            f"batch dimensions of a {tuple(a.shape)} and b {tuple(b.shape)} do not broadcast"
        ) from err
    rows, inner, cols = a2.shape[-2], a2.shape[-1], b2.shape[-1]
    a3 = a2.expand(*batch_shape, rows, inner).reshape(-1, rows, inner)
    b3 = b2.expand(*batch_shape, inner, cols).reshape(-1, inner, cols)
    out_shape = (*batch_shape, rows, cols)
    if a.dim() == 1:
        out_shape = out_shape[:-2] + out_shape[-1:]
    if b.dim() == 1:
        out_shape = out_shape[:-1]
    return a3, b3, out_shape


def _check_operand(name: str, x: object) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise TypeError(f"{name} must have dtype torch.float32, got {x.dtype}")
    if x.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension, got a scalar tensor")


def _check_block_k(block_k: object) -> None:
    if isinstance(block_k, bool) or not isinstance(block_k, int):
        raise TypeError(f"block_k must be an int >= 1, got {block_k!r}")
    if block_k < 1:
        raise ValueError(f"block_k must be >= 1, got {block_k}")


def _parse_fmt(fmt: object) -> Format:
    try:
        return parse(fmt)
    except (TypeError, ValueError) as err:
        raise type(err)(f"fmt: {err}") from None
