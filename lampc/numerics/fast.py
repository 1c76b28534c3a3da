"""The fast low-precision accumulator: the op `lampc::lp_matmul`, one kernel per device behind one switch.

    lp_matmul(a, b, fmt, block_k, impl="fast")  ->  torch.ops.lampc.lp_matmul(a3, b3, "m4", 1, False, None, None)
    lp_product(a, b, fmt, block_k, scale=, bias=)  ->  the same op with output=True, scale, bias
        cpu:   the C kernel (lampc/kernels/cpu_lp_matmul.c), built once per machine and cached
        cuda:  the Triton kernel (lampc/kernels/triton_lp_matmul.py), registered through torch.library
        a kernel that cannot be had: the reference (lampc/numerics/accumulate_reference.py), with one warning that
        says why and what it costs; other devices: the reference

The CPU and CUDA kernels give the reference's bits (the same float32 operations in the same order, strict and
blocked). tests/test_fast_lp_matmul.py and tests/test_triton_kernels.py check them.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import Tensor

from lampc.formats import Format, parse
from lampc.kernels import cpu as cpu_kernel
from lampc.numerics.accumulate_reference import (
    reference_lp_matmul,
    reference_lp_product,
)

REFERENCE_COST = ("the eager reference runs instead, about 20-40x an FP32 matmul at strict m4 (the C kernel: "
                  "1.5-3.2x)")
_warned: set[str] = set()


def fast_lp_matmul(a: Tensor, b: Tensor, fmt: Format, block_k: int, rounding: str = "nearest") -> Tensor:
    """a (B, M, K) @ b (B, K, N), the accumulator rounded to fmt, on a's device."""
    return torch.ops.lampc.lp_matmul(a, b, fmt.name, block_k, False, None, None, rounding)


def fast_lp_product(a: Tensor, b: Tensor, fmt: Format, block_k: int, scale: float | None, bias: Tensor | None
                    ) -> Tensor:
    """RN(fl32(fl32(lp_matmul(a, b) * scale) + bias)) on a's device (accumulate.lp_product)."""
    return torch.ops.lampc.lp_matmul(a, b, fmt.name, block_k, True, scale, bias)


@torch.library.custom_op("lampc::lp_matmul", mutates_args=())
def lp_matmul_op(a: Tensor, b: Tensor, format: str, block_k: int, output: bool, scale: Optional[float],
                 bias: Optional[Tensor], rounding: str = "nearest") -> Tensor:
    """The low-precision accumulator on batched operands, and with output=True the producer's output
    RN(acc * scale + bias); this body serves devices without a kernel."""
    return _reference(a, b, parse(format), block_k, output, scale, bias, rounding)


@lp_matmul_op.register_fake
def _(a, b, format, block_k, output, scale, bias, rounding="nearest"):
    return a.new_empty(a.shape[0], a.shape[1], b.shape[2])


@lp_matmul_op.register_kernel("cpu")
def _cpu(a: Tensor, b: Tensor, format: str, block_k: int, output: bool, scale: Optional[float],
         bias: Optional[Tensor], rounding: str = "nearest") -> Tensor:
    _check_batched(a, b, bias)
    fmt = parse(format)
    reason = cpu_kernel.available()
    if reason is not None:
        warn_once(f"lp_matmul: the C kernel is unavailable ({reason}); {REFERENCE_COST}")
        return _reference(a, b, fmt, block_k, output, scale, bias, rounding)
    if bias is not None:
        bias = bias.contiguous()
    # canonicalises NaNs as it reads the operands
    return cpu_kernel.accumulate(a, b, fmt, block_k, output=output, scale=scale, bias=bias, rounding=rounding)


@lp_matmul_op.register_kernel("cuda")
def _cuda(a: Tensor, b: Tensor, format: str, block_k: int, output: bool, scale: Optional[float],
          bias: Optional[Tensor], rounding: str = "nearest") -> Tensor:
    fmt = parse(format)
    if rounding != "nearest":  # the Triton kernel rounds to nearest only: the reference's ops run on the GPU
        return _reference(a, b, fmt, block_k, output, scale, bias, rounding)
    try:
        from lampc.kernels.triton_lp_matmul import triton_lp_matmul
    except ImportError as err:
        warn_once(f"lp_matmul: Triton is not installed ({err}; pip install 'lampc[gpu]'); "
                  "the eager reference runs on the GPU instead, one elementwise pass per k")
        return _reference(a, b, fmt, block_k, output, scale, bias)
    # the kernel canonicalises NaNs itself and applies scale and bias in registers before the store
    try:
        if not output:
            return triton_lp_matmul(a, b, fmt, block_k)
        return triton_lp_matmul(a, b, fmt, block_k, scale=scale, bias=bias)
    except Exception as err:  # noqa: BLE001 (a GPU or toolchain Triton cannot compile for: the same bits, slower)
        warn_once(f"lp_matmul: the Triton kernel failed on {a.device} ({type(err).__name__}: {err}); the eager "
                  "reference runs on the GPU instead, one elementwise pass per k")
        return _reference(a, b, fmt, block_k, output, scale, bias)


def _check_batched(a: Tensor, b: Tensor, bias: Optional[Tensor]) -> None:
    """What the C kernel assumes of the op's arguments (lp_matmul and lp_product prepare them): float32 tensors
    on the CPU, a (B, M, K) and b (B, K, N) with the same B and K, bias (N,)."""
    tensors = {"a": a, "b": b, **({"bias": bias} if bias is not None else {})}
    for name, t in tensors.items():
        if t.dtype != torch.float32 or t.device.type != "cpu":
            raise TypeError(f"lampc::lp_matmul: {name} must be a float32 CPU tensor, got {t.dtype} on {t.device}")
    if a.dim() != 3 or b.dim() != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[1]:
        raise ValueError(f"lampc::lp_matmul: a (B, M, K) and b (B, K, N) expected, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if bias is not None and tuple(bias.shape) != (b.shape[2],):
        raise ValueError(f"lampc::lp_matmul: bias must have shape ({b.shape[2]},), got {tuple(bias.shape)}")


def _reference(a, b, fmt, block_k, output, scale, bias, rounding="nearest"):
    if output:
        return reference_lp_product(a, b, fmt, block_k, scale, bias)
    return reference_lp_matmul(a, b, fmt, block_k, rounding)


def warn_once(message: str) -> None:
    """One warning per distinct message per process (a model calls the op at every site of every forward)."""
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)
