"""lp_matmul against the scalar-loop oracle (bit for bit), error bounds derived from m, native_matmul.

Every test runs twice: with the fast kernel (the default) and with the readable reference (impl="eager"), each
against the oracle."""

import warnings

import ml_dtypes
import numpy as np
import pytest
import torch
from oracles import SPECS, accumulation_bound, matmul_oracle, same_bits

from lampc import formats
from lampc.numerics import accumulate, lp_matmul, native_matmul

U32 = 2.0**-24  # FP32 unit roundoff

SHAPES = [  # (a shape, b shape): batched, broadcast, 1-D and degenerate cases
    ((3, 5), (5, 4)),
    ((2, 3, 7), (2, 7, 4)),
    ((2, 1, 3, 9), (4, 9, 2)),
    ((6,), (6, 3)),
    ((2, 4, 5), (5,)),
    ((1, 1), (1, 1)),
]


@pytest.fixture(autouse=True, params=["fast", "eager"])
def impl(request, monkeypatch):
    """lp_matmul's default implementation for this test (the tests call it without impl=)."""
    monkeypatch.setattr(accumulate, "DEFAULT_IMPL", request.param)
    return request.param


def _randn(shape, seed, scale=1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator) * scale


def _oracle(a: torch.Tensor, b: torch.Tensor, name: str, block_k: int = 1) -> np.ndarray:
    a_np = a.numpy()[None, :] if a.dim() == 1 else a.numpy()
    b_np = b.numpy()[:, None] if b.dim() == 1 else b.numpy()
    out = matmul_oracle(a_np, b_np, SPECS[name], block_k)
    if a.dim() == 1:
        out = out[..., 0, :]
    if b.dim() == 1:
        out = out[..., 0]
    return out


@pytest.mark.parametrize("shapes", SHAPES, ids=str)
@pytest.mark.parametrize("name", ["m1", "m4", "m7", "m10", "m22", "bf16", "fp16", "tf32"])
def test_strict_matches_scalar_oracle_bit_for_bit(shapes, name):
    a, b = _randn(shapes[0], 1), _randn(shapes[1], 2)
    got = lp_matmul(a, b, name)
    want = _oracle(a, b, name)
    assert got.shape == torch.matmul(a, b).shape
    assert same_bits(got.numpy(), want)


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp8_e5m2", "fp16", "m3"])
def test_strict_matches_oracle_across_range_edges(name):
    # Scale so that some sums overflow the format and some products fall into its subnormals.
    fmt = formats.parse(name)
    a = _randn((2, 4, 12), 3) * torch.tensor([fmt.max_finite / 8, fmt.min_normal, 1.0, 2.0]).view(1, 4, 1)
    b = _randn((2, 12, 3), 4)
    assert same_bits(lp_matmul(a, b, name).numpy(), _oracle(a, b, name))


def test_strict_propagates_nan_and_inf_even_with_odd_nan_payloads():
    a = _randn((3, 6), 5)
    odd_nan = np.array([0x7FFFFFFF], dtype=np.int32).view(np.float32)[0]  # all payload bits set
    a[0, 2] = float(odd_nan)
    a[1, 4] = float("inf")
    b = _randn((6, 2), 6).abs()
    got = lp_matmul(a, b, "m1")
    assert torch.isnan(got[0]).all()
    assert torch.isposinf(got[1]).all()
    assert same_bits(got.numpy(), _oracle(a, b, "m1"))


@pytest.mark.parametrize("block_k", [2, 3, 5, 8, 11, 40])
@pytest.mark.parametrize("name", ["m2", "m4", "fp16", "fp8_e5m2"])
def test_blocked_matches_oracle_when_block_sums_are_exact(block_k, name):
    # Small integers: every FP32 block sum is exact in any order; the low-m accumulator still rounds (sums exceed
    # 2^(m+1)).
    generator = torch.Generator().manual_seed(block_k)
    a = torch.randint(-7, 8, (2, 3, 11), generator=generator).float()
    b = torch.randint(-7, 8, (2, 11, 4), generator=generator).float()
    got = lp_matmul(a, b, name, block_k=block_k)
    assert same_bits(got.numpy(), _oracle(a, b, name, block_k))


@pytest.mark.parametrize("block_k", [4, 7, 32])
@pytest.mark.parametrize("m", [3, 7, 10])
def test_blocked_matches_oracle_on_random_inputs(block_k, m):
    """The block sums are sequential FP32 sums in k order (docs/NUMERICS.md §3), as in the oracle: bit for bit on
    random inputs too, where the FP32 block sums round (a BLAS order or an FMA would differ in their last bits)."""
    name = f"m{m}"
    a, b = _randn((2, 5, 37), 7), _randn((2, 37, 6), 8)
    assert same_bits(lp_matmul(a, b, name, block_k=block_k).numpy(), _oracle(a, b, name, block_k))


