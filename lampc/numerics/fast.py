"""The fast low-precision accumulator: the op `lampc::lp_matmul`, one kernel per device behind one switch.

    lp_matmul(a, b, fmt, block_k, impl="fast")  ->  torch.ops.lampc.lp_matmul(a3, b3, "m4", 1)
        cpu:   the C kernel (lampc/kernels/cpu_lp_matmul.c), built once per machine and cached
        cuda:  the Triton kernel (lampc/kernels/triton_lp_matmul.py), registered through torch.library
        other devices, or a kernel that cannot be had: the reference (lampc/numerics/accumulate_reference.py), with one
        warning that says why and what it costs

The CPU kernel gives the reference's bits (strict: the same float32 operations in the same order; blocked: the
same BLAS block sums, then the C step acc = RN(acc + S_j)). tests/test_fast_lp_matmul.py checks both.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import Tensor

from lampc.formats import Format, parse
from lampc.kernels import cpu as cpu_kernel
from lampc.numerics.accumulate_reference import (
    blocked,
    canonical_nans,
    output_epilogue,
    reference_lp_matmul,
    reference_lp_product,
)

REFERENCE_COST = "the eager reference runs instead, about 20-40x an FP32 matmul (the C kernel: 1.3-2x)"
_warned: set[str] = set()


def fast_lp_matmul(a: Tensor, b: Tensor, fmt: Format, block_k: int) -> Tensor:
    """a (B, M, K) @ b (B, K, N), the accumulator rounded to fmt, on a's device."""
    return torch.ops.lampc.lp_matmul(a, b, fmt.name, block_k, False, None, None)


def fast_lp_product(a: Tensor, b: Tensor, fmt: Format, block_k: int, scale: float | None, bias: Tensor | None
                    ) -> Tensor:
    """RN(fl32(fl32(lp_matmul(a, b) * scale) + bias)) on a's device (accumulate.lp_product)."""
    return torch.ops.lampc.lp_matmul(a, b, fmt.name, block_k, True, scale, bias)


@torch.library.custom_op("lampc::lp_matmul", mutates_args=())
def lp_matmul_op(a: Tensor, b: Tensor, format: str, block_k: int, output: bool, scale: Optional[float],
                 bias: Optional[Tensor]) -> Tensor:
    """The low-precision accumulator on batched operands, and with output=True the producer's output
    RN(acc * scale + bias); this body serves devices without a kernel."""
    return _reference(a, b, parse(format), block_k, output, scale, bias)


@lp_matmul_op.register_fake
def _(a, b, format, block_k, output, scale, bias):
    return a.new_empty(a.shape[0], a.shape[1], b.shape[2])


@lp_matmul_op.register_kernel("cpu")
def _cpu(a: Tensor, b: Tensor, format: str, block_k: int, output: bool, scale: Optional[float],
         bias: Optional[Tensor]) -> Tensor:
    fmt = parse(format)
    reason = cpu_kernel.available()
    if reason is not None:
        warn_once(f"lp_matmul: the C kernel is unavailable ({reason}); {REFERENCE_COST}")
        return _reference(a, b, fmt, block_k, output, scale, bias)
    if block_k > 1:
        acc = blocked(canonical_nans(a), canonical_nans(b), fmt, block_k, cpu_kernel.add_round_)
        return output_epilogue(acc, fmt, scale, bias) if output else acc
    if bias is not None:
        bias = bias.contiguous()
    # canonicalises NaNs as it reads the operands
    return cpu_kernel.strict_matmul(a, b, fmt, output=output, scale=scale, bias=bias)


@lp_matmul_op.register_kernel("cuda")
def _cuda(a: Tensor, b: Tensor, format: str, block_k: int, output: bool, scale: Optional[float],
          bias: Optional[Tensor]) -> Tensor:
    fmt = parse(format)
    try:
        from lampc.kernels.triton_lp_matmul import triton_lp_matmul
    except ImportError as err:
        warn_once(f"lp_matmul: Triton is not installed ({err}; pip install 'lampc[gpu]'); "
                  "the eager reference runs on the GPU instead, one elementwise pass per k")
        return _reference(a, b, fmt, block_k, output, scale, bias)
    # the kernel canonicalises NaNs itself and applies scale and bias in registers before the store
    if not output:
        return triton_lp_matmul(a, b, fmt, block_k)
    return triton_lp_matmul(a, b, fmt, block_k, scale=scale, bias=bias)


def _reference(a, b, fmt, block_k, output, scale, bias):
    if output:
        return reference_lp_product(a, b, fmt, block_k, scale, bias)
    return reference_lp_matmul(a, b, fmt, block_k)


def warn_once(message: str) -> None:
    """One warning per distinct message per process (a model calls the op at every site of every forward)."""
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)
