"""Matmuls with a low-precision accumulator (emulated) and with a native low-precision dtype.

`lp_matmul` follows docs/METHOD.md §2: inputs stay float32, only the running sum is rounded.

    strict  (block_k = 1):  acc = RN(fl32(acc + fl32(a_k * b_k)))           k = 1..K in order, acc0 = +0
    blocked (block_k = b):  acc = RN(fl32(acc + S_j)),  S_j = fl32(... fl32(+0 + p_1) ... + p_b), p = fl32(a_k * b_k)

The block sums are sequential FP32 sums in k order, so strict and blocked results are both bit-exact everywhere
(no FMA: every product and every sum is a separate float32 operation; docs/NUMERICS.md §3).

Two implementations give the same bits (tests/test_fast_lp_matmul.py):

    impl="eager"  the readable reference (accumulate_reference.py): tiled torch ops, one elementwise pass per k (20-40x FP32)
    impl="fast"   the default: the op lampc::lp_matmul (lampc/numerics/fast.py), a C kernel on the CPU
                  (lampc/kernels/cpu_lp_matmul.c, 1.5-3.2x FP32 at strict m4) and Triton on CUDA
"""

from __future__ import annotations

import math
import os

import torch

from lampc.formats import ACCUMULATOR_ROUNDINGS as ROUNDINGS, Format, parse
from lampc.numerics.accumulate_reference import reference_lp_matmul, reference_lp_product
from lampc.numerics.fast import fast_lp_matmul, fast_lp_product

IMPLS = ("fast", "eager")
DEFAULT_IMPL = os.environ.get("LAMPC_LP_MATMUL_IMPL", "fast")


def lp_matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    fmt: Format | str,
    block_k: int = 1,
    *,
    rounding: str = "nearest",
    flush_every: int | None = None,
    impl: str | None = None,
) -> torch.Tensor:
    """`a @ b` (torch.matmul broadcasting) with the accumulator rounded to `fmt` (docs/METHOD.md §2).

    a: (..., M, K) float32, b: (..., K, N) float32 -> (..., M, N) float32. Inputs are not rounded.
    block_k = 1 is strict accumulation; block_k > 1 rounds after every FP32 block of block_k terms.
    An identity format (fp32, m23) runs plain torch.matmul.

    impl: "fast" (the op lampc::lp_matmul: the C kernel on the CPU, Triton on CUDA; where neither can run,
    the reference with one warning saying why) or "eager" (the readable reference, accumulate_reference.py). Default:
    $LAMPC_LP_MATMUL_IMPL or "fast". Both give the same bits.

    rounding: "nearest" (ties to even) or "toward_zero" (truncation, as a tensor core's accumulator that keeps m
    bits: FP22 is m13 toward zero; formats with FP32's exponent range only).
    flush_every: n > 0 for the two-level accumulation of production FP8 kernels: the low-precision accumulator runs
    over chunks of n x block_k terms, each starting at +0, and each chunk's result is added into an FP32
    accumulator (acc32 = fl32(acc32 + chunk), from +0): the result is FP32, not rounded to fmt. None: one chunk.
    """
    fmt, impl = _checked(a, b, fmt, block_k, impl)
    _check_rounding(rounding, fmt)
    _check_flush_every(flush_every)
    if fmt.is_identity:
        return torch.matmul(a, b)
    a3, b3, out_shape = _as_batched(a, b)  # (B, M, K), (B, K, N)

    def accumulate(a_part, b_part):
        if impl == "fast":
            return fast_lp_matmul(a_part, b_part, fmt, block_k, rounding)
        return reference_lp_matmul(a_part, b_part, fmt, block_k, rounding)

    if flush_every is None:
        out = accumulate(a3, b3)
    else:
        chunk = flush_every * block_k
        out = torch.zeros(a3.shape[0], a3.shape[1], b3.shape[2], dtype=torch.float32, device=a3.device)
        for k0 in range(0, a3.shape[2], chunk):  # acc32 = fl32(acc32 + chunk result), from +0
            out = out + accumulate(a3[:, :, k0 : k0 + chunk], b3[:, k0 : k0 + chunk])
    return out.reshape(out_shape)


def lp_product(
    a: torch.Tensor,
    b: torch.Tensor,
    fmt: Format | str,
    block_k: int = 1,
    *,
    scale: float | None = None,
    bias: torch.Tensor | None = None,
    impl: str | None = None,
) -> torch.Tensor:
    """An emulated producer's output: RN(fl32(fl32(lp_matmul(a, b) * scale) + bias)), rounded to `fmt` once more
    after the scale (attention scores, METHOD.md §2) or the bias (a linear layer). scale None: no multiply; bias:
    (N,) float32 or None. The fast kernel applies both in registers before the store; the reference is
    `round_to(lp_matmul(...) * scale + bias, fmt)`, and both give the same bits."""
    fmt, impl = _checked(a, b, fmt, block_k, impl)
    a3, b3, out_shape = _as_batched(a, b)
    if bias is not None:
        _check_operand("bias", bias)
        if bias.dim() != 1 or bias.shape[0] != b3.shape[-1]:
            raise ValueError(f"bias must have shape ({b3.shape[-1]},) (the output's columns), got {tuple(bias.shape)}")
    if fmt.is_identity:
        out = torch.matmul(a, b)
        out = out * scale if scale is not None else out
        return out + bias if bias is not None else out
    if impl == "fast":
        out = fast_lp_product(a3, b3, fmt, block_k, scale, bias)
    else:
        out = reference_lp_product(a3, b3, fmt, block_k, scale, bias)
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


# -- shapes and checks --------------------------------------------------------------------------


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
    count = math.prod(batch_shape)  # not -1: a zero-size matrix leaves -1 ambiguous
    a3 = a2.expand(*batch_shape, rows, inner).reshape(count, rows, inner)
    b3 = b2.expand(*batch_shape, inner, cols).reshape(count, inner, cols)
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


def _checked(a, b, fmt, block_k, impl) -> tuple[Format, str]:
    """(the format, the implementation) of an lp_matmul / lp_product call, its arguments checked by name."""
    fmt = _parse_fmt(fmt)
    _check_operand("a", a)
    _check_operand("b", b)
    _check_block_k(block_k)
    return fmt, _check_impl(impl)


def _check_rounding(rounding: object, fmt: Format) -> None:
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if rounding == "toward_zero" and not fmt.has_fp32_range:
        raise ValueError(f"rounding='toward_zero' needs a format with FP32's exponent range (m1..m23, bf16, tf32), "
                         f"got fmt {fmt.name!r}")


def _check_flush_every(flush_every: object) -> None:
    if flush_every is None:
        return
    if isinstance(flush_every, bool) or not isinstance(flush_every, int):
        raise TypeError(f"flush_every must be an int >= 1 or None, got {flush_every!r}")
    if flush_every < 1:
        raise ValueError(f"flush_every must be >= 1 (terms per chunk: flush_every x block_k), got {flush_every}")


def _check_impl(impl: object) -> str:
    if impl is None:
        if DEFAULT_IMPL not in IMPLS:
            raise ValueError(f"$LAMPC_LP_MATMUL_IMPL must be one of {IMPLS}, got {DEFAULT_IMPL!r}"
                             + (" (impl='compiled' is gone: 'fast' is faster)" if DEFAULT_IMPL == "compiled" else ""))
        return DEFAULT_IMPL
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


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
