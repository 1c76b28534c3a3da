"""The C kernel of the sparse FP32 recompute (cpu_recompute.c), called on torch tensors.

    sparse_dot_(out, flat, q, k_t, scale, bias)   out.view(-1)[flat] = (q @ k_t)[flat] * scale (+ bias), in place
    true_positions(mask)                          mask.reshape(-1).nonzero().squeeze(1), for a contiguous bool mask

Why: a recompute touches 0.3-1% of a site's entries, and in torch each one is a gathered row of q and column of
k_t (advanced indexing writes two (N, D) temporaries) before a 64-wide dot product: the cost is in the gathers.
The kernel reads q and k_t in place through their strides (broadcast batch dimensions with stride 0, GQA expanded
views, a transposed weight) and writes each value straight into out.

Summation order (cpu_recompute.c's header): 16 lanes, lane j summing the products of d = j, j + 16, ... in
increasing d, then the lanes pairwise (8, 4, 2, 1); products and sums are separate FP32 roundings, no FMA. The
result does not depend on the operands' strides, the number of threads or the CPU's vector width.
lampc/lookahead/recompute.py keeps the torch code beside it as the reference (another FP32 summation order).

The entries are split into ranges run on torch.get_num_threads() threads (cpu.py's pool; ctypes releases the GIL);
each range writes its own positions, so the result does not depend on the thread count. The caller checks that
the tensors suit (`suits`); this module assumes float32 CPU tensors and int64 positions.
"""

from __future__ import annotations

import ctypes
import functools

import torch
from torch import Tensor

from . import cpu, cpu_build
from .cpu import _run_all, _threads

MIN_TERMS_PER_TASK = 1 << 16
"""Multiply-adds below which a range of entries is not split further (a task costs a few microseconds)."""

PARALLEL_SCAN_BYTES = 1 << 22
"""Mask size from which the scan is split across threads (below it one thread reads it in microseconds)."""


def available() -> str | None:
    """None when the kernel is built and loads here, else why not: cpu.available()'s answer (one library holds
    every kernel of this folder), asked once per process."""
    reason = cpu.available()
    if reason is None:
        _library()  # cached once it loads
    return reason


def suits(out: Tensor, q: Tensor, k_t: Tensor, bias: Tensor | None = None) -> bool:
    """Whether sparse_dot_ takes these tensors: float32 on the CPU, out contiguous, q (…, T, D) and k_t (…, D, L)
    broadcasting to out (…, T, L) as in torch.matmul, bias (L,) if any."""
    tensors = [out, q, k_t] + ([bias] if bias is not None else [])
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    if out.dim() < 2 or q.dim() < 2 or k_t.dim() < 2 or not out.is_contiguous():
        return False
    if q.shape[-1] != k_t.shape[-2]:
        return False
    if q.shape[-2] not in (1, out.shape[-2]) or k_t.shape[-1] not in (1, out.shape[-1]):
        return False
    if bias is not None and (bias.dim() != 1 or bias.shape[0] not in (1, out.shape[-1])):
        return False
    return all(_aligned(t, out) is not None for t in (q, k_t))