@pytest.mark.parametrize("m", [2, 4, 10, 16])
@pytest.mark.parametrize("block_k", [1, 16])
def test_error_bound_against_exact_dot(m, block_k):
    """|acc - exact| <= ((1+u_m)^n (1+u32)^(K+1) - 1) sum|a_k b_k|, n = number of accumulator roundings."""
    a, b = _randn((3, 8, 64), 9), _randn((3, 64, 8), 10)
    exact = torch.matmul(a.double(), b.double())
    magnitude = torch.matmul(a.double().abs(), b.double().abs())
    got = lp_matmul(a, b, f"m{m}", block_k=block_k).double()
    u = 2.0 ** -(m + 1)
    n_roundings = -(-64 // block_k)
    bound = accumulation_bound(n_roundings, u, 64 + 1)
    assert torch.all((got - exact).abs() <= bound * magnitude)


@pytest.mark.parametrize("fmt", ["m23", "fp32", formats.FP32])
@pytest.mark.parametrize("block_k", [1, 8])
def test_identity_format_is_torch_matmul(fmt, block_k):
    a, b = _randn((2, 3, 16), 11), _randn((2, 16, 5), 12)
    assert torch.equal(lp_matmul(a, b, fmt, block_k=block_k), torch.matmul(a, b))


def test_m22_is_close_to_fp32_matmul():
    a, b = _randn((4, 32, 64), 13), _randn((4, 64, 32), 14)
    got = lp_matmul(a, b, "m22").double()
    magnitude = torch.matmul(a.double().abs(), b.double().abs())
    # m22 strict and an FP32 matmul (any order) are each within their bound of the exact dot.
    bound = accumulation_bound(64, 2.0**-23, 65) + accumulation_bound(0, 0.0, 64)
    assert torch.all((got - torch.matmul(a, b).double()).abs() <= bound * magnitude)


def test_large_shape_uses_tiles_and_still_matches_oracle_rows():
    a, b = _randn((2, 300, 5), 15), _randn((2, 5, 400), 16)  # more than one row tile per batch
    got = lp_matmul(a, b, "m3")
    rows = [0, 161, 299]
    want = _oracle(a[:, rows], b[:, :, :7], "m3")
    assert same_bits(got[:, rows, :7].numpy(), want)


# -- native dtype path --------------------------------------------------------------------------


@pytest.mark.parametrize("name, np_dtype", [("bf16", ml_dtypes.bfloat16), ("fp16", np.float16)])
def test_native_matmul_rounds_inputs_and_output(name, np_dtype):
    """native = RN_dtype(FP32 dot of dtype-rounded inputs): within u_dtype |ref| + (1 + u_dtype) *
    accumulation_bound(K in FP32) * sum|a_k b_k| of the float64 dot of the dtype-rounded inputs."""
    a, b = _randn((2, 6, 48), 17), _randn((2, 48, 5), 18)
    a_rounded = a.numpy().astype(np_dtype).astype(np.float64)
    b_rounded = b.numpy().astype(np_dtype).astype(np.float64)
    reference = torch.from_numpy(a_rounded @ b_rounded)
    magnitude = torch.from_numpy(np.abs(a_rounded) @ np.abs(b_rounded))
    u = formats.parse(name).unit_roundoff
    got = native_matmul(a, b, name)
    assert got.dtype == torch.float32 and got.shape == (2, 6, 5)
    bound = u * reference.abs() + (1 + u) * accumulation_bound(0, 0.0, 48) * magnitude
    assert torch.all((got.double() - reference).abs() <= bound)
    on_grid = got.numpy().astype(np_dtype).astype(np.float32)
    assert same_bits(got.numpy(), on_grid), "the output is on the dtype's grid"


def test_native_matmul_fp32_is_matmul():
    a, b = _randn((3, 4), 19), _randn((4, 2), 20)
    assert torch.equal(native_matmul(a, b, "fp32"), torch.matmul(a, b))


@pytest.mark.parametrize("name", ["fp8_e4m3", "m4", "tf32"])
def test_native_matmul_refuses_formats_without_a_native_matmul(name):
    with pytest.raises(ValueError, match="fmt .* no native matmul"):
        native_matmul(torch.zeros(2, 2), torch.zeros(2, 2), name)


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("func", [lambda a, b: lp_matmul(a, b, "m4"), lambda a, b: native_matmul(a, b, "bf16")])
def test_bad_operands_name_the_argument(func):
    good = torch.zeros(2, 3)
    with pytest.raises(TypeError, match=r"^a must have dtype torch.float32"):
        func(good.double(), torch.zeros(3, 2))
    with pytest.raises(TypeError, match=r"^b must have dtype torch.float32"):
        func(good, torch.zeros(3, 2, dtype=torch.float16))
    with pytest.raises(TypeError, match=r"^a must be a torch.Tensor"):
        func([[1.0]], torch.zeros(1, 1))
    with pytest.raises(ValueError, match=r"a.shape\[-1\] = 3 .* b.shape\[-2\] = 4"):
        func(good, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="do not broadcast"):
        func(torch.zeros(2, 2, 3), torch.zeros(3, 3, 2))


@pytest.mark.parametrize("block_k, error", [(0, ValueError), (-2, ValueError), (1.0, TypeError), (True, TypeError)])
def test_bad_block_k(block_k, error):
    with pytest.raises(error, match="block_k"):
        lp_matmul(torch.zeros(2, 3), torch.zeros(3, 2), "m4", block_k=block_k)


def test_unknown_format_names_fmt():
    with pytest.raises(ValueError, match=r"^fmt: unknown format 'm99'.*valid names"):
        lp_matmul(torch.zeros(2, 3), torch.zeros(3, 2), "m99")
    with pytest.raises(ValueError, match=r"^fmt: unknown format"):
        native_matmul(torch.zeros(2, 3), torch.zeros(3, 2), "float7")


def test_unknown_impl_is_refused():
    with pytest.raises(ValueError, match="impl"):
        lp_matmul(torch.zeros(2, 3), torch.zeros(3, 2), "m4", impl="triton")
