"""Rounding onto a format's grid, written in standard ONNX ops (the ONNX twin of lampc.numerics.round_to).

ONNX Runtime's CPU provider has no real fp16/bf16 arithmetic, and its graph optimisers may remove a user's
Cast float32 -> float16 -> float32 pair as "redundant". So lampc never rounds by casting: it rounds float32
values explicitly, in one of two formulations, both bit-exact to `round_to` on every finite value and
infinity (a NaN stays a NaN: the default quiet NaN, as round_to returns it, except as noted).

"bits" (opset >= 26, which has BitCast): the same integer algorithm as round_to, on the uint32 view.

    u = BitCast(x, uint32)
    u = (u + ((u >> d) & 1) + (2^(d-1) - 1)) & ~(2^d - 1)        d = 23 - m dropped bits, ties to even
    y = BitCast(u, float32);  y = Where(IsNaN(x), qNaN, y)

  Full formats (fp16, fp8_*) port `_round_full_format_bits` (a per-element d below the format's emin,
  overflow to inf or NaN, sign restored last).

"arith" (any opset >= 18): float arithmetic that no optimiser may rewrite, exact by construction.

    e  = Floor(Log(|x|) / ln 2), made exact by one comparison with the exact power 2^e (a Gather from a
         table of powers of two) and clipped to [emin, 127]
    q  = 2^(e - m)                                  (Gather: the grid spacing at x)
    y  = Round(x / q) * q                           (ONNX Round is half-to-even; x / q and * q are exact)

  x / q lies in [2^m, 2^(m+1)] (or below for subnormals), so the division and the product by a power of
  two are exact; Round is the only rounding step. A carry to 2^(e+1) is exact too, and past the top binade
  the product overflows to inf, as IEEE arithmetic and the bit formulation do. Full formats clip e at the
  format's emin (its subnormal grid) and map |x| >= overflow_threshold to +-inf (NaN for fp8_e4m3, with
  the sign, as round_to does). Limitation: a NaN input to a full format keeps its own sign in "bits" mode
  (as round_to does) but becomes the positive quiet NaN in "arith" mode.

Every function here takes `op`, a `lampc.export.builder.Builder` (inside torch.onnx.export its calls are
recorded by the exporter's tracer), and float32 values, and returns float32 values.
"""

from __future__ import annotations

import math

import numpy as np

from ..formats import Format, parse
from ..numerics.rounding import dropped_mantissa_bits

ROUNDINGS = ("bits", "arith")
BITCAST_OPSET = 26
"""The first ONNX opset with BitCast (ONNX Runtime runs it from 1.23 on)."""

FLOAT, UINT32 = 1, 12  # onnx.TensorProto data types
QUIET_NAN = np.array(0x7FC00000, dtype=np.uint32).view(np.float32)
NEG_QUIET_NAN = np.array(0xFFC00000, dtype=np.uint32).view(np.float32)
POW2_OFFSET = 149
"""POW2_TABLE[i] = 2^(i - 149) for i in 0..277: 2^-149 (the smallest FP32 subnormal) .. 2^128 (inf)."""


def round_onnx(op, x, fmt: Format | str, rounding: str = "bits", *, restore_nan: bool = True):
    """x (float32) rounded to nearest-even onto `fmt`'s grid, in standard ONNX ops (see module docstring).

    restore_nan=False skips the final NaN canonicalisation (`lp_matmul`'s inner loop does the same: its
    inputs' NaNs are canonicalised once, so NaNs reaching the accumulator carry no payload).
    """
    fmt = parse(fmt)
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    if fmt.is_identity:
        return x
    if _has_fp32_exponent_range(fmt):
        if rounding == "bits":
            return _round_mantissa_bits(op, x, dropped_mantissa_bits(fmt), restore_nan)
        return _round_arith(op, x, fmt, restore_nan)
    if rounding == "bits":
        return _round_full_format_bits(op, x, fmt)
    return _round_arith(op, x, fmt, restore_nan=True)


def canonical_nans(op, x):
    """x with every NaN replaced by the default quiet NaN (lp_matmul does this to its operands)."""
    return op.Where(op.IsNaN(x), op.const(QUIET_NAN), x)


def _has_fp32_exponent_range(fmt: Format) -> bool:
    return fmt.emin == -126 and fmt.emax == 127 and not fmt.finite_only


# -- "bits": integer operations on the uint32 view ------------------------------------------------------


def _round_mantissa_bits(op, x, dropped: int, restore_nan: bool):
    """round_mantissa_bits_ of lampc.numerics.rounding, on uint32 (no carry reaches the sign bit)."""
    u = op.BitCast(x, to=UINT32)
    lsb = op.BitwiseAnd(op.BitShift(u, op.const(dropped, np.uint32), direction="RIGHT"), op.const(1, np.uint32))
    u = op.Add(op.Add(u, op.const((1 << (dropped - 1)) - 1, np.uint32)), lsb)
    u = op.BitwiseAnd(u, op.const((0xFFFFFFFF << dropped) & 0xFFFFFFFF, np.uint32))
    y = op.BitCast(u, to=FLOAT)
    return op.Where(op.IsNaN(x), op.const(QUIET_NAN), y) if restore_nan else y


