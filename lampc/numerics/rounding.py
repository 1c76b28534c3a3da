"""Bit-exact round-to-nearest-even of float32 tensors onto a `Format`'s grid.

Everything works on the int32 view of the float32 bit pattern, vectorised over the whole tensor:

    bits  = sign | E (8 bits, biased by 127) | mantissa (23 bits)
    value = (-1)^sign * sig * 2^(max(E, 1) - 150),   sig = mantissa + (E > 0) * 2^23

Rounding to `m` mantissa bits drops the low `d = 23 - m` bits of `sig` with ties to even. For full formats
whose smallest normal exponent `emin` is above FP32's, inputs below `2^emin` drop more bits (the format's
subnormal grid `2^(emin - m)` is coarser), up to all of them.

Mantissa-only formats (and bf16/tf32, which share FP32's exponent range) use a constant `d`, so the
rounding is four in-place integer ops; FP32 subnormal inputs are rounded on the same bit pattern, i.e.
onto the grid `2^(-126 - m)` (the subnormal grid of an m-bit format with FP32's emin), and a carry out of
the subnormal range yields the smallest normal, as in IEEE arithmetic.
"""

from __future__ import annotations

import torch

from lampc.formats import Format, parse

SIGN_BIT = -(2**31)  # 0x80000000 as an int32
ABS_MASK = 2**31 - 1  # 0x7FFFFFFF
INF_BITS = 0x7F800000
QUIET_NAN_BITS = 0x7FC00000
FP32_EXPONENT_BIAS = 127


def _check_float32(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of dtype torch.float32, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise TypeError(f"x must have dtype torch.float32, got {x.dtype}")


def round_to(x: torch.Tensor, fmt: Format | str) -> torch.Tensor:
    """Return float32 `x` rounded to nearest (ties to even) onto `fmt`'s grid; `x` is not modified.

    NaN stays NaN, infinities stay infinite (except fp8_e4m3, which has none: they become NaN), signed
    zeros and the sign of underflowing values are kept, magnitudes >= `fmt.overflow_threshold` become
    `fmt.overflow_value` with their sign.
    """
    _check_float32(x)
    fmt = parse(fmt)
    if fmt.is_identity:
        return x.clone()
    return round_to_(x.clone(), fmt)


def round_to_(x: torch.Tensor, fmt: Format | str) -> torch.Tensor:
    """In-place `round_to`: rounds float32 `x` onto `fmt`'s grid and returns `x`."""
    _check_float32(x)
    fmt = parse(fmt)
    if fmt.is_identity:
        return x
    bits = x.view(torch.int32)
    if fmt.has_fp32_range:
        nan_mask = torch.isnan(x)
        round_mantissa_bits_(bits, dropped_mantissa_bits(fmt))
        bits.masked_fill_(nan_mask, QUIET_NAN_BITS)
    else:
        bits.copy_(_round_full_format_bits(bits, fmt))
    return x


def dropped_mantissa_bits(fmt: Format) -> int:
    """How many low FP32 mantissa bits rounding to `fmt` clears in its normal range: 23 - m."""
    return 23 - fmt.m_bits


def round_mantissa_bits_(bits: torch.Tensor, dropped: int) -> torch.Tensor:
    """Round the float32 patterns in int32 `bits` in place, clearing the low `dropped` bits (RNE).

    Correct for every finite value and for ±inf (carries into the exponent give the next binade, and
    from the top binade +-inf). Precondition: NaN patterns have no payload bits below bit 22 (a quiet
    NaN as produced by arithmetic on such NaNs); any other NaN may be turned into inf or a zero.
    `round_to_` restores NaNs itself; `lp_matmul` canonicalises NaN inputs once instead.
    """
    if dropped == 0:
        return bits
    half_minus_one = (1 << (dropped - 1)) - 1
    keep_mask = -(1 << dropped)  # ~((1 << dropped) - 1) as an int32
    lsb = torch.bitwise_right_shift(bits, dropped)  # arithmetic shift; bit 0 is the kept lsb
    lsb.bitwise_and_(1).add_(half_minus_one)
    bits.add_(lsb)  # never overflows: |pattern| <= 0x7F800000 + 2^22
    bits.bitwise_and_(keep_mask)
    return bits


def _round_full_format_bits(bits: torch.Tensor, fmt: Format) -> torch.Tensor:
    """Rounded int32 patterns for a format with its own exponent range (fp16, fp8_*)."""
    sign = bits & SIGN_BIT
    magnitude = bits & ABS_MASK
    biased_exp = torch.clamp(magnitude >> 23, min=1)  # FP32 subnormals scale like E = 1
    base = (biased_exp - 1) << 23  # magnitude = base + sig
    sig = magnitude - base  # (...,) significand as an integer, < 2^24
    # Bits of sig to drop: 23 - m in fmt's normal range, more below 2^emin; >= 25 means "all".
    min_normal_exp = fmt.emin + FP32_EXPONENT_BIAS
    dropped = (23 - fmt.m_bits) + torch.clamp(min_normal_exp - biased_exp, min=0, max=25)
    dropped.clamp_(max=25)
    lsb = (sig >> dropped) & 1
    rounded_sig = ((sig + (1 << (dropped - 1)) - 1 + lsb) >> dropped) << dropped
    rounded = torch.where(rounded_sig == 0, 0, base + rounded_sig)  # a carry bumps the exponent
    overflow_bits = _float_bits(fmt.overflow_threshold)
    overflow_value_bits = QUIET_NAN_BITS if fmt.finite_only else INF_BITS
    rounded = torch.where(magnitude >= overflow_bits, overflow_value_bits, rounded)
    rounded = torch.where(magnitude > INF_BITS, QUIET_NAN_BITS, rounded)  # NaN in, NaN out
    return rounded | sign


def _float_bits(value: float) -> int:
    """The float32 bit pattern of `value` (which must be exactly representable) as a Python int."""
    return int(torch.tensor(value, dtype=torch.float32).view(torch.int32).item())
