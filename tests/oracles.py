"""Independent scalar oracles for the numerics tests: exact rational rounding and scalar-loop dots.

Nothing here imports lampc. Format parameters are restated from the specs (IEEE 754 binary16/32,
bfloat16, TF32, OCP OFP8) so that a mistake in `lampc.formats` cannot hide in both places.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np


@dataclasses.dataclass(frozen=True)
class Spec:
    """What the oracle needs to know about a format: significand bits, range, overflow behaviour."""

    m: int  # explicit mantissa bits
    emin: int  # exponent of the smallest normal number
    max_finite: Fraction
    overflow_is_nan: bool = False  # OCP E4M3 has no infinities


def mantissa_only_spec(m: int) -> Spec:
    return Spec(m, -126, (2 - Fraction(1, 2**m)) * 2**127)


SPECS: dict[str, Spec] = {
    "fp32": mantissa_only_spec(23),
    "tf32": mantissa_only_spec(10),
    "bf16": mantissa_only_spec(7),
    "fp16": Spec(10, -14, Fraction(65504)),
    "fp8_e4m3": Spec(3, -6, Fraction(448), overflow_is_nan=True),
    "fp8_e5m2": Spec(2, -14, Fraction(57344)),
    **{f"m{m}": mantissa_only_spec(m) for m in range(1, 24)},
}


def round_fraction(x: Fraction, spec: Spec) -> Fraction | float:
    """Round the exact rational x to the nearest value of `spec` (ties to even).

    Returns a Fraction, or float('inf') / float('nan') (with x's sign for inf) on overflow; a zero
    result is returned as Fraction(0) and the caller restores the sign.
    """
    if x == 0:
        return Fraction(0)
    magnitude = abs(x)
    exponent = _floor_log2(magnitude)
    quantum = Fraction(2) ** (max(exponent, spec.emin) - spec.m)  # grid spacing at x
    units = magnitude / quantum
    whole = math.floor(units)
    remainder = units - whole
    if remainder > Fraction(1, 2) or (remainder == Fraction(1, 2) and whole % 2 == 1):
        whole += 1
    top_quantum = Fraction(2) ** (_floor_log2(spec.max_finite) - spec.m)
    if magnitude >= spec.max_finite + top_quantum / 2:
        return float("nan") if spec.overflow_is_nan else math.copysign(float("inf"), x)
    rounded = whole * quantum
    return rounded if x > 0 else -rounded


def _floor_log2(q: Fraction) -> int:
    """floor(log2(q)) for a positive rational, exactly."""
    exponent = q.numerator.bit_length() - q.denominator.bit_length()
    if Fraction(2) ** exponent > q:
        exponent -= 1
    if Fraction(2) ** (exponent + 1) <= q:
        exponent += 1
    return exponent


def round_scalar(x: float, spec: Spec) -> np.float32:
    """Round one float32 value with the rational oracle; NaN, infinities and zero signs handled here."""
    x = float(x)
    if math.isnan(x):
        return np.float32("nan")
    if math.isinf(x):
        return np.float32("nan") if spec.overflow_is_nan else np.float32(x)
    rounded = round_fraction(Fraction(x), spec)
    if isinstance(rounded, float):
        return np.float32(rounded)
    if rounded == 0:
        return np.float32(math.copysign(0.0, x))
    return np.float32(float(rounded))  # exact: the grid is a subset of float32


def round_array(values: np.ndarray, spec: Spec) -> np.ndarray:
    """Elementwise `round_scalar` over a float32 array (slow; for test-sized inputs)."""
    flat = [round_scalar(v, spec) for v in values.astype(np.float32).ravel()]
    return np.array(flat, dtype=np.float32).reshape(values.shape)


def strict_dot(a_row: np.ndarray, b_col: np.ndarray, spec: Spec) -> np.float32:
    """acc = RN(fl32(acc + fl32(a_k * b_k))), k in order, acc starting at +0 (docs/METHOD.md §2)."""
    acc = np.float32(0.0)
    with np.errstate(all="ignore"):
        for a_k, b_k in zip(a_row.astype(np.float32), b_col.astype(np.float32)):
            product = np.float32(a_k * b_k)
            acc = round_scalar(np.float32(acc + product), spec)
    return acc


def blocked_dot(a_row: np.ndarray, b_col: np.ndarray, spec: Spec, block_k: int) -> np.float32:
    """acc = RN(fl32(acc + S_j)) with S_j the sequential float32 sum of block j's products."""
    acc = np.float32(0.0)
    with np.errstate(all="ignore"):
        for k0 in range(0, len(a_row), block_k):
            block_sum = np.float32(0.0)
            for a_k, b_k in zip(a_row[k0 : k0 + block_k], b_col[k0 : k0 + block_k]):
                block_sum = np.float32(block_sum + np.float32(np.float32(a_k) * np.float32(b_k)))
            acc = round_scalar(np.float32(acc + block_sum), spec)
    return acc


def matmul_oracle(a: np.ndarray, b: np.ndarray, spec: Spec, block_k: int = 1) -> np.ndarray:
    """Broadcast batched matmul with the scalar-loop dots above; a (..., M, K), b (..., K, N)."""
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a3 = np.broadcast_to(a, batch + a.shape[-2:]).reshape(-1, *a.shape[-2:])
    b3 = np.broadcast_to(b, batch + b.shape[-2:]).reshape(-1, *b.shape[-2:])
    out = np.empty((a3.shape[0], a3.shape[1], b3.shape[2]), dtype=np.float32)
    for i in range(out.shape[0]):
        for r in range(out.shape[1]):
            for c in range(out.shape[2]):
                if block_k == 1:
                    out[i, r, c] = strict_dot(a3[i, r], b3[i, :, c], spec)
                else:
                    out[i, r, c] = blocked_dot(a3[i, r], b3[i, :, c], spec, block_k)
    return out.reshape(batch + out.shape[-2:])


def accumulation_bound(n_low: int, u_low: float, n_fp32: int) -> float:
    """(1 + u_low)^n_low (1 + u32)^n_fp32 - 1: the relative bound, against sum |a_k b_k|, of a dot
    product in which every term passes through at most n_low roundings of unit roundoff u_low and
    n_fp32 FP32 roundings (Higham, Accuracy and Stability of Numerical Algorithms, ch. 3)."""
    return (1 + u_low) ** n_low * (1 + 2.0**-24) ** n_fp32 - 1


def same_bits(x: np.ndarray, y: np.ndarray) -> bool:
    """Bitwise float32 equality, treating any two NaNs as equal."""
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    both_nan = np.isnan(x) & np.isnan(y)
    return bool(np.all(both_nan | (x.view(np.int32) == y.view(np.int32))))
