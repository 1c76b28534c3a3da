"""The native backend warns where its dtype has no hardware units (no test depends on this CPU's instruction set:
the decision is checked against given flag sets, and compile's warning against the decision on this machine)."""

import platform
import warnings

import pytest
import torch

import lampc
from lampc.runtime import hardware
from tiny_models import tiny_gpt2

pytestmark = pytest.mark.slow  # whole-model integration tests: `-m "not slow"` leaves them out


@pytest.fixture
def flags(monkeypatch):
    def use(names):
        monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(names))
        monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    return use


def test_decision_from_x86_flags(flags):
    flags({"avx2", "fma"})
    assert hardware.native_speed(torch.bfloat16) == (False, "the CPU lacks AMX-BF16 or AVX512-BF16")
    assert not hardware.native_speed(torch.float16)[0]
    flags({"avx2", "avx512f", "avx512_bf16"})
    assert hardware.native_speed(torch.bfloat16) == (True, "the CPU has avx512_bf16")
    assert not hardware.native_speed(torch.float16)[0]
    flags({"amx_bf16", "amx_fp16"})
    assert hardware.native_speed(torch.float16)[0] and hardware.native_speed(torch.bfloat16)[0]


def test_without_flags_the_probe_decides(flags):
    flags(set())
    fast, why = hardware.native_speed(torch.bfloat16)
    assert "probe GEMM" in why and fast == (hardware._probe_ratio(torch.bfloat16) < hardware.SLOW_RATIO)


@pytest.mark.parametrize("dtype, fmt", [(torch.bfloat16, "bf16"), (torch.float16, "fp16")])
def test_compile_warns_exactly_when_the_dtype_is_slow_here(dtype, fmt):
    fast, why = hardware.native_speed(dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lampc.compile(tiny_gpt2(), format=fmt, backend="native", criterion="strict", tau=0.1)
    slow = [w for w in caught if "backend='native'" in str(w.message)]
    assert len(slow) == (0 if fast else 1)
    if slow:
        assert why in str(slow[0].message) and "backend='emulate'" in str(slow[0].message)


def test_emulated_formats_never_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lampc.compile(tiny_gpt2(), format="fp16", criterion="strict", tau=0.1)
