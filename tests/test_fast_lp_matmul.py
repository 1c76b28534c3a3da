"""The fast lp_matmul (the C kernel behind lampc::lp_matmul) against the eager reference, bit for bit.

Every format, strict and blocked, random and adversarial inputs (exact ties, overflow, subnormals, NaN and inf),
K not a multiple of the block, shapes that leave ragged register blocks and panels, non-contiguous and broadcast
batch dimensions, attention and linear shapes, 1 and 2 threads. The reference itself is checked against the
scalar oracle in tests/test_lp_matmul.py; a few cases here also go to the oracle directly. NaNs must sit at the
same places (their sign and payload are unspecified, docs/NUMERICS.md).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from oracles import SPECS, matmul_oracle

from lampc import formats
from lampc.kernels import cpu as cpu_kernel, cpu_build
from lampc.numerics import accumulate_reference, fast, lp_matmul, lp_product, round_to

@pytest.fixture(autouse=True)
def kernel_is_built():
    """Every test here compares the C kernel with the reference: without it they would compare the reference with
    itself (the tests that take the kernel away restore it)."""
    assert cpu_kernel.available() is None, cpu_kernel.available()


FORMATS = ["m1", "m2", "m4", "m7", "m10", "m13", "m22", "bf16", "tf32", "fp16", "fp8_e4m3", "fp8_e5m2"]


def same_bits_or_both_nan(x: torch.Tensor, y: torch.Tensor) -> bool:
    assert x.shape == y.shape, (x.shape, y.shape)
    both_nan = torch.isnan(x) & torch.isnan(y)
    return bool(((x.view(torch.int32) == y.view(torch.int32)) | both_nan).all())


def both(a, b, name, block_k=1):
    """(fast, eager) results, failing if the fast path warned (a silent fallback would make the test vacuous)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="lp_matmul")
        got = lp_matmul(a, b, name, block_k, impl="fast")
    return got, lp_matmul(a, b, name, block_k, impl="eager")


def gen(seed):
    return torch.Generator().manual_seed(seed)


