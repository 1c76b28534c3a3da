"""The accumulators of real kernels in lp_matmul: truncating (rounding="toward_zero", FP22 = m13) and two-level
(flush_every=n), both implementations against a scalar oracle written here with exact rationals (issue 24 item 3;
docs/NUMERICS.md §3).

    toward zero:  acc = RZ(fl32(acc + fl32(a_k * b_k))), RZ dropping the low 23 - m bits of the magnitude
    flush_every:  acc32 = fl32(acc32 + chunk_c), chunk_c the low-precision accumulation of terms
                  [c·n·b, (c+1)·n·b) from +0, acc32 from +0
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from oracles import SPECS, blocked_dot, same_bits, strict_dot

from lampc.numerics import lp_matmul


def truncate_scalar(x: float, m: int) -> np.float32:
    """x rounded toward zero onto the grid of an m-bit format with FP32's exponent range (exact rationals)."""
    x = float(x)
    if math.isnan(x) or math.isinf(x) or x == 0:
        return np.float32(x)
    magnitude = abs(Fraction(x))
    exponent = magnitude.numerator.bit_length() - magnitude.denominator.bit_length()
    if Fraction(2) ** exponent > magnitude:
        exponent -= 1
    quantum = Fraction(2) ** (max(exponent, -126) - m)
    truncated = math.floor(magnitude / quantum) * quantum
    return np.float32(math.copysign(float(truncated), x))


def truncating_dot(a_row, b_col, m: int, block_k: int = 1) -> np.float32:
    acc = np.float32(0.0)
    with np.errstate(all="ignore"):
        for k0 in range(0, len(a_row), block_k):
            if block_k == 1:
                term = np.float32(np.float32(a_row[k0]) * np.float32(b_col[k0]))
            else:
                term = np.float32(0.0)
                for a_k, b_k in zip(a_row[k0 : k0 + block_k], b_col[k0 : k0 + block_k]):
                    term = np.float32(term + np.float32(np.float32(a_k) * np.float32(b_k)))
            acc = truncate_scalar(np.float32(acc + term), m)
    return acc


def oracle(a, b, dot) -> np.ndarray:
    out = np.empty((a.shape[0], a.shape[1], b.shape[2]), dtype=np.float32)
    for i in range(a.shape[0]):
        for r in range(a.shape[1]):
            for c in range(b.shape[2]):
                out[i, r, c] = dot(a[i, r], b[i, :, c])
    return out


def flushed(dot, n_terms: int):
    """dot over chunks of n_terms, each chunk's result added into an FP32 accumulator from +0."""
    def run(a_row, b_col):
        acc32 = np.float32(0.0)
        with np.errstate(all="ignore"):
            for k0 in range(0, len(a_row), n_terms):
                acc32 = np.float32(acc32 + dot(a_row[k0 : k0 + n_terms], b_col[k0 : k0 + n_terms]))
        return acc32
    return run


def operands(seed, shape_a=(2, 4, 37), shape_b=(2, 37, 5), tiny=False):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(shape_a, generator=g), torch.randn(shape_b, generator=g)
    if tiny:  # products and sums in FP32's subnormals: the truncation grid there is 2^(-126 - m)
        a = a * 2.0**-70
        b = b * 2.0**-60
    return a, b


@pytest.mark.parametrize("impl", ["fast", "eager"])
@pytest.mark.parametrize("m, block_k, tiny", [(13, 1, False), (4, 1, False), (7, 8, False), (13, 1, True),
                                               (3, 4, True)])
def test_truncating_accumulator_against_exact_truncation(impl, m, block_k, tiny):
    a, b = operands(m + block_k, tiny=tiny)
    got = lp_matmul(a, b, f"m{m}", block_k, rounding="toward_zero", impl=impl).numpy()
    want = oracle(a.numpy(), b.numpy(), lambda x, y: truncating_dot(x, y, m, block_k))
    assert same_bits(got, want)


def test_truncation_differs_from_nearest_and_never_rounds_away():
    # the two modes must differ somewhere (else the test above could pass with the nearest rounding)
    a, b = operands(3)
    rz = lp_matmul(a, b, "m4", rounding="toward_zero")
    rn = lp_matmul(a, b, "m4")
    assert not torch.equal(rz, rn)
    x, ones = torch.tensor([[1.0, 0.0625 * 1.9]]), torch.ones(2, 1)  # 1 + 0.11875: 17.9 steps of 1/16 above 0
    assert lp_matmul(x, ones, "m4", rounding="toward_zero").item() == 1.0625  # 17 steps
    assert lp_matmul(x, ones, "m4").item() == 1.125  # 18 steps


@pytest.mark.parametrize("impl", ["fast", "eager"])
@pytest.mark.parametrize("name, block_k, flush_every, rounding", [
    ("m4", 1, 1, "nearest"), ("m4", 1, 4, "nearest"), ("m7", 4, 2, "nearest"), ("fp16", 1, 16, "nearest"),
    ("m13", 1, 4, "toward_zero"), ("m13", 1, 64, "toward_zero")])
def test_flush_every_against_the_two_level_oracle(impl, name, block_k, flush_every, rounding):
    a, b = operands(flush_every + block_k, shape_a=(1, 3, 70), shape_b=(1, 70, 4))
    spec = SPECS[name]
    m = spec.m
    if rounding == "toward_zero":
        def dot(x, y):
            return truncating_dot(x, y, m, block_k)
    elif block_k == 1:
        def dot(x, y):
            return strict_dot(x, y, spec)
    else:
        def dot(x, y):
            return blocked_dot(x, y, spec, block_k)
    got = lp_matmul(a, b, name, block_k, rounding=rounding, flush_every=flush_every, impl=impl).numpy()
    want = oracle(a.numpy(), b.numpy(), flushed(dot, flush_every * block_k))
    assert same_bits(got, want)


def test_flushing_every_chunk_is_more_accurate_than_never():
    a, b = operands(9, shape_a=(1, 8, 512), shape_b=(1, 512, 8))
    exact = torch.matmul(a.double(), b.double())
    never = (lp_matmul(a, b, "m13", rounding="toward_zero").double() - exact).abs().mean()
    often = (lp_matmul(a, b, "m13", rounding="toward_zero", flush_every=4).double() - exact).abs().mean()
    assert often < never / 4


def test_bad_arguments_are_named():
    a, b = torch.zeros(2, 3), torch.zeros(3, 2)
    with pytest.raises(ValueError, match="rounding must be one of"):
        lp_matmul(a, b, "m4", rounding="up")
    with pytest.raises(ValueError, match="rounding='toward_zero' needs a format with FP32's exponent range.*fp16"):
        lp_matmul(a, b, "fp16", rounding="toward_zero")
    with pytest.raises(ValueError, match="flush_every must be >= 1"):
        lp_matmul(a, b, "m4", flush_every=0)
    with pytest.raises(TypeError, match="flush_every must be an int"):
        lp_matmul(a, b, "m4", flush_every=True)