def sparse_dot_(out: Tensor, flat: Tensor, q: Tensor, k_t: Tensor, scale: float,
                bias: Tensor | None = None) -> Tensor:
    """out.view(-1)[flat] = FP32 (q @ k_t) * scale (+ bias) at those positions, in place; returns out.

    flat: int64 positions in out.view(-1), in any order (a repeated position is written again, same value)."""
    flat = flat.to(torch.int64).contiguous()
    count = flat.numel()
    if count == 0:
        return out
    rows, keys, depth = out.shape[-2], out.shape[-1], q.shape[-1]
    sizes = out.shape[:-2]
    q_batch, k_batch = _aligned(q, out), _aligned(k_t, out)
    array = ctypes.c_int64 * max(1, len(sizes))
    sizes_c, q_batch_c, k_batch_c = array(*sizes), array(*q_batch), array(*k_batch)
    q_row = q.stride(-2) if q.shape[-2] != 1 else 0
    k_key = k_t.stride(-1) if k_t.shape[-1] != 1 else 0
    bias_ptr = ctypes.c_void_p(bias.data_ptr()) if bias is not None else None
    bias_stride = (bias.stride(0) if bias.shape[0] != 1 else 0) if bias is not None else 0
    kernel = _library().lampc_recompute_sparse
    out_ptr, flat_ptr, q_ptr, k_ptr = out.data_ptr(), flat.data_ptr(), q.data_ptr(), k_t.data_ptr()
    skipped = []

    def run(start_end):
        start, end = start_end
        skipped.append(kernel(
            ctypes.c_void_p(out_ptr), ctypes.c_void_p(flat_ptr + 8 * start), end - start,
            ctypes.c_void_p(q_ptr), ctypes.c_void_p(k_ptr), bias_ptr, len(sizes), sizes_c, q_batch_c, k_batch_c,
            rows, keys, depth, q_row, q.stride(-1), k_t.stride(-2), k_key, bias_stride, scale,
        ))

    parts = max(1, min(4 * _threads(), count * max(depth, 1) // MIN_TERMS_PER_TASK)) if _threads() > 1 else 1
    step = -(-count // parts)
    _run_all(run, [(start, min(count, start + step)) for start in range(0, count, step)])
    if sum(skipped):
        raise IndexError(f"sparse_dot_: {sum(skipped)} of {count} positions lie outside the output "
                         f"of {out.numel()} entries")
    return out


def true_positions(mask: Tensor) -> Tensor:
    """The flat positions of the true entries of a contiguous CPU bool mask, increasing (int64): what
    mask.reshape(-1).nonzero().squeeze(1) returns, in one counting pass and one writing pass over the bytes."""
    if mask.dtype != torch.bool or mask.device.type != "cpu" or not mask.is_contiguous():
        raise ValueError("true_positions: a contiguous CPU bool mask")
    lib = _library()
    total, base = mask.numel(), mask.data_ptr()
    parts = max(1, min(_threads(), total // PARALLEL_SCAN_BYTES))
    step = -(-total // parts) if total else 0
    ranges = [(start, min(total, start + step)) for start in range(0, total, step)] if total else []
    counts = [0] * len(ranges)

    def count(index):
        start, end = ranges[index]
        counts[index] = lib.lampc_true_count(ctypes.c_void_p(base), start, end)

    _run_all(count, range(len(ranges)))
    positions = torch.empty(sum(counts), dtype=torch.int64)
    offsets = [sum(counts[:index]) for index in range(len(ranges))]
    pointer = positions.data_ptr()

    def write(index):
        start, end = ranges[index]
        lib.lampc_true_positions(ctypes.c_void_p(base), start, end, ctypes.c_void_p(pointer + 8 * offsets[index]))

    _run_all(write, range(len(ranges)))
    return positions


def _aligned(operand: Tensor, out: Tensor) -> list[int] | None:
    """The operand's strides along out's batch dimensions (0 where it broadcasts or lacks one); None when its
    batch shape does not broadcast to out's."""
    lead = out.dim() - operand.dim()
    if lead < 0:
        return None
    strides = []
    for d, size in enumerate(out.shape[:-2]):
        if d < lead:
            strides.append(0)
            continue
        own = operand.shape[d - lead]
        if own not in (1, size):
            return None
        strides.append(operand.stride(d - lead) if own != 1 else 0)
    return strides


@functools.cache
def _library() -> ctypes.CDLL:
    lib = cpu_build.load()
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    i64s = ctypes.POINTER(ctypes.c_int64)
    lib.lampc_recompute_sparse.argtypes = [ptr, ptr, i64, ptr, ptr, ptr, i64, i64s, i64s, i64s,
                                           i64, i64, i64, i64, i64, i64, i64, i64, ctypes.c_float]
    lib.lampc_recompute_sparse.restype = i64
    lib.lampc_true_count.argtypes = [ptr, i64, i64]
    lib.lampc_true_count.restype = i64
    lib.lampc_true_positions.argtypes = [ptr, i64, i64, ptr]
    lib.lampc_true_positions.restype = i64
    return lib
