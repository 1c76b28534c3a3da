"""Peak memory of a call, for the benchmarks: how far the resident set's high-water mark rises while it runs.

Linux only: the kernel's high-water mark (VmHWM) is reset to the current RSS through /proc/self/clear_refs, after
glibc has returned freed heap to the OS, so the reading is the call's own peak, not an earlier one's.
"""

from __future__ import annotations

import ctypes
from pathlib import Path


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def peak_growth_mb(fn) -> float:
    """MB by which the peak resident set grows while fn() runs (NaN where the high-water mark cannot be reset)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        return float("nan")
    before = _status_kb("VmRSS")
    fn()
    return (_status_kb("VmHWM") - before) / 1024
