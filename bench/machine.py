"""The machine a benchmark ran on, printed next to its numbers: CPU model, the instruction sets that decide low-
precision speed (AVX2, AVX512, AVX512-BF16, AMX), threads, torch build."""

from __future__ import annotations

import platform

import torch

from lampc.runtime.hardware import cpu_flags

FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine() -> str:
    """One line: CPU, the low-precision instruction sets it has and lacks, torch version, GPU if any."""
    flags = cpu_flags()
    has = [f for f in FLAGS if f in flags]
    lacks = [f for f in FLAGS if f not in flags]
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return (f"{cpu_name()}; has {', '.join(has) or 'none of ' + '/'.join(FLAGS)}"
            f"{'; lacks ' + ', '.join(lacks) if lacks else ''}; torch {torch.__version__}{gpu}")
