"""round_to against an exact rational oracle, ml_dtypes casts, and hypothesis properties."""

from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import SPECS, round_array, same_bits

from lampc import formats
from lampc.numerics import round_to, round_to_

M_VALUES = [1, 2, 3, 4, 7, 10, 16, 22, 23]
NAMED = ["fp32", "tf32", "bf16", "fp16", "fp8_e4m3", "fp8_e5m2"]
ALL_FORMATS = [f"m{m}" for m in M_VALUES] + NAMED


def _as_f32(values) -> np.ndarray:
    with np.errstate(over="ignore"):  # values past FP32's range become inf: also worth testing
        return np.asarray(values, dtype=np.float32)


def _check_against_oracle(values: np.ndarray, name: str) -> None:
    got = round_to(torch.from_numpy(values.copy()), name).numpy()
    want = round_array(values, SPECS[name])
    bad = ~(np.isnan(got) & np.isnan(want)) & (got.view(np.int32) != want.view(np.int32))
    assert not bad.any(), f"{name}: inputs {values[bad][:5]} -> {got[bad][:5]}, want {want[bad][:5]}"


def _random_patterns(n: int, seed: int) -> np.ndarray:
    """Float32 values from uniformly random bit patterns (all exponents, NaN, inf, subnormals)."""
    rng = np.random.default_rng(seed)
    return rng.integers(-(2**31), 2**31, size=n, dtype=np.int64).astype(np.int32).view(np.float32)


def _random_near(scale: float, n: int, seed: int) -> np.ndarray:
    """Values of magnitude around `scale`: where a format's range edges and grid live."""
    rng = np.random.default_rng(seed)
    return _as_f32(rng.standard_normal(n) * scale * np.exp2(rng.integers(-3, 4, n)))


@pytest.mark.parametrize("name", ALL_FORMATS)
def test_random_bit_patterns_match_rational_oracle(name):
    _check_against_oracle(_random_patterns(1500, seed=hash(name) % 1000), name)


@pytest.mark.parametrize("name", ALL_FORMATS)
def test_values_near_range_edges_match_rational_oracle(name):
    fmt = formats.parse(name)
    for i, scale in enumerate([1.0, fmt.min_normal, fmt.min_subnormal, fmt.max_finite / 4]):
        _check_against_oracle(_random_near(scale, 300, seed=i), name)


def _ties(fmt: formats.Format, exponents, rng) -> np.ndarray:
    """Exact halfway points between neighbours on fmt's grid, both even and odd lower neighbour,
    and their float32 neighbours one ulp away."""
    values = []
    for exponent in exponents:
        quantum = Fraction(2) ** (max(exponent, fmt.emin) - fmt.m_bits)
        low = Fraction(2) ** exponent if exponent >= fmt.emin else Fraction(0)
        for _ in range(4):
            units = int(rng.integers(0, 2**fmt.m_bits))
            for parity in (0, 1):  # lower neighbour even / odd
                k = units - units % 2 + parity
                tie = low + (k + Fraction(1, 2)) * quantum
                values.append(float(tie))
    ties = _as_f32(values)
    assert np.all(ties.astype(np.float64) == np.array(values)), "ties must be exact in float32"
    up = np.nextafter(ties, np.float32(np.inf))
    down = np.nextafter(ties, np.float32(0))
    return np.concatenate([ties, -ties, up, down])


@pytest.mark.parametrize("name", [f"m{m}" for m in M_VALUES if m < 23] + NAMED[1:])
def test_exact_ties_round_to_even(name):
    fmt = formats.parse(name)
    rng = np.random.default_rng(7)
    exponents = range(fmt.emin - 3, fmt.emin + 3) if fmt.m_bits < 22 else range(fmt.emin, fmt.emin + 2)
    near_one = _ties(fmt, [-2, 0, 5], rng)
    near_subnormal = _ties(fmt, [e for e in exponents if e - fmt.m_bits >= -149], rng)
    _check_against_oracle(np.concatenate([near_one, near_subnormal]), name)


def test_tie_examples_by_hand():
    x = torch.tensor([1.0 + 2**-5, 1.0 + 3 * 2**-5, -(1.0 + 2**-5), 1.0 + 2**-5 + 2**-23])
    # m4 grid near 1 is 1/16: 1+1/32 -> 1 (even), 1+3/32 -> 1+2/16 (even), sign kept, above tie -> up
    assert round_to(x, "m4").tolist() == [1.0, 1.125, -1.0, 1.0625]


@pytest.mark.parametrize("name", ALL_FORMATS)
def test_special_values(name):
    fmt = formats.parse(name)
    specials = _as_f32([0.0, -0.0, np.inf, -np.inf, np.nan, fmt.max_finite, -fmt.max_finite])
    got = round_to(torch.from_numpy(specials), name).numpy()
    assert got[0] == 0 and not np.signbit(got[0])
    assert got[1] == 0 and np.signbit(got[1])
    if fmt.finite_only:
        assert np.isnan(got[2:5]).all()
    else:
        assert got[2] == np.inf and got[3] == -np.inf and np.isnan(got[4])
    assert got[5] == np.float32(fmt.max_finite) and got[6] == -np.float32(fmt.max_finite)


