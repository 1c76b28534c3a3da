"""Triton device functions that round float32 values onto a Format's grid, bit for bit as lampc/numerics/rounding.py.

The same integer recipes on the int32 view of the float32 pattern (see that module for the derivation):

    FP32 exponent range (m1..m22, bf16, tf32)   clear the low 23 - m bits, ties to even   (round_mantissa_bits_)
    own exponent range (fp16, fp8_e4m3, e5m2)   more bits dropped below 2^emin (subnormals), overflow to inf, or to
                                                NaN for a finite-only format; NaN in, NaN out (_round_full_format_bits)

A format's parameters reach a kernel as constexprs: `rounding_constants(fmt)` gives them as launch keywords (one
compile per format), and the kernel passes them on to `round_to_format`:

    @triton.jit
    def kernel(..., FMT_DROPPED: tl.constexpr, FMT_FULL: tl.constexpr, FMT_MIN_EXP: tl.constexpr,
               FMT_OVERFLOW: tl.constexpr, FMT_OVERFLOW_TO: tl.constexpr):
        y = round_to_format(x, FMT_DROPPED, FMT_FULL, FMT_MIN_EXP, FMT_OVERFLOW, FMT_OVERFLOW_TO)
    kernel[grid](..., **rounding_constants(fmt))

One difference from the torch code, for the GPU: a NaN is replaced by the quiet NaN 0x7FC00000 before the integer
steps of the FP32-range recipe. The CPU reference relies on its NaNs having no payload below bit 22 (lp_matmul
canonicalises its inputs once); a GPU's own arithmetic NaN is 0x7FFFFFFF, whose carry would reach the sign bit.
NaN positions are therefore the reference's; NaN sign and payload are unspecified (lampc/formats.py).

Triton is optional: nothing imports these modules but the callers that launch them, each catching the ImportError
this module raises without triton (lampc/numerics/fast.py, lampc/ops/cuda_site.py), so `import lampc` never needs it.
"""

from __future__ import annotations

import struct

import torch

from lampc.formats import Format, parse

try:
    import triton
    import triton.language as tl
except ImportError as err:  # optional dependency: callers catch this (lampc/numerics/fast.py, lampc/ops/cuda_site.py)
    raise ImportError(f"lampc's Triton kernels need triton ({err}); pip install triton (a CUDA build of torch from "
                      "PyPI brings it)") from err

FP32_EXPONENT_BIAS = 127
ABS_MASK = 0x7FFFFFFF
INF_BITS = 0x7F800000
QUIET_NAN_BITS = 0x7FC00000
_ABS_MASK, _INF_BITS, _QUIET_NAN_BITS = (tl.constexpr(v) for v in (ABS_MASK, INF_BITS, QUIET_NAN_BITS))
"""The same constants for jit functions, which may read only constexpr globals."""


