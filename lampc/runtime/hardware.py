"""Does this machine compute bf16 / fp16 matmuls fast? The native backend is a speed path only where it does.

On a CPU without bf16 (fp16) matrix units a bf16 GEMM runs through conversion loops: measured 5-100x *slower*
than FP32 (a 256 x 768 x 3072 bf16 GEMM is 100x an FP32 one on an AVX2-only CPU). `native_speed(dtype, device)`
answers from the CPU's instruction sets where it can (x86: AVX512-BF16 / AMX-BF16, AVX512-FP16 / AMX-FP16;
Arm: the bf16 / fphp features) and otherwise times a short probe once: the same GEMM in the dtype and in FP32.
`compile` warns, with what to use instead, when a native site would be slow (lampc/api.py).
"""

from __future__ import annotations

import functools
import platform
import time

import torch

FAST_FLAGS = {
    torch.bfloat16: ({"avx512_bf16", "amx_bf16"}, {"bf16"}),  # (x86 flags, Arm features)
    torch.float16: ({"avx512_fp16", "amx_fp16"}, {"fphp", "asimdhp"}),
}
PROBE_SHAPE = (128, 512, 512)
SLOW_RATIO = 1.5  # a dtype GEMM this much slower than FP32 is "slow" (units halve the time: ~0.5)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (x86 "flags", Arm "Features"); empty where unreadable."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def _probe_ratio(dtype: torch.dtype) -> float:
    """Time of a PROBE_SHAPE GEMM in `dtype` over the same in FP32 (median of 3, after a warm-up)."""
    m, k, n = PROBE_SHAPE
    a, b = torch.randn(m, k), torch.randn(k, n)
    low_a, low_b = a.to(dtype), b.to(dtype)

    def best(x, y) -> float:
        times = []
        for _ in range(4):
            start = time.perf_counter()
            torch.matmul(x, y)
            times.append(time.perf_counter() - start)
        return sorted(times[1:])[1]

    return best(low_a, low_b) / max(best(a, b), 1e-9)


def native_speed(dtype: torch.dtype, device: torch.device | str = "cpu") -> tuple[bool, str]:
    """(fast, why): whether real `dtype` GEMMs beat FP32 here, and the evidence in words."""
    device = torch.device(device)
    if dtype not in FAST_FLAGS:
        return True, f"{dtype} is not a reduced-precision dtype"
    if device.type == "cuda":
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            return False, f"{torch.cuda.get_device_name(device)} has no bf16 support"
        return True, f"{torch.cuda.get_device_name(device)}"
    if device.type != "cpu":
        return True, f"{device.type} device (not checked)"
    x86, arm = FAST_FLAGS[dtype]
    flags = cpu_flags()
    if flags & (x86 | arm):
        return True, f"the CPU has {', '.join(sorted(flags & (x86 | arm)))}"
    if flags and platform.machine().lower() in ("x86_64", "amd64", "i686"):
        wanted = " or ".join(flag.upper().replace("_", "-") for flag in sorted(x86))
        return False, f"the CPU lacks {wanted}"
    ratio = _probe_ratio(dtype)
    return ratio < SLOW_RATIO, f"a probe GEMM in {dtype} took {ratio:.1f}x the FP32 time"
