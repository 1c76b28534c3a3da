"""The Triton kernels (lampc/kernels/triton_*.py) and the CUDA site (lampc/ops/cuda_site.py) against the CPU reference,
bit for bit: round_to, lp_matmul(impl="eager") and the emulated producer's scores.

They run under Triton's interpreter (TRITON_INTERPRET=1, CPU tensors, numpy underneath; the default here) or, with
TRITON_INTERPRET=0 on a machine with a GPU, on CUDA (bench/gpu.sh runs this file that way). Bits are compared with
NaN positions equal (a NaN's sign and payload are unspecified, lampc/formats.py). The interpreter never contracts a
multiply and an add into an FMA, so the no-FMA promise is checked on the PTX the kernels compile to for a CUDA
target (no GPU needed to compile). Every comparison is paired with a check that its inputs tell the arithmetic
apart: ties-to-away, an FMA or a wrong block boundary would change the reference's bits on them.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

triton = pytest.importorskip("triton", reason="triton is not installed (optional: the CUDA kernels need it)")

import torch  # noqa: E402

from lampc.config.producer import Emulated  # noqa: E402
from lampc.formats import all_formats, parse  # noqa: E402
from lampc.kernels.triton_lp_matmul import NO_FMA, triton_lp_matmul  # noqa: E402
from lampc.kernels.triton_rounding import triton_round_to  # noqa: E402
from lampc.kernels import triton_scores  # noqa: E402
from lampc.kernels.triton_scores import triton_site_scores  # noqa: E402
from lampc.numerics import lp_matmul, round_to  # noqa: E402
from lampc.numerics.error_bounds import product_error_bound  # noqa: E402
from lampc.ops import cuda_site, reset_random  # noqa: E402
from lampc.ops.cuda_site import default_lamp_scores, lamp_scores_cuda, register_cuda  # noqa: E402
from lampc.policy import SitePolicy  # noqa: E402
from lampc.producers.emulated import EmulatedImpl  # noqa: E402

INTERPRETED = os.environ["TRITON_INTERPRET"] == "1"
if not INTERPRETED and not torch.cuda.is_available():
    pytest.skip("TRITON_INTERPRET=0 and no CUDA device: no way to launch a Triton kernel", allow_module_level=True)
DEVICE = "cpu" if INTERPRETED else "cuda"

# the interpreter's numpy warns where the adversarial inputs overflow or meet inf - inf: expected, not a fault
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")]
"""(the last: torch's own inductor import, which the native producer's default path loads)"""

ALL_FORMATS = [f.name for f in all_formats()]
MATMUL_FORMATS = ["m1", "m2", "m4", "m7", "m10", "m16", "m20", "m22", "m23", "bf16", "tf32", "fp16", "fp8_e4m3",
                  "fp8_e5m2"]
"""The matmul tests' sample: every named format, m1..m23 at both ends and in between (the interpreter is slow)."""
U32 = 2.0**-24


def reference(a, b, fmt, block_k: int = 1) -> torch.Tensor:
    """The readable reference of the emulated producer (lampc/numerics/accumulate_reference.py)."""
    return lp_matmul(a, b, fmt, block_k, impl="eager")


def on_device(*tensors):
    return tuple(t.to(DEVICE) for t in tensors)


