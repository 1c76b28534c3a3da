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

    c = x * (2^d + 1);  y = c - (c - x)           Veltkamp's splitting: x rounded to nearest-even to m + 1
                                                  significant bits, for normal x (|x| >= 2^-126, or the
                                                  format's 2^emin), in three float32 operations
    |x| < 2^emin:  y = Round(x / q) * q           q = 2^(emin - m), the subnormal grid (ONNX Round is
                                                  half-to-even; dividing and multiplying by q are exact)
    |x| >= 2^100:  scaled by 2^-64 around the splitting, so that c cannot overflow; a carry past the top
                   binade gives inf, as IEEE arithmetic and the bit formulation do
    ±inf, NaN pass through Where (Veltkamp's formula turns inf into NaN)

  Full formats (fp16, fp8_*) use their own emin and map |x| >= overflow_threshold to ±inf (NaN for
  fp8_e4m3, with the sign, as round_to does). Limitation: a NaN input to a full format keeps its own sign in
  "bits" mode (as round_to does) but becomes the positive quiet NaN in "arith" mode.

Every function here takes `op`, a `lampc.export.builder.Builder` (inside torch.onnx.export its calls are
recorded by the exporter's tracer), and float32 values, and returns float32 values.
"""

from __future__ import annotations

import numpy as np

from ..formats import Format, parse
from ..numerics.rounding import dropped_mantissa_bits

ROUNDINGS = ("bits", "arith")
BITCAST_OPSET = 26
"""The first ONNX opset with BitCast (checked with ONNX Runtime 1.32; older runtimes may lack it)."""

FLOAT, UINT32 = 1, 12  # onnx.TensorProto data types
QUIET_NAN = np.array(0x7FC00000, dtype=np.uint32).view(np.float32)
NEG_QUIET_NAN = np.array(0xFFC00000, dtype=np.uint32).view(np.float32)


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
    if fmt.has_fp32_range:
        if rounding == "bits":
            return _round_mantissa_bits(op, x, dropped_mantissa_bits(fmt), restore_nan)
        return _round_arith(op, x, fmt, restore_nan)
    if rounding == "bits":
        return _round_full_format_bits(op, x, fmt)
    return _round_arith(op, x, fmt, restore_nan=True)


def canonical_nans(op, x):
    """x with every NaN replaced by the default quiet NaN (lp_matmul does this to its operands)."""
    return op.Where(op.IsNaN(x), op.const(QUIET_NAN), x)


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

BIG = 2.0**100
"""Above this magnitude Veltkamp's product x·(2^d + 1) could overflow: such x are scaled by 2^-64 first."""


def _round_arith(op, x, fmt: Format, restore_nan: bool):
    """Veltkamp splitting for normal values, an exact division for the subnormal grid, Where for the rest."""
    m, emin = fmt.m_bits, max(fmt.emin, -126)
    magnitude = op.Abs(x)
    if fmt.has_fp32_range:
        in_range = op.Less(magnitude, op.const(BIG))
        scale_down = op.Where(in_range, op.const(1.0), op.const(2.0**-64))
        scale_up = op.Where(in_range, op.const(1.0), op.const(2.0**64))
        normal = op.Mul(_veltkamp(op, op.Mul(x, scale_down), 23 - m), scale_up)  # exact scalings; inf past the top
    else:
        normal = _veltkamp(op, x, 23 - m)  # |x| below fmt's overflow threshold: no overflow inside
    spacing = op.const(2.0 ** (emin - m))  # the subnormal grid, >= 2^-149
    subnormal = op.Mul(op.Round(op.Div(x, spacing)), spacing)  # Round: half to even; Div, Mul: exact
    # ONNX Runtime's CPU Where turns a -0 taken from its first branch into +0 (1.32): keep zeros in the second
    y = op.Where(op.GreaterOrEqual(magnitude, op.const(2.0**emin)), normal, subnormal)
    if not fmt.has_fp32_range:
        if fmt.finite_only:
            over = op.Where(op.Less(x, op.const(0.0)), op.const(NEG_QUIET_NAN), op.const(QUIET_NAN))
        else:
            over = op.Where(op.Less(x, op.const(0.0)), op.const(-np.inf), op.const(np.inf))
        return op.Where(op.GreaterOrEqual(magnitude, op.const(fmt.overflow_threshold)), over,
                        op.Where(op.IsNaN(x), op.const(QUIET_NAN), y))
    # inf gives NaN inside Veltkamp's formula: y is NaN exactly when x is NaN or ±inf
    passthrough = op.Where(op.IsNaN(x), op.const(QUIET_NAN), x) if restore_nan else x
    return op.Where(op.IsNaN(y), passthrough, y)


def _veltkamp(op, x, dropped: int):
    """RN-even of float32 x to 24 - dropped significant bits: c = x·(2^d + 1); c - (c - x) (Veltkamp/Dekker).

    Exact for normal x whose product does not overflow (checked exhaustively over a binade for every d)."""
    c = op.Mul(x, op.const(float(2**dropped + 1)))
    return op.Sub(c, op.Sub(c, x))
