"""The C kernel of the emulated accumulator (cpu_lp_matmul.c), called on torch tensors.

    accumulate(a, b, fmt, block_k)   (B, M, K) @ (B, K, N) -> (B, M, N): strict, acc = RN(fl32(acc + fl32(a*b))) per
                                     k in order; blocked, acc = RN(fl32(acc + S_j)) with sequential FP32 block sums

The work is split into tasks (a matrix of the batch, a range of columns, a range of rows), run on
torch.get_num_threads() threads: ctypes releases the GIL, so the threads run the C code in parallel. Each task
writes its own part of the output, so the result does not depend on the number of threads.

The caller (lampc/numerics/fast.py) checks dtypes, devices and batch sizes; the kernel canonicalises NaN inputs as
it reads them.
"""

from __future__ import annotations

import ctypes
import functools
import os
from concurrent.futures import ThreadPoolExecutor, wait

import torch

from ..formats import Format
from . import cpu_build

PANEL_COLUMNS = 32  # NR in the C source: columns per packed panel of b
WANTED_PER_THREAD = 4  # tasks per thread: enough to balance uneven ones, few enough that the pool's cost stays small
MIN_TASK_ROWS = 64  # rows below which splitting a task's rows costs more (packing b again) than it gains
SIGN_FREE_QUIET_NAN = 0x7FC00000
INF_BITS = 0x7F800000


class Epilogue(ctypes.Structure):
    """epilogue_t in the C source: y = RN(fl32(fl32(acc * scale) + bias[n])) before the store, or nothing."""

    _fields_ = [
        ("apply", ctypes.c_int32),
        ("has_scale", ctypes.c_int32),
        ("scale", ctypes.c_float),
        ("bias", ctypes.c_void_p),
    ]


class Rounding(ctypes.Structure):
    """rounding_t in the C source: how the accumulator is rounded to a format."""

    _fields_ = [
        ("mode", ctypes.c_int32),
        ("dropped", ctypes.c_int32),
        ("min_normal_exp", ctypes.c_int32),
        ("overflow_bits", ctypes.c_uint32),
        ("overflow_value", ctypes.c_uint32),
    ]


@functools.cache
def rounding_of(fmt: Format, rounding: str = "nearest") -> Rounding:
    """The C description of rounding onto fmt's grid: RN (lampc/numerics/rounding.py's two cases), or toward zero
    (formats with FP32's exponent range; the caller checks)."""
    overflow_value = SIGN_FREE_QUIET_NAN if fmt.finite_only else INF_BITS
    mode = 2 if rounding == "toward_zero" else 0 if fmt.has_fp32_range else 1
    return Rounding(mode, 23 - fmt.m_bits, fmt.emin + 127, _bits_of(fmt.overflow_threshold), overflow_value)


@functools.cache
def available() -> str | None:
    """None when the kernel is built and loads here, else why not (KernelUnavailable's message); asked once per
    process (clear with available.cache_clear() after changing $CC or $LAMPC_KERNEL_CACHE)."""
    try:
        _library()
    except cpu_build.KernelUnavailable as err:
        return str(err)
    return None