@pytest.mark.parametrize("name", [n for n in ALL_FORMATS if not formats.parse(n).is_identity])
def test_overflow_boundary(name):
    fmt = formats.parse(name)
    threshold = _as_f32(fmt.overflow_threshold)
    just_below = np.nextafter(threshold, np.float32(0))
    got = round_to(torch.from_numpy(_as_f32([just_below, threshold, -threshold])), name).numpy()
    assert got[0] == np.float32(fmt.max_finite)
    if fmt.finite_only:
        assert np.isnan(got[1:]).all()
    else:
        assert got[1] == np.inf and got[2] == -np.inf


@pytest.mark.parametrize("name", ["fp16", "fp8_e4m3", "fp8_e5m2", "m4", "m10", "bf16"])
def test_subnormal_boundaries(name):
    fmt = formats.parse(name)
    tiny = fmt.min_subnormal
    values = _as_f32([tiny, tiny / 2, tiny * 0.75, tiny * 1.5, tiny * 2.5,
                      fmt.min_normal - tiny / 2, fmt.min_normal - tiny, fmt.min_normal])
    want = _as_f32([tiny, 0.0, tiny, 2 * tiny, 2 * tiny,
                    fmt.min_normal, fmt.min_normal - tiny, fmt.min_normal])
    got = round_to(torch.from_numpy(np.concatenate([values, -values])), name).numpy()
    assert same_bits(got, np.concatenate([want, -want]))


def test_mantissa_only_rounds_fp32_subnormals_on_the_extended_grid():
    # m4 keeps FP32's emin = -126, so FP32 subnormals land on multiples of 2^(-126-4).
    x = torch.tensor([2.0**-149, 2.0**-131, 3 * 2.0**-131, 2.0**-130, 2.0**-126 - 2.0**-149])
    assert round_to(x, "m4").tolist() == [0.0, 0.0, 2.0**-129, 2.0**-130, 2.0**-126]


@pytest.mark.parametrize(
    "name, dtype",
    [("bf16", ml_dtypes.bfloat16), ("fp16", np.float16),
     ("fp8_e4m3", ml_dtypes.float8_e4m3fn), ("fp8_e5m2", ml_dtypes.float8_e5m2)],
)
def test_matches_ml_dtypes_casts(name, dtype):
    values = np.concatenate([
        _random_patterns(20000, seed=1),
        _random_near(formats.parse(name).min_normal, 5000, seed=2),
        _random_near(formats.parse(name).max_finite, 5000, seed=3),
        _random_near(1.0, 5000, seed=4),
    ])
    with np.errstate(all="ignore"):
        want = values.astype(dtype).astype(np.float32)
    got = round_to(torch.from_numpy(values), name).numpy()
    assert same_bits(got, want)


def test_round_to_leaves_input_and_round_to__is_in_place():
    x = torch.tensor([1.1, -2.3, 1e-3], dtype=torch.float32)
    before = x.clone()
    rounded = round_to(x, "m3")
    assert torch.equal(x, before)
    same = round_to_(x, formats.mantissa_only(3))
    assert same is x and torch.equal(x, rounded)


def test_round_to_keeps_shape_and_handles_strided_and_empty():
    x = torch.randn(3, 4, 5).transpose(0, 2)
    assert torch.equal(round_to(x, "bf16"), round_to(x.contiguous(), "bf16"))
    assert round_to(torch.empty(0, 3), "m2").shape == (0, 3)


@pytest.mark.parametrize("bad", [torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.int32)])
def test_round_to_rejects_other_dtypes(bad):
    with pytest.raises(TypeError, match=r"x must have dtype torch.float32"):
        round_to(bad, "m4")
    with pytest.raises(TypeError, match=r"\bx\b"):
        round_to_(bad, "m4")


def test_round_to_rejects_unknown_format():
    with pytest.raises(ValueError, match="valid names"):
        round_to(torch.zeros(2), "m30")


# -- properties ---------------------------------------------------------------------------------

finite_or_not = st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True)
format_names = st.sampled_from(ALL_FORMATS)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(finite_or_not, min_size=1, max_size=64), name=format_names)
def test_idempotent_and_sign_symmetric(values, name):
    x = torch.tensor(values, dtype=torch.float32)
    once = round_to(x, name)
    assert same_bits(round_to(once, name).numpy(), once.numpy())
    assert same_bits(round_to(-x, name).numpy(), (-once).numpy())


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.floats(width=32, allow_nan=False), min_size=2, max_size=64), name=format_names)
def test_monotone(values, name):
    x = torch.tensor(sorted(values), dtype=torch.float32)
    rounded = round_to(x, name)
    finite_or_inf = rounded[~torch.isnan(rounded)]  # e4m3 overflow gives NaN: outside the order
    assert torch.all(finite_or_inf[1:] >= finite_or_inf[:-1])