def cdiv(n: int, d: int) -> int:
    return -(-n // d)


def float32_bits(value: float) -> int:
    """The float32 bit pattern of `value` (exactly representable) as a Python int."""
    return struct.unpack("<i", struct.pack("<f", value))[0]


def rounding_constants(fmt: Format | str) -> dict[str, int | bool]:
    """The launch keywords that describe `fmt` to `round_to_format`:

    FMT_DROPPED      23 - m: low mantissa bits cleared in the format's normal range (0: identity, nothing to do)
    FMT_FULL         True for a format with its own exponent range (fp16, fp8_*): subnormals and overflow apply
    FMT_MIN_EXP      biased FP32 exponent of the format's smallest normal (emin + 127); full formats only
    FMT_OVERFLOW     bits of the smallest overflowing magnitude (`Format.overflow_threshold`); full formats only
    FMT_OVERFLOW_TO  bits of what it becomes: inf, or the quiet NaN for finite-only formats; full formats only
    """
    fmt = parse(fmt)
    dropped = 23 - fmt.m_bits
    if fmt.is_identity or fmt.has_fp32_range:
        return dict(FMT_DROPPED=0 if fmt.is_identity else dropped, FMT_FULL=False, FMT_MIN_EXP=0, FMT_OVERFLOW=0,
                    FMT_OVERFLOW_TO=0)
    return dict(FMT_DROPPED=dropped, FMT_FULL=True, FMT_MIN_EXP=fmt.emin + FP32_EXPONENT_BIAS,
                FMT_OVERFLOW=float32_bits(fmt.overflow_threshold),
                FMT_OVERFLOW_TO=QUIET_NAN_BITS if fmt.finite_only else INF_BITS)


@triton.jit
def round_mantissa_bits(bits, DROPPED: tl.constexpr):
    """RNE of int32 float32 patterns to DROPPED fewer mantissa bits (round_mantissa_bits_): carries into the
    exponent give the next binade, from the top binade inf. Precondition: NaNs are the quiet NaN (no payload)."""
    half_minus_one = (1 << (DROPPED - 1)) - 1
    keep_mask = -(1 << DROPPED)  # ~((1 << DROPPED) - 1), an int32
    lsb = (bits >> DROPPED) & 1  # arithmetic shift; bit 0 is the kept lsb
    return (bits + (lsb + half_minus_one)) & keep_mask


@triton.jit
def round_full_format_bits(bits, DROPPED: tl.constexpr, MIN_EXP: tl.constexpr, OVERFLOW: tl.constexpr,
                           OVERFLOW_TO: tl.constexpr):
    """Rounded int32 patterns for a format with its own exponent range (_round_full_format_bits, step for step)."""
    magnitude = bits & _ABS_MASK
    sign = bits ^ magnitude
    biased_exp = tl.maximum(magnitude >> 23, 1)  # FP32 subnormals scale like E = 1
    base = (biased_exp - 1) << 23  # magnitude = base + sig
    sig = magnitude - base  # the significand as an integer, < 2^24
    # bits of sig to drop: DROPPED in the normal range, more below 2^emin; 25 means all of them
    dropped = tl.minimum(DROPPED + tl.minimum(tl.maximum(MIN_EXP - biased_exp, 0), 25), 25)
    lsb = (sig >> dropped) & 1
    rounded_sig = ((sig + (1 << (dropped - 1)) - 1 + lsb) >> dropped) << dropped
    rounded = tl.where(rounded_sig == 0, 0, base + rounded_sig)  # a carry bumps the exponent
    rounded = tl.where(magnitude >= OVERFLOW, OVERFLOW_TO, rounded)
    rounded = tl.where(magnitude > _INF_BITS, _QUIET_NAN_BITS, rounded)  # NaN in, NaN out
    return rounded | sign


@triton.jit
def round_to_format(x, FMT_DROPPED: tl.constexpr, FMT_FULL: tl.constexpr, FMT_MIN_EXP: tl.constexpr,
                    FMT_OVERFLOW: tl.constexpr, FMT_OVERFLOW_TO: tl.constexpr):
    """float32 `x` rounded to nearest (ties to even) onto the format `rounding_constants` described."""
    y = x
    if FMT_FULL:
        bits = round_full_format_bits(x.to(tl.int32, bitcast=True), FMT_DROPPED, FMT_MIN_EXP, FMT_OVERFLOW,
                                      FMT_OVERFLOW_TO)
        y = bits.to(tl.float32, bitcast=True)
    elif FMT_DROPPED != 0:
        bits = x.to(tl.int32, bitcast=True)
        bits = tl.where((bits & _ABS_MASK) > _INF_BITS, _QUIET_NAN_BITS, bits)  # any NaN -> the quiet NaN
        y = round_mantissa_bits(bits, FMT_DROPPED).to(tl.float32, bitcast=True)
    return y


@triton.jit
def _round_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr, FMT_DROPPED: tl.constexpr, FMT_FULL: tl.constexpr,
                  FMT_MIN_EXP: tl.constexpr, FMT_OVERFLOW: tl.constexpr, FMT_OVERFLOW_TO: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < n
    x = tl.load(x_ptr + offsets, mask=inside, other=0.0)
    y = round_to_format(x, FMT_DROPPED, FMT_FULL, FMT_MIN_EXP, FMT_OVERFLOW, FMT_OVERFLOW_TO)
    tl.store(out_ptr + offsets, y, mask=inside)


def triton_round_to(x, fmt: Format | str, *, block: int = 1024):
    """round_to(x, fmt) by the Triton helper: a new contiguous float32 tensor on x's device (the kernel test's
    window onto `round_to_format`, and an elementwise rounding for CUDA tensors)."""
    if x.dtype != torch.float32:
        raise TypeError(f"x must have dtype torch.float32, got {x.dtype}")
    source = x.contiguous()
    out = torch.empty_like(source)
    if source.numel():
        grid = (cdiv(source.numel(), block),)
        _round_kernel[grid](source, out, source.numel(), BLOCK=block, **rounding_constants(fmt))
    return out