def accumulate(a: torch.Tensor, b: torch.Tensor, fmt: Format, block_k: int = 1, *, output: bool = False,
               scale: float | None = None, bias: torch.Tensor | None = None, rounding: str = "nearest"
               ) -> torch.Tensor:
    """Low-precision accumulation (strict for block_k = 1, blocked above): a (B, M, K), b (B, K, N), any strides ->
    (B, M, N) contiguous.

    output=True: each result is the producer's output RN(fl32(fl32(acc * scale) + bias[n])) instead of the bare
    accumulator (scale None: no multiply; bias: a contiguous (N,) float32 tensor, or None), rounded in registers
    before the store; as `round_to` rounds it, NaN included."""
    batch, rows, inner = a.shape
    cols = b.shape[-1]
    out = torch.empty(batch, rows, cols, dtype=torch.float32)
    if out.numel() == 0:
        return out
    if inner == 0 and not output:
        return out.zero_()
    kernel = _library().lp_strict_columns
    if output and rounding != "nearest":
        raise ValueError("the producer's output is rounded to nearest: output=True takes rounding='nearest' only")
    rounding = ctypes.byref(rounding_of(fmt, rounding))
    epilogue = Epilogue(int(output), int(scale is not None), 1.0 if scale is None else scale,
                        None if bias is None else bias.data_ptr())
    keep_alive = (epilogue, bias)
    sa, sb, so = a.stride(), b.stride(), out.stride()
    a_ptr, b_ptr, out_ptr = a.data_ptr(), b.data_ptr(), out.data_ptr()

    def run(task):
        index, n0, n1, m0, m1 = task
        status = kernel(
            ctypes.c_void_p(a_ptr + 4 * (index * sa[0] + m0 * sa[1])), sa[1], sa[2],
            ctypes.c_void_p(b_ptr + 4 * index * sb[0]), sb[1], sb[2],
            ctypes.c_void_p(out_ptr + 4 * (index * so[0] + m0 * so[1])), so[1],
            m1 - m0, inner, block_k, n0, n1, rounding, ctypes.byref(keep_alive[0]),
        )
        if status != 0:
            raise MemoryError(f"lp_matmul's C kernel could not allocate its {inner} x {PANEL_COLUMNS} panel")

    _run_all(run, _tasks(batch, rows, cols))
    return out


def _tasks(batch: int, rows: int, cols: int) -> list[tuple[int, int, int, int, int]]:
    """(matrix, n0, n1, m0, m1) pieces, enough to keep every thread busy: columns split by whole panels first,
    rows only when there are still too few pieces and each keeps MIN_TASK_ROWS rows."""
    wanted = WANTED_PER_THREAD * _threads()
    panels = -(-cols // PANEL_COLUMNS)
    col_parts = min(panels, max(1, -(-wanted // batch)))
    panels_per_part = -(-panels // col_parts)
    col_ranges = [(p * PANEL_COLUMNS, min(cols, (p + panels_per_part) * PANEL_COLUMNS))
                  for p in range(0, panels, panels_per_part)]
    row_parts = min(max(1, rows // MIN_TASK_ROWS), max(1, -(-wanted // (batch * len(col_ranges)))))
    row_step = -(-rows // row_parts)
    return [(index, n0, n1, m0, min(rows, m0 + row_step))
            for index in range(batch) for n0, n1 in col_ranges for m0 in range(0, rows, row_step)]


def _run_all(run, tasks) -> None:
    """run(task) for every task, on the pool; returns only when every task has stopped (also when one raised, or
    on KeyboardInterrupt), so no C call can outlive the tensors the caller is about to free. The first error is
    raised after."""
    threads = _threads()
    if threads == 1 or len(tasks) == 1:
        for task in tasks:
            run(task)
        return
    futures = [_pool(threads).submit(run, task) for task in tasks]
    try:
        for future in futures:
            future.result()
    finally:
        for future in futures:
            future.cancel()
        wait(futures)


def _threads() -> int:
    return max(1, torch.get_num_threads())


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lampc-kernels")


os.register_at_fork(after_in_child=_pool.cache_clear)  # a forked child has none of the parent's worker threads


@functools.cache
def _library() -> ctypes.CDLL:
    lib = cpu_build.load()
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.lp_strict_columns.argtypes = [ptr, i64, i64, ptr, i64, i64, ptr, i64, i64, i64, i64, i64, i64, ptr, ptr]
    lib.lp_strict_columns.restype = ctypes.c_int
    return lib


def _bits_of(value: float) -> int:
    return int(torch.tensor(value, dtype=torch.float32).view(torch.int32).item()) & 0xFFFFFFFF