def _round_full_format_bits(op, x, fmt: Format):
    """_round_full_format_bits of lampc.numerics.rounding, in unsigned arithmetic."""

    def u32(value):
        return op.const(value, np.uint32)

    bits = op.BitCast(x, to=UINT32)
    sign = op.BitwiseAnd(bits, u32(0x80000000))
    magnitude = op.BitwiseAnd(bits, u32(0x7FFFFFFF))
    biased_exp = op.Max(op.BitShift(magnitude, u32(23), direction="RIGHT"), u32(1))  # subnormals scale like E=1
    base = op.BitShift(op.Sub(biased_exp, u32(1)), u32(23), direction="LEFT")
    sig = op.Sub(magnitude, base)  # < 2^24
    min_normal_exp = fmt.emin + 127
    below_emin = op.Sub(op.Max(biased_exp, u32(min_normal_exp)), biased_exp)  # max(emin - E, 0), unsigned-safe
    dropped = op.Min(op.Add(op.Min(below_emin, u32(25)), u32(23 - fmt.m_bits)), u32(25))  # >= 25 means all
    lsb = op.BitwiseAnd(op.BitShift(sig, dropped, direction="RIGHT"), u32(1))
    half_minus_one = op.Sub(op.BitShift(u32(1), op.Sub(dropped, u32(1)), direction="LEFT"), u32(1))
    rounded_sig = op.BitShift(op.Add(op.Add(sig, half_minus_one), lsb), dropped, direction="RIGHT")
    rounded_sig = op.BitShift(rounded_sig, dropped, direction="LEFT")
    rounded = op.Where(op.Equal(rounded_sig, u32(0)), u32(0), op.Add(base, rounded_sig))  # carry bumps E
    overflow_bits = int(np.array(fmt.overflow_threshold, np.float32).view(np.uint32))
    overflow_value = 0x7FC00000 if fmt.finite_only else 0x7F800000
    rounded = op.Where(op.GreaterOrEqual(magnitude, u32(overflow_bits)), u32(overflow_value), rounded)
    rounded = op.Where(op.Greater(magnitude, u32(0x7F800000)), u32(0x7FC00000), rounded)  # NaN in, NaN out
    return op.BitCast(op.BitwiseOr(rounded, sign), to=FLOAT)


# -- "arith": float operations exact by construction -----------------------------------------------------


def _pow2_table(op):
    exponents = np.arange(-POW2_OFFSET, 129, dtype=np.float64)
    with np.errstate(over="ignore"):
        return op.const(np.exp2(exponents).astype(np.float32))


def _round_arith(op, x, fmt: Format, restore_nan: bool):
    m, emin = fmt.m_bits, max(fmt.emin, -126)
    table = _pow2_table(op)
    magnitude = op.Abs(x)
    guess = op.Floor(op.Mul(op.Log(magnitude), op.const(1.0 / math.log(2.0))))  # -inf at 0, NaN at NaN
    guess = op.Where(op.IsNaN(guess), op.const(float(emin)), guess)
    guess = op.Clip(guess, op.const(float(emin)), op.const(127.0))
    index = op.Cast(op.Add(guess, op.const(float(POW2_OFFSET))), to=7)  # int64, in [23, 276]
    low = op.Gather(table, index)  # 2^guess, exact
    high = op.Gather(table, op.Add(index, op.const(1, np.int64)))  # 2^(guess + 1) (inf past the top)
    # Log is off by at most one binade near powers of two: fix the exponent with exact comparisons.
    exponent = op.Add(
        op.Sub(index, op.Cast(op.Less(magnitude, low), to=7)),
        op.Cast(op.GreaterOrEqual(magnitude, high), to=7),
    )
    exponent = op.Clip(exponent, op.const(emin + POW2_OFFSET, np.int64), op.const(127 + POW2_OFFSET, np.int64))
    spacing = op.Gather(table, op.Sub(exponent, op.const(m, np.int64)))  # 2^(e - m) >= 2^-149
    y = op.Mul(op.Round(op.Div(x, spacing)), spacing)
    if not _has_fp32_exponent_range(fmt):
        threshold = op.const(fmt.overflow_threshold)
        if fmt.finite_only:
            over = op.Where(op.Less(x, op.const(0.0)), op.const(NEG_QUIET_NAN), op.const(QUIET_NAN))
        else:
            over = op.Where(op.Less(x, op.const(0.0)), op.const(-np.inf), op.const(np.inf))
        y = op.Where(op.GreaterOrEqual(magnitude, threshold), over, y)
    return op.Where(op.IsNaN(x), op.const(QUIET_NAN), y) if restore_nan else y
