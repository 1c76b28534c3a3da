"""The C kernel of the strict look-ahead's elementwise tail (cpu_select.c), called on torch tensors.

    strict_select(s_hat, a, usable, tau) -> bool    ((2a)(1 - a)|ŝ| > tau and usable) or ŝ not finite

One pass instead of the reference's eight (abs, three products, the comparison, two ands, the finiteness test),
with the same float32 operations in the same order, so the same selection (tests/test_fast_select.py). The entries
are split into ranges on torch.get_num_threads() threads (cpu.py's pool; ctypes releases the GIL).
"""

from __future__ import annotations

import ctypes
import functools

import torch
from torch import Tensor

from . import cpu, cpu_build
from .cpu import _run_all, _threads

PARALLEL_ENTRIES = 1 << 16
"""Entries from which the pass is split across threads."""


def available() -> str | None:
    """None when the kernel library loads here, else why not (cpu.available's answer: one library for all)."""
    return cpu.available()


def strict_select(s_hat: Tensor, a: Tensor, usable: Tensor, tau: float) -> Tensor:
    """The strict rule's selection; s_hat, a float32 and usable bool, contiguous CPU tensors of one shape."""
    selected = torch.empty(s_hat.shape, dtype=torch.bool)
    total = s_hat.numel()
    if total == 0:
        return selected
    kernel = _library().lp_strict_select
    tau32 = float(torch.tensor(tau, dtype=torch.float32))  # what the reference's comparison reads
    pointers = (s_hat.data_ptr(), a.data_ptr(), usable.data_ptr(), selected.data_ptr())
    parts = _threads() if total >= PARALLEL_ENTRIES else 1
    step = -(-total // parts)

    def run(start):
        count = min(step, total - start)
        s, p, u, out = pointers
        kernel(ctypes.c_void_p(s + 4 * start), ctypes.c_void_p(p + 4 * start), ctypes.c_void_p(u + start),
               ctypes.c_void_p(out + start), count, tau32)

    _run_all(run, list(range(0, total, step)))
    return selected


@functools.cache
def _library() -> ctypes.CDLL:
    lib = cpu_build.load()
    ptr = ctypes.c_void_p
    lib.lp_strict_select.argtypes = [ptr, ptr, ptr, ptr, ctypes.c_int64, ctypes.c_float]
    lib.lp_strict_select.restype = None
    return lib