def assert_same_bits(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal float32 bit patterns everywhere but at NaNs, and NaN exactly where the reference has one."""
    got, want = got.cpu(), want.cpu()
    assert got.shape == want.shape, (got.shape, want.shape)
    nan_got, nan_want = torch.isnan(got), torch.isnan(want)
    assert torch.equal(nan_got, nan_want), f"NaN at {int((nan_got ^ nan_want).sum())} entries of one side only"
    differ = (got.view(torch.int32) != want.view(torch.int32)) & ~nan_want
    if differ.any():
        where = differ.nonzero()[0].tolist()
        pytest.fail(f"{int(differ.sum())} of {differ.numel()} entries differ; at {where}: got "
                    f"{got[tuple(where)].item()!r}, want {want[tuple(where)].item()!r}")


def bits_of(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64).to(torch.int32).view(torch.float32)


# -- rounding -------------------------------------------------------------------------------------------------------


def rounding_inputs(fmt_name: str) -> torch.Tensor:
    """Random bit patterns (every exponent, NaN payloads, FP32 subnormals) and the format's hard cases: exact ties
    of its grid (normal and subnormal ranges, both parities of the kept bit) and their neighbours, the overflow
    threshold and max finite, infinities, zeros, NaNs with payloads."""
    fmt = parse(fmt_name)
    g = torch.Generator().manual_seed(0)
    random_bits = torch.randint(-2**31, 2**31, (8192,), generator=g, dtype=torch.int64).to(torch.int32)
    if fmt.is_mantissa_only or fmt.exp_bits == 8:
        binades = [*range(-152, -118), *range(-8, 9), *range(118, 128)]
    else:
        binades = list(range(fmt.emin - fmt.m_bits - 3, fmt.emax + 2))
    ties = []
    for e in binades:
        spacing = 2.0 ** (max(e, fmt.emin) - fmt.m_bits)
        n = torch.randint(0, 2 ** (fmt.m_bits + 1), (24,), generator=g, dtype=torch.float64)
        ties.append(2.0**e + (n + 0.5) * spacing)
    ties = torch.cat(ties)
    ties = ties[ties < 2.0**128]
    exact = ties.to(torch.float32).to(torch.float64) == ties  # ties finer than FP32's grid are not inputs
    ties = ties[exact].to(torch.float32)
    ties = torch.cat([ties, -ties])
    neighbours = torch.cat([torch.nextafter(ties, torch.full_like(ties, math.inf)),
                            torch.nextafter(ties, torch.zeros_like(ties))])
    limits = torch.tensor([fmt.max_finite, fmt.overflow_threshold, fmt.min_normal, fmt.min_subnormal,
                           fmt.min_subnormal / 2], dtype=torch.float64)
    limits = limits[limits < 2.0**128].to(torch.float32)
    limits = torch.cat([limits, torch.nextafter(limits, torch.zeros_like(limits)),
                        torch.nextafter(limits, torch.full_like(limits, math.inf))])
    specials = bits_of([0, -2**31, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FA00001,
                        0x7FFFFFFF, 0xFFFFFFFF, 1, 0x807FFFFF, 0x00800000])
    return torch.cat([random_bits.view(torch.float32), ties, neighbours, limits, -limits, specials])


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_rounding_matches_round_to(fmt):
    x = rounding_inputs(fmt)
    assert_same_bits(triton_round_to(*on_device(x), fmt), round_to(x, fmt))


def _ties_away(x: torch.Tensor, dropped: int) -> torch.Tensor:
    """Round half away from zero to `dropped` fewer mantissa bits (QPyTorch's rounding): not the reference's."""
    bits = x.clone().view(torch.int32)
    bits.add_(1 << (dropped - 1)).bitwise_and_(-(1 << dropped))
    return bits.view(torch.float32)


@pytest.mark.parametrize("fmt", ["m1", "m4", "bf16", "fp16", "fp8_e4m3"])
def test_the_rounding_inputs_hold_ties_overflow_and_subnormals(fmt):
    """Ties-away rounding differs from the reference on these inputs, and they reach the format's overflow and
    (for a format with its own range) its subnormals: a kernel rounding any of them wrong fails the test above."""
    f = parse(fmt)
    x = rounding_inputs(fmt)
    want = round_to(x, fmt)
    normal = torch.isfinite(x) & (x.abs() >= f.min_normal) & (x.abs() < f.max_finite)
    assert not torch.equal(_ties_away(x[normal], 23 - f.m_bits), want[normal])
    assert (~torch.isfinite(want) & torch.isfinite(x)).any()  # overflow to inf (or NaN, finite-only formats)
    if not f.is_mantissa_only and f.exp_bits < 8:
        subnormal = (want != 0) & (want.abs() < f.min_normal)
        assert subnormal.any() and (want[subnormal].abs() > f.min_subnormal).any()


# -- the emulated producer ------------------------------------------------------------------------------------------


def matmul_cases(fmt_name: str, rows: int = 12, inner: int = 21, cols: int = 10, seed: int = 0):
    """(a, b), a batch of five cases (B = 5, M x K @ K x N): random normal; small integers (exact products, the
    accumulator meets ties); large values (the format overflows); small ones (its subnormal range); non-finite
    entries (NaN with payloads, ±inf, 0·inf)."""
    fmt = parse(fmt_name)
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(5, rows, inner, generator=g)
    b = torch.randn(5, inner, cols, generator=g)
    a[1] = torch.randint(-4, 5, (rows, inner), generator=g).float()
    b[1] = torch.randint(-4, 5, (inner, cols), generator=g).float()
    big, small = math.sqrt(min(fmt.max_finite, 3e38) / 8), math.sqrt(fmt.min_normal)
    a[2], b[2] = a[2] * big, b[2] * big
    a[3], b[3] = a[3] * small, b[3] * small
    a[4, 0, 3], a[4, 1, 5], b[4, 2, 4] = math.nan, math.inf, -math.inf
    b[4, 7, 1] = bits_of([0x7FA00001])[0]  # a NaN with a payload
    a[4, 2, 6], b[4, 6, 2:5] = 0.0, math.inf  # 0 * inf
    return a, b


@pytest.mark.parametrize("fmt", MATMUL_FORMATS)
def test_strict_matches_lp_matmul(fmt):
    a, b = matmul_cases(fmt)
    want = reference(a, b, fmt, 1)
    assert_same_bits(triton_lp_matmul(*on_device(a, b), fmt, 1), want)
    if not parse(fmt).is_identity:  # the cases reach what they are for
        assert torch.isnan(want[4]).any() and not torch.isfinite(want[2]).all()
        tiny = want[3][(want[3] != 0) & torch.isfinite(want[3])].abs()
        assert (tiny < 2 * parse(fmt).min_normal).any()


def _strict_loop(a, b, rounding, fused: bool = False):
    """The strict recurrence in float64 steps rounded to float32, with a chosen rounding; fused=True rounds
    acc + a·b once to FP32 (an FMA) instead of the product and then the sum."""
    acc = torch.zeros(a.shape[0], a.shape[1], b.shape[2], dtype=torch.float32)
    for k in range(a.shape[2]):
        product = a[:, :, k, None].double() * b[:, None, k, :].double()  # exact
        if not fused:
            product = product.float().double()
        acc = rounding((acc.double() + product).float())
    return acc


def test_the_matmul_cases_tell_fma_and_ties_away_apart():
    """The strict test's inputs would catch an FMA-contracted kernel (m20, random case) and ties-away rounding of
    the accumulator (m2, integer case); the loop used here is the reference's when given its arithmetic."""
    a, b = matmul_cases("m20")
    m20 = lambda x: round_to(x, "m20")  # noqa: E731
    assert_same_bits(_strict_loop(a[:1], b[:1], m20), reference(a[:1], b[:1], "m20"))
    assert not torch.equal(_strict_loop(a[:1], b[:1], m20, fused=True), reference(a[:1], b[:1], "m20"))
    a, b = matmul_cases("m2")
    want = reference(a[1:2], b[1:2], "m2")
    assert_same_bits(_strict_loop(a[1:2], b[1:2], lambda x: round_to(x, "m2")), want)
    assert not torch.equal(_strict_loop(a[1:2], b[1:2], lambda x: _ties_away(x, 21)), want)


def exact_block_operands(batch: int = 2, rows: int = 9, inner: int = 37, cols: int = 11, seed: int = 1):
    """Operands whose products and block sums are exact in FP32 (small integers times 2^-2..2^2, nonzero), so any
    summation order gives the same block sums: the blocked kernel must then equal the BLAS-based reference."""
    g = torch.Generator().manual_seed(seed)

    def draw(*shape):
        values = torch.randint(1, 8, shape, generator=g).float() * (torch.randint(0, 2, shape, generator=g) * 2 - 1)
        return values * 2.0 ** torch.randint(-2, 3, shape, generator=g).float()

    return draw(batch, rows, inner), draw(batch, inner, cols)


@pytest.mark.parametrize("fmt", ["m1", "m4", "m10", "m20", "bf16", "fp16", "fp8_e4m3", "fp8_e5m2"])
@pytest.mark.parametrize("block_k", [4, 8, 64])
def test_blocked_matches_lp_matmul_where_block_sums_are_exact(fmt, block_k):
    a, b = exact_block_operands()
    want = reference(a, b, fmt, block_k)
    assert_same_bits(triton_lp_matmul(*on_device(a, b), fmt, block_k), want)


@pytest.mark.parametrize("fmt,block_k", [("m4", 1), ("fp16", 1), ("fp8_e4m3", 1), ("m7", 8), ("fp16", 8)])
def test_the_output_epilogue_matches_the_producers_formula(fmt, block_k):
    """scale and bias applied in registers: RN(fl32(fl32(acc * scale) + bias)) = round_to(lp_matmul * scale + bias)
    (lampc.numerics.lp_product); with a bias that pushes some outputs past fp16's range and the scale 1/sqrt(24)."""
    a, b = exact_block_operands(inner=24)
    bias = torch.randn(b.shape[2], generator=torch.Generator().manual_seed(6)) * 3
    bias[0] = 65504.0  # overflows fp16 (and fp8) after the add
    acc = reference(a, b, fmt, block_k)
    scale = 1 / math.sqrt(24)
    both = round_to(acc * scale + bias, fmt)
    assert parse(fmt).is_mantissa_only or not torch.isfinite(both).all()  # the overflow is among the cases
    assert not torch.equal(round_to(acc * scale, fmt), acc * scale)  # the rounding after the scale matters
    for kwargs, want in ((dict(scale=scale, bias=bias), both),
                         (dict(scale=scale), round_to(acc * scale, fmt)),
                         (dict(bias=bias[None, :].expand(2, -1)[1]), round_to(acc + bias, fmt))):
        got = triton_lp_matmul(*on_device(a, b), fmt, block_k, **{k: v.to(DEVICE) if isinstance(v, torch.Tensor)
                                                                   else v for k, v in kwargs.items()})
        assert_same_bits(got, want)


def test_the_exact_operands_tell_block_boundaries_apart():
    """On these operands a kernel that summed blocks of another size (or strictly) would fail the test above."""
    a, b = exact_block_operands()
    want = reference(a, b, "m4", 8)
    for other in (1, 7, 9):
        assert not torch.equal(reference(a, b, "m4", other), want)


def test_a_block_of_negative_zeros_sums_to_positive_zero():
    """fp16: the first block underflows to -0, the second holds -0 products only. A BLAS sums from +0, so the
    reference's second block sum is +0 and the accumulator +0; summed from the first product it would stay -0."""
    a = torch.tensor([[[-1e-10, -1e-10, 0.0, 0.0]]])
    b = torch.tensor([[[1e-10], [1e-10], [-1.0], [-1.0]]])
    want = reference(a, b, "fp16", 2)
    assert want.item() == 0 and math.copysign(1, want.item()) == 1
    assert math.copysign(1, reference(a, b, "fp16").item()) == -1  # strict: the exact recurrence keeps -0
    assert_same_bits(triton_lp_matmul(*on_device(a, b), "fp16", 2), want)
    assert_same_bits(triton_lp_matmul(*on_device(a, b), "fp16", 1), reference(a, b, "fp16", 1))


@pytest.mark.parametrize("fmt", MATMUL_FORMATS)
def test_blocked_on_random_inputs_is_within_the_error_bounds(fmt):
    """Random operands, K = 21 in blocks of 8 (the last one of 5): block sums differ from the BLAS's by FP32
    rounding, so the two results may differ, by at most the sum of both results' error bounds (docs/NUMERICS.md §9):
    |got - want| <= 2 (γ Σ_k |a_k b_k| + α)."""
    a, b = matmul_cases(fmt)
    a, b = a[:2], b[:2]  # random and integer cases: finite throughout
    got = triton_lp_matmul(*on_device(a, b), fmt, 8).cpu()
    want = reference(a, b, fmt, 8)
    bound = 2 * product_error_bound(a, b, fmt, block_k=8)
    assert ((got - want).abs() <= bound).all()
    assert (got == want).float().mean() > 0.5  # mostly the same bits: not merely within a loose bound


def test_non_contiguous_and_broadcast_operands():
    """Transposed and strided views, an expanded (stride-0) batch, a batch of 1 broadcast against 3: read in place,
    same bits as the reference on contiguous copies; K = 37 not a multiple of the block."""
    g = torch.Generator().manual_seed(3)
    a_base, b_base, a_one = on_device(torch.randn(3, 37, 13, generator=g), torch.randn(3, 37, 22, generator=g),
                                      torch.randn(1, 13, 37, generator=g))  # views are taken on the device
    a_t, b_wide = a_base.transpose(1, 2), b_base[:, :, ::2]  # (3, 13, 37) k-stride 13, (3, 37, 11) n-stride 2
    views = [(a_t, b_wide), (a_one.expand(3, 13, 37), b_wide), (a_one, b_wide), (a_t, b_wide[:1])]
    assert a_one.expand(3, 13, 37).stride(0) == 0 and not a_t.is_contiguous() and not b_wide.is_contiguous()
    for fmt, block_k in (("m4", 1), ("fp16", 1), ("bf16", 8)):
        for a, b in views:
            dense = a.expand(3, 13, 37).contiguous(), b.expand(3, 37, 11).contiguous()
            got = triton_lp_matmul(a, b, fmt, block_k)
            if block_k == 1:
                assert_same_bits(got, reference(*(x.cpu() for x in dense), fmt, block_k))
            else:  # the same block sums as from contiguous operands: the kernel's own result, read another way
                assert_same_bits(got, triton_lp_matmul(*dense, fmt, block_k))


def test_empty_and_degenerate_shapes():
    a, b = torch.randn(2, 5, 0), torch.randn(2, 0, 4)
    assert_same_bits(triton_lp_matmul(*on_device(a, b), "m4"), reference(a, b, "m4"))
    a, b = torch.randn(2, 0, 3), torch.randn(2, 3, 4)
    assert triton_lp_matmul(*on_device(a, b), "m4").shape == (2, 0, 4)
    with pytest.raises(ValueError, match="inner dimensions"):
        triton_lp_matmul(torch.randn(1, 2, 3), torch.randn(1, 4, 2), "m4")
    with pytest.raises(ValueError, match="block_k"):
        triton_lp_matmul(torch.randn(1, 2, 3), torch.randn(1, 3, 2), "m4", 0)


# -- the fused attention site ---------------------------------------------------------------------------------------


def fp32_bound(q, k, scale):
    """|s32 - torch.matmul(q, k) * scale| <= 2 γ_{K+1}(u32) |scale| Σ_k |q_k k_k|: two FP32 sums in different orders,
    each within γ_K of the exact one, then one rounding of the scaling."""
    n = q.shape[-1] + 1
    return 2 * (n * U32 / (1 - n * U32)) * abs(scale) * torch.matmul(q.abs(), k.abs())


@pytest.mark.parametrize("fmt", ["m1", "m4", "m7", "m22", "bf16", "fp16", "fp8_e4m3", "fp8_e5m2"])
def test_site_scores_match_the_emulated_producer(fmt):
    """ŝ bit for bit as EmulatedImpl.scores (scale 1/sqrt(24), not a float32 number: rounded like torch's);
    s32 within the FP32 summation bound of torch.matmul(q, k) * scale."""
    a, b = matmul_cases(fmt, rows=12, inner=24, cols=10)
    scale = 1 / math.sqrt(24)
    s_hat, s32 = triton_site_scores(*on_device(a, b), scale, fmt)
    assert_same_bits(s_hat, round_to(reference(a, b, fmt) * scale, fmt))  # the producer's formula, on the reference
    assert_same_bits(s_hat, EmulatedImpl(Emulated(fmt, 1)).scores(a, b, scale))  # the producer itself
    finite = slice(0, 2)  # the random and integer cases
    want32 = torch.matmul(a[finite], b[finite]) * scale
    assert ((s32.cpu()[finite] - want32).abs() <= fp32_bound(a[finite], b[finite], scale)).all()
    assert torch.equal(torch.isnan(s32.cpu()[4]), torch.isnan(torch.matmul(a[4], b[4])))


@pytest.mark.parametrize("fmt", ["m4", "fp16"])
def test_blocked_site_scores(fmt):
    a, b = exact_block_operands(inner=24)
    s_hat, s32 = triton_site_scores(*on_device(a, b), 0.125, fmt, 8)
    assert_same_bits(s_hat, round_to(reference(a, b, fmt, 8) * 0.125, fmt))
    assert_same_bits(s_hat, EmulatedImpl(Emulated(fmt, 8)).scores(a, b, 0.125))
    assert_same_bits(s32, torch.matmul(a, b) * 0.125)  # exact sums: every order agrees


def site_texts(**policy):
    texts = SitePolicy(**policy).config.texts
    return texts.producer, texts.rule, texts.facts, texts.execution


def attention_operands(batch=2, heads=3, t=20, d=16, seed=4, spread=3.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, t, d, generator=g) * spread
    k_t = torch.randn(batch, 1, d, t, generator=g) * spread  # one key head for every query head (broadcast)
    return q, k_t


@pytest.mark.parametrize("fmt,policy", [("m4", dict(criterion="strict", tau=0.1)),
                                        ("fp8_e4m3", dict(criterion="strict", tau=0.1, block_k=4)),
                                        ("bf16", dict(criterion="budget", budget=3)),
                                        ("m4", dict(criterion="uniform"))])
def test_cuda_site_equals_the_default_implementation(fmt, policy):
    """lamp_scores_cuda against the op's default on the same inputs: the same selection, the same bits where
    nothing is recomputed, FP32 values (within summation order) where something is."""
    q, k_t = attention_operands()
    mask = torch.zeros(1, 1, 20, 20).masked_fill(torch.ones(20, 20, dtype=torch.bool).triu(1), -1e9)
    args = (1 / math.sqrt(16), mask, False, *site_texts(format=fmt, **policy), 0)
    want, want_sel = default_lamp_scores(q, k_t, *args)
    got, got_sel = lamp_scores_cuda(*on_device(q, k_t), *args[:1], *on_device(mask), *args[2:])
    got, got_sel = got.cpu(), got_sel.cpu()
    assert torch.equal(got_sel, want_sel)
    if policy["criterion"] != "uniform":
        assert want_sel.any() and not want_sel.all(), "a vacuous selection would prove nothing"
    assert_same_bits(got[~want_sel], want[~want_sel])
    bound = fp32_bound(q, k_t, args[0]).expand(want.shape)
    assert ((got - want).abs()[want_sel] <= bound[want_sel]).all()


def test_cuda_site_takes_a_shared_weight_as_the_logits_site_has_it():
    """A 2-d kᵀ (the lm_head weight, transposed: strided) under 3-d queries."""
    g = torch.Generator().manual_seed(5)
    x, w = torch.randn(2, 7, 16, generator=g) * 2, torch.randn(40, 16, generator=g) * 2
    args = (1.0, None, False, *site_texts(format="m4", criterion="strict", tau=0.01), 1)
    want, want_sel = default_lamp_scores(x, w.t(), *args)
    got, got_sel = lamp_scores_cuda(*on_device(x, w.t()), *args)
    assert torch.equal(got_sel.cpu(), want_sel) and want_sel.any()
    assert_same_bits(got.cpu()[~want_sel], want[~want_sel])


def test_cuda_site_leaves_other_sites_to_the_default(monkeypatch):
    """A rule that draws or reads the FP32 product, a native producer and an identity format never reach the
    kernel; their results are the default implementation's."""
    def no_kernel(*args):
        raise AssertionError("the Triton kernel ran for a site it does not take")

    q, k_t = attention_operands(t=8, d=8)
    monkeypatch.setattr(EmulatedImpl, "scores_with_fp32", no_kernel)
    others = [dict(format="m4", criterion="random", tau=0.1), dict(format="m4", criterion="oracle", tau=0.1),
              dict(format="bf16", backend="native", criterion="strict", tau=0.1)]
    for policy in others:
        args = (0.35, None, True, *site_texts(**policy), 0)
        reset_random()  # the random rule draws from lampc's outside streams: the same draws for both
        want = default_lamp_scores(q, k_t, *args)
        reset_random()
        got = lamp_scores_cuda(q, k_t, *args)
        assert all(torch.equal(g, w) for g, w in zip(got, want)), policy
    monkeypatch.undo()
    monkeypatch.setattr(triton_scores, "triton_site_scores", no_kernel)  # the identity format: no kernel either
    args = (0.35, None, True, *site_texts(format="m23", criterion="strict", tau=0.1), 0)
    assert all(torch.equal(g, w) for g, w in zip(lamp_scores_cuda(q, k_t, *args), default_lamp_scores(q, k_t, *args)))


def test_register_cuda_needs_cuda_and_triton():
    if torch.cuda.is_available():
        assert register_cuda() is True and register_cuda() is True  # idempotent
    else:
        assert register_cuda() is False


def test_without_triton_nothing_registers():
    """triton is optional: blocked from import, `import lampc` and the op modules still work, the kernel modules
    raise an ImportError that says what is missing (what lampc/numerics/fast.py catches), and register_cuda() is
    False even where torch sees a GPU."""
    script = textwrap.dedent("""
        import sys
        sys.modules["triton"] = None
        import torch
        torch.cuda.is_available = lambda: True
        import lampc
        from lampc.ops.cuda_site import register_cuda
        for name in ("triton_rounding", "triton_lp_matmul", "triton_scores"):
            try:
                __import__(f"lampc.kernels.{name}")
            except ImportError as err:
                assert "pip install triton" in str(err), err
            else:
                raise AssertionError(f"lampc.kernels.{name} imported without triton")
        assert register_cuda() is False
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


# -- no FMA on the GPU ----------------------------------------------------------------------------------------------

PTX_PROBE = textwrap.dedent("""
    import json, sys
    import triton
    from triton.backends.compiler import GPUTarget
    from lampc.kernels import triton_lp_matmul, triton_rounding, triton_scores
    if "nvidia" not in triton.backends.backends:
        print(json.dumps({"skip": "triton has no NVIDIA backend"})); sys.exit()
    out = {}
    for name, kernel in (("lp_matmul", triton_lp_matmul._lp_matmul_kernel),
                         ("site_scores", triton_scores._site_scores_kernel)):
        for block_sum, fmt in ((1, "m4"), (8, "fp16")):
            constants = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_SUM": block_sum,
                         **triton_rounding.rounding_constants(fmt)}
            constants.update({flag: True for flag in ("HAS_SCALE", "HAS_BIAS") if flag in kernel.arg_names})
            signature = {arg: "constexpr" if arg in constants else "*fp32" if arg.endswith("_ptr")
                         else "fp32" if arg == "scale" else "i32" for arg in kernel.arg_names}
            for fusion in (False, True):
                options = {**triton_lp_matmul.NO_FMA, "enable_fp_fusion": fusion, "num_warps": 4}
                source = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constants)
                ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]
                out[f"{name} {block_sum} {fmt} {fusion}"] = [ptx.count("fma."), ptx.count(".ftz"),
                                                             ptx.count("add.rn.f32")]
    print(json.dumps(out))
""")


def test_the_kernels_compile_for_cuda_without_fma():
    """Compiled for sm_90 (no GPU needed): with the launch options (NO_FMA) the PTX has separately rounded adds and
    no FMA and no flush-to-zero; Triton's default (fusion on) would contract them into FMAs."""
    import json

    env = {**os.environ, "TRITON_INTERPRET": "0"}
    done = subprocess.run([sys.executable, "-c", PTX_PROBE], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    if "skip" in found:
        pytest.skip(found["skip"])
    assert NO_FMA == {"enable_fp_fusion": False}
    for key, (fmas, ftz, adds) in found.items():
        if key.endswith("False"):
            assert fmas == 0 and ftz == 0 and adds > 0, key
        else:
            assert fmas > 0, key  # the check above can fail: fusion on, FMAs appear