def adversarial(shape, fmt, seed):
    """Values on a coarse dyadic grid (so partial sums hit exact ties of the format), spread over its range:
    some near the overflow threshold, some in its subnormals and FP32's, a few inf, -inf and NaN."""
    g = gen(seed)
    ints = torch.randint(-64, 65, shape, generator=g).float()
    exps = torch.randint(-3, 4, shape, generator=g).float()
    x = ints * torch.exp2(exps)
    flat = x.view(-1)
    n = flat.numel()
    picks = torch.randperm(n, generator=g)
    scale_big = fmt.max_finite / 64 if fmt.max_finite < 1e38 else 2.0**120
    flat[picks[: n // 10]] *= scale_big
    flat[picks[n // 10 : n // 5]] *= fmt.min_subnormal * 4
    flat[picks[n // 5 : n // 5 + n // 20]] *= 2.0**-140  # FP32 subnormal products
    specials = picks[n // 5 + n // 20 :][:3]
    for index, value in zip(specials.tolist(), (float("inf"), float("-inf"), float("nan"))):
        flat[index] = value
    return x


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("block_k", [1, 3, 32])
def test_random_inputs_every_format(name, block_k):
    g = gen(1)
    a = torch.randn(3, 13, 70, generator=g) * torch.exp(torch.randn(3, 13, 70, generator=g) * 2)
    b = torch.randn(3, 70, 45, generator=g)
    got, want = both(a, b, name, block_k)
    assert same_bits_or_both_nan(got, want)


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("block_k", [1, 5])
def test_adversarial_inputs_every_format(name, block_k):
    fmt = formats.parse(name)
    a, b = adversarial((2, 19, 37), fmt, 2), adversarial((2, 37, 41), fmt, 3)
    got, want = both(a, b, name, block_k)
    assert same_bits_or_both_nan(got, want)
    assert bool(torch.isnan(got).any()) and bool(torch.isinf(got).any() or fmt.finite_only)  # the edges were hit


@pytest.mark.parametrize("name", ["m3", "fp16", "fp8_e4m3"])
def test_strict_equals_scalar_oracle_on_adversarial_inputs(name):
    fmt = formats.parse(name)
    a, b = adversarial((1, 7, 23), fmt, 4), adversarial((1, 23, 34), fmt, 5)
    got = lp_matmul(a, b, name, impl="fast")
    want = torch.from_numpy(matmul_oracle(a.numpy(), b.numpy(), SPECS[name], 1))
    assert same_bits_or_both_nan(got, want)


def test_exact_ties_round_to_even():
    # acc = 1, then + 2^-5 (a tie at m4: 1 + 1/32 lies between 1 and 1 + 1/16): stays 1 (even); at 1 + 1/16 the
    # next tie goes up to 1 + 2/16. Ties away from zero would give 1 + 1/16 in the first case.
    a = torch.tensor([[1.0, 1.0 / 32]])
    b = torch.tensor([[1.0], [1.0]])
    got = lp_matmul(a, b, "m4", impl="fast")
    assert got.item() == 1.0
    a = torch.tensor([[1.0 + 1.0 / 16, 1.0 / 32]])
    assert lp_matmul(a, b, "m4", impl="fast").item() == 1.0 + 2.0 / 16


def test_no_fused_multiply_add():
    # fl32(fl32(a*b) + c) differs from fma(a, b, c) here: a*b = 1 - 2^-48 rounds to 1 in FP32, so the sum is
    # exactly 0 with separate roundings and -2^-48 with an FMA. (m22 keeps the FP32 sum's bits here.)
    x = 1.0 - 2.0**-24
    y = 1.0 + 2.0**-24
    a = torch.tensor([[x, -1.0]])
    b = torch.tensor([[y], [1.0]])
    assert lp_matmul(a, b, "m22", impl="fast").item() == 0.0


@pytest.mark.parametrize("rows,inner,cols", [(1, 64, 1), (5, 1, 33), (6, 64, 32), (7, 65, 95), (130, 9, 70)])
def test_ragged_blocks_and_panels(rows, inner, cols):
    # MR = 6 rows per register block, 32 columns per panel, tasks split rows from 64 on: every remainder.
    g = gen(6)
    a, b = torch.randn(2, rows, inner, generator=g), torch.randn(2, inner, cols, generator=g)
    got, want = both(a, b, "m4")
    assert same_bits_or_both_nan(got, want)


def test_non_contiguous_and_broadcast_operands():
    g = gen(7)
    k = torch.randn(2, 3, 50, 16, generator=g)
    q = torch.randn(2, 3, 40, 16, generator=g)
    k_t = k.transpose(-1, -2)  # (2, 3, 16, 50), stride 16 along the columns
    got, want = both(q, k_t, "m4")
    assert same_bits_or_both_nan(got, want)
    w = torch.randn(24, 16, generator=g)
    got, want = both(q, w.t(), "bf16")  # x @ W^T: a 2-D weight broadcast over (2, 3)
    assert same_bits_or_both_nan(got, want)
    shared = torch.randn(1, 3, 16, 20, generator=g).expand(2, 3, 16, 20)  # stride 0 batch dim
    got, want = both(q[:, :, ::2], shared, "fp16", 4)  # every other row: a row stride of 32
    assert same_bits_or_both_nan(got, want)


@pytest.mark.parametrize("shape", [((12, 128, 64), (12, 64, 128)), ((1, 96, 192), (192, 576))], ids=["qk", "linear"])
def test_one_and_two_threads_give_the_same_bits(shape):
    g = gen(8)
    a, b = torch.randn(*shape[0], generator=g), torch.randn(*shape[1], generator=g)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = lp_matmul(a, b, "m4", impl="fast")
        torch.set_num_threads(2)
        two = lp_matmul(a, b, "m4", impl="fast")
    finally:
        torch.set_num_threads(before)
    assert same_bits_or_both_nan(one, two)
    assert same_bits_or_both_nan(one, lp_matmul(a, b, "m4", impl="eager"))


def test_blocked_over_several_tiles(monkeypatch):
    # Small tiles: the fast step runs on every tile's accumulator, as the reference's does.
    monkeypatch.setattr(accumulate_reference, "TILE_ELEMENTS", 300)
    g = gen(9)
    a, b = torch.randn(3, 40, 70, generator=g), torch.randn(3, 70, 24, generator=g)
    got, want = both(a, b, "m7", 32)
    assert same_bits_or_both_nan(got, want)


def test_empty_and_degenerate_shapes():
    for a, b in [(torch.zeros(0, 5), torch.zeros(5, 3)), (torch.zeros(4, 0), torch.zeros(0, 3)),
                 (torch.ones(1, 1), torch.ones(1, 1))]:
        got, want = both(a, b, "m4")
        assert same_bits_or_both_nan(got, want)


@pytest.fixture
def no_compiler(monkeypatch, tmp_path):
    """A machine without a C compiler and with an empty kernel cache; the real kernel is restored after."""
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("LAMPC_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))
    caches = (cpu_build.load, cpu_kernel._library, cpu_kernel.available)
    for cached in caches:
        cached.cache_clear()
    fast._warned.clear()
    yield
    monkeypatch.undo()
    for cached in caches:
        cached.cache_clear()
    fast._warned.clear()


def test_without_a_compiler_the_reference_runs_with_one_warning(no_compiler):
    g = gen(10)
    a, b = torch.randn(4, 9, generator=g), torch.randn(9, 5, generator=g)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = lp_matmul(a, b, "m4", impl="fast")
        second = lp_matmul(a, b, "m4", 4, impl="fast")
    messages = [str(w.message) for w in caught if "lp_matmul" in str(w.message)]
    assert len(messages) == 1, messages
    assert "names no program" in messages[0] and "20-40x" in messages[0]
    assert same_bits_or_both_nan(first, lp_matmul(a, b, "m4", impl="eager"))
    assert same_bits_or_both_nan(second, lp_matmul(a, b, "m4", 4, impl="eager"))


def test_lampc_kernels_0_turns_the_kernel_off(monkeypatch, tmp_path):
    monkeypatch.setenv("LAMPC_KERNELS", "0")
    monkeypatch.setenv("LAMPC_KERNEL_CACHE", str(tmp_path))
    caches = (cpu_build.load, cpu_kernel._library, cpu_kernel.available)
    for cached in caches:
        cached.cache_clear()
    fast._warned.clear()
    try:
        assert cpu_kernel.available() == "turned off by LAMPC_KERNELS=0"
        a, b = torch.randn(3, 5, generator=gen(20)), torch.randn(5, 4, generator=gen(21))
        with pytest.warns(UserWarning, match="turned off by LAMPC_KERNELS=0"):
            got = lp_matmul(a, b, "m4", impl="fast")
        assert same_bits_or_both_nan(got, lp_matmul(a, b, "m4", impl="eager"))
        assert not list(tmp_path.glob("*.so"))  # nothing was built
    finally:
        monkeypatch.undo()
        for cached in caches:
            cached.cache_clear()
        fast._warned.clear()


def test_compiler_with_arguments_and_a_broken_cached_build(monkeypatch, tmp_path):
    # $CC may carry words of its own ("gcc -O2"); a file under the cached name that does not load is rebuilt.
    monkeypatch.setenv("CC", "gcc -O2")
    first, second = tmp_path / "first", tmp_path / "second"
    monkeypatch.setenv("LAMPC_KERNEL_CACHE", str(first))
    cpu_build.load.cache_clear()
    try:
        cpu_build.load()
        (built,) = first.glob("lampc-kernels-*.so")
        second.mkdir()
        (second / built.name).write_bytes(b"not a shared library")  # (never overwrite a loaded library in place)
        monkeypatch.setenv("LAMPC_KERNEL_CACHE", str(second))
        cpu_build.load.cache_clear()
        lib = cpu_build.load()
        assert hasattr(lib, "lp_strict_columns")
        assert (second / built.name).read_bytes() == built.read_bytes()  # rebuilt, the same build
    finally:
        monkeypatch.undo()
        cpu_build.load.cache_clear()


def test_build_is_cached_per_source_and_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("LAMPC_KERNEL_CACHE", str(tmp_path))
    cpu_build.load.cache_clear()
    try:
        cpu_build.load()
        built = list(tmp_path.glob("lampc-kernels-*.so"))
        assert len(built) == 1
        stamp = built[0].stat().st_mtime_ns
        cpu_build.load.cache_clear()
        cpu_build.load()  # a second process: loads the cached build, does not rebuild
        assert [p.stat().st_mtime_ns for p in tmp_path.glob("lampc-kernels-*.so")] == [stamp]
    finally:
        cpu_build.load.cache_clear()


def test_compile_failure_names_the_compiler_error(monkeypatch, tmp_path):
    broken = tmp_path / "broken.c"
    broken.write_text("this is not C\n")
    monkeypatch.setattr(cpu_build, "SOURCES", (broken,))
    monkeypatch.setenv("LAMPC_KERNEL_CACHE", str(tmp_path / "cache"))
    cpu_build.load.cache_clear()
    try:
        with pytest.raises(cpu_build.KernelUnavailable, match="failed to build broken.c"):
            cpu_build.load()
        assert not list((tmp_path / "cache").glob("*.so"))  # nothing half-built is left to load later
    finally:
        cpu_build.load.cache_clear()


@pytest.mark.parametrize("name", ["m4", "m10", "bf16", "fp16", "fp8_e4m3"])
@pytest.mark.parametrize("block_k", [1, 8])
@pytest.mark.parametrize("epilogue", ["scale 1/8", "scale 0.1", "bias", "both", "none"])
def test_producer_output_epilogue_equals_round_to_of_the_reference(name, block_k, epilogue):
    # lp_product = RN(fl32(fl32(acc * scale) + bias)); the C kernel rounds it in registers before the store.
    fmt = formats.parse(name)
    a, b = adversarial((2, 13, 40), fmt, 11), adversarial((2, 40, 37), fmt, 12)
    bias = torch.randn(37, generator=gen(13)) * 3
    bias[4] = float("nan")
    kwargs = {"scale 1/8": dict(scale=0.125), "scale 0.1": dict(scale=0.1), "bias": dict(bias=bias),
              "both": dict(scale=3.0, bias=bias), "none": {}}[epilogue]
    got = lp_product(a, b, name, block_k, impl="fast", **kwargs)
    acc = lp_matmul(a, b, name, block_k, impl="eager")
    if "scale" in kwargs:
        acc = acc * kwargs["scale"]
    if "bias" in kwargs:
        acc = acc + kwargs["bias"]
    assert same_bits_or_both_nan(got, round_to(acc, name))
    assert same_bits_or_both_nan(got, lp_product(a, b, name, block_k, impl="eager", **kwargs))


def test_producer_output_refuses_a_bias_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        lp_product(torch.zeros(2, 4), torch.zeros(4, 3), "m4", bias=torch.zeros(4))


def test_two_threads_split_rows_of_one_matrix():
    # batch 1, 200 rows, 20 columns: one panel, so the work is split by rows (MIN_TASK_ROWS = 64)
    g = gen(30)
    a, b = torch.randn(1, 200, 33, generator=g), torch.randn(1, 33, 20, generator=g)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert len(cpu_kernel._tasks(1, 200, 20)) > 1
        for block_k in (1, 8):
            got, want = both(a, b, "m4", block_k)
            assert same_bits_or_both_nan(got, want)
    finally:
        torch.set_num_threads(before)


def test_nan_payloads_and_strided_reduction_axis():
    # NaNs with payloads (0xFFFFFFFF, 0x7F800001) in both operands; a whose K axis has stride 2 (every other column)
    g = gen(31)
    a_wide, b = torch.randn(2, 9, 30, generator=g), torch.randn(2, 15, 40, generator=g)
    a = a_wide[..., ::2]  # (2, 9, 15), stride 2 along K
    for x, flat_index, pattern in ((a_wide, 4, -1), (b, 7, 0x7F800001), (b, 100, -0x00400001)):
        x.view(-1)[flat_index : flat_index + 1].view(torch.int32).fill_(pattern)
    assert not a.is_contiguous()
    for name in ("m4", "fp16", "bf16"):
        for block_k in (1, 4):
            got, want = both(a, b, name, block_k)
            assert same_bits_or_both_nan(got, want)
            assert bool(torch.isnan(got).any())


def test_blocked_is_bit_exact_against_the_sequential_oracle_on_random_inputs():
    # block sums are sequential FP32 sums in k order, in the kernel and in the reference: no BLAS order
    g = gen(32)
    a, b = torch.randn(1, 5, 45, generator=g), torch.randn(1, 45, 7, generator=g)
    for name, block_k in (("m4", 8), ("m10", 32), ("fp16", 5)):
        got = lp_matmul(a, b, name, block_k, impl="fast")
        want = torch.from_numpy(matmul_oracle(a.numpy(), b.numpy(), SPECS[name], block_k))
        assert same_bits_or_both_nan(got, want)
