"""The C kernel of the sparse FP32 recompute (lampc/kernels/cpu_recompute.c) and the torch reference beside it.

Oracles, both independent of the code under test:
- float64 dot products of the same vectors: each recomputed value must lie within the FP32 summation bound
  |got - exact| <= (D + 2) * 2^-24 * (sum_d |q_d * k_d| * |scale| + |bias|), which any FP32 order meets (D terms,
  the product roundings, the scale and the bias: one rounding each); the kernel and the reference alike;
- the kernel's documented order (16 lanes over d, then pairwise), emulated here with elementwise float32 torch ops:
  the kernel must give its bits exactly, whatever the strides or the number of threads.
Shapes: broadcast batch dimensions, GQA-expanded keys (stride 0), transposed and strided operands, D below,
at and off a multiple of 16, empty selections, every position selected; the `recompute_into` dispatch and the
C scan of the positions against torch.nonzero.
"""

from __future__ import annotations

import pytest
import torch

from lampc.kernels import cpu as cpu_kernel, cpu_build, cpu_recompute
from lampc.lookahead import recompute as rc

U = 2.0 ** -24
LANES = 16


@pytest.fixture
def kernel_built():
    """For the tests of the kernel: it must build here (else they would test the reference twice)."""
    reason = cpu_recompute.available()
    assert reason is None, f"the C kernel must build on the test machine: {reason}"


kernel_test = pytest.mark.usefixtures("kernel_built")


def gen(seed):
    return torch.Generator().manual_seed(seed)


def operand_vectors(out_shape, flat, q, k_t):
    """(q rows, k columns) of each flat position, (N, D), gathered by plain loops in float64 (the oracle's
    own indexing: broadcasting by expand, not by the code under test)."""
    batch = out_shape[:-2]
    qe = q.double().expand(*batch, out_shape[-2], q.shape[-1])
    ke = k_t.double().expand(*batch, k_t.shape[-2], out_shape[-1])
    rows, cols = [], []
    for p in flat.tolist():
        index = []
        for size in reversed(out_shape):
            index.append(p % size)
            p //= size
        *b, t, key = reversed(index)
        rows.append(qe[(*b, t)])
        cols.append(ke[(*b, slice(None), key)])
    depth = q.shape[-1]
    empty = torch.zeros(0, depth, dtype=torch.float64)
    return (torch.stack(rows) if rows else empty), (torch.stack(cols) if cols else empty)


def within_fp32_bound(got, flat, out_shape, q, k_t, scale, bias=None):
    """The float64 oracle: every recomputed value within the FP32 summation bound of its exact dot product."""
    qr, kc = operand_vectors(out_shape, flat, q, k_t)
    exact = (qr * kc).sum(-1) * scale
    magnitude = (qr * kc).abs().sum(-1) * abs(scale)
    if bias is not None:
        b = bias.double().expand(out_shape[-1])[flat % out_shape[-1]]
        exact, magnitude = exact + b, magnitude + b.abs()
    bound = (q.shape[-1] + 2) * U * magnitude + 2.0 ** -140
    error = (got.reshape(-1)[flat].double() - exact).abs()
    return bool((error <= bound).all()), float((error / bound).max()) if flat.numel() else 0.0


def lane_order(flat, out_shape, q, k_t, scale, bias=None):
    """The kernel's documented order in float32 torch ops: lane j sums the products of d = j, j + 16, ... in
    increasing d, from +0; then lane[j] += lane[j + w] for w = 8, 4, 2, 1; times scale; plus bias."""
    qr, kc = (v.float() for v in operand_vectors(out_shape, flat, q, k_t))  # float64 holds float32 exactly
    products = qr * kc  # (N, D), one float32 rounding each
    blocks = -(-products.shape[1] // LANES)
    padded = torch.zeros(products.shape[0], blocks * LANES)
    padded[:, :products.shape[1]] = products
    lane = torch.zeros(products.shape[0], LANES)
    for b in range(blocks):
        lane = lane + padded[:, b * LANES:(b + 1) * LANES]
    for w in (8, 4, 2, 1):
        lane = lane[:, :w] + lane[:, w:2 * w]
    value = lane[:, 0] * torch.tensor(scale, dtype=torch.float32)
    if bias is not None:
        value = value + bias.expand(out_shape[-1])[flat % out_shape[-1]]
    return value


def random_positions(numel, count, seed):
    return torch.randperm(numel, generator=gen(seed))[:count].sort().values


def cases():
    """name -> (q, k_t, out shape): the operand layouts the sites produce."""
    g = gen(0)
    b, hkv, group, t, d = 2, 3, 2, 11, 64
    q = torch.randn(b, hkv * group, t, d, generator=g)
    k = torch.randn(b, hkv, 13, d, generator=g)
    gqa = k.transpose(-1, -2)[:, :, None].expand(b, hkv, group, d, 13)  # (B, Hkv, G, D, L), stride 0 on G
    qkv = torch.randn(b, t, 3, hkv, d, generator=g)  # a fused projection's output, heads viewed in place
    return {
        "contiguous": (q, torch.randn(b, hkv * group, d, 13, generator=g), (b, hkv * group, t, 13)),
        "gqa expanded": (q.view(b, hkv, group, t, d), gqa, (b, hkv, group, t, 13)),
        "broadcast batch": (torch.randn(b, 1, t, d, generator=g), torch.randn(5, d, 9, generator=g), (b, 5, t, 9)),
        "shared matrix": (q, torch.randn(d, 17, generator=g), (b, hkv * group, t, 17)),
        "transposed views": (qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2).transpose(-1, -2),
                             (b, hkv, t, t)),
        "strided d": (q[..., ::2], torch.randn(b, hkv * group, d, 13, generator=g)[:, :, ::2],
                      (b, hkv * group, t, 13)),
        "d=7": (torch.randn(3, 5, 7, generator=g), torch.randn(3, 7, 6, generator=g), (3, 5, 6)),
        "d=100": (torch.randn(4, 100, generator=g) * 1e3, torch.randn(100, 30, generator=g), (4, 30)),
        "d=1": (torch.randn(6, 1, generator=g), torch.randn(1, 5, generator=g), (6, 5)),
    }


CASES = cases()


@kernel_test
@pytest.mark.parametrize("name", list(CASES))
def test_kernel_within_the_fp32_bound_and_in_its_order(name):
    q, k_t, shape = CASES[name]
    assert cpu_recompute.suits(torch.empty(shape), q, k_t)
    numel = torch.Size(shape).numel()
    flat = random_positions(numel, max(1, numel // 7), seed=1)
    out = torch.full(shape, float("nan"))
    cpu_recompute.sparse_dot_(out, flat, q, k_t, 0.125)
    ok, worst = within_fp32_bound(out, flat, shape, q, k_t, 0.125)
    assert ok, f"{name}: error up to {worst:.2f}x the bound"
    assert torch.equal(out.reshape(-1)[flat], lane_order(flat, shape, q, k_t, 0.125))
    untouched = torch.ones(numel, dtype=torch.bool)
    untouched[flat] = False
    assert bool(out.reshape(-1)[untouched].isnan().all())  # nothing written outside the positions


@pytest.mark.parametrize("name", list(CASES))
def test_reference_within_the_same_bound(name):
    q, k_t, shape = CASES[name]
    numel = torch.Size(shape).numel()
    flat = random_positions(numel, max(1, numel // 7), seed=2)
    out = torch.zeros(shape)
    rc.recompute_sparse_reference(out, flat, q, k_t, 0.125)
    ok, worst = within_fp32_bound(out, flat, shape, q, k_t, 0.125)
    assert ok, f"{name}: error up to {worst:.2f}x the bound"


@kernel_test
def test_every_position_selected_matches_float64_and_contiguous_copies_give_the_same_bits():
    q, k_t, shape = CASES["transposed views"]
    flat = torch.arange(torch.Size(shape).numel())
    strided, packed = torch.zeros(shape), torch.zeros(shape)
    cpu_recompute.sparse_dot_(strided, flat, q, k_t, 0.3)
    cpu_recompute.sparse_dot_(packed, flat, q.contiguous(), k_t.contiguous(), 0.3)
    assert within_fp32_bound(strided, flat, shape, q, k_t, 0.3)[0]
    assert torch.equal(strided, packed)  # the order is over d, not over memory


@kernel_test
def test_empty_selection_writes_nothing():
    q, k_t, shape = CASES["gqa expanded"]
    out = torch.full(shape, 7.0)
    cpu_recompute.sparse_dot_(out, torch.zeros(0, dtype=torch.int64), q, k_t, 1.0)
    assert bool((out == 7.0).all())
    selected = torch.zeros(shape, dtype=torch.bool)
    assert rc.recompute_into(out, selected, q, k_t, 1.0, dense_above=0.5) is out
    assert bool((out == 7.0).all())


@kernel_test
def test_positions_outside_the_output_raise():
    q, k_t, shape = CASES["d=7"]
    out = torch.zeros(shape)
    with pytest.raises(IndexError, match="outside the output"):
        cpu_recompute.sparse_dot_(out, torch.tensor([0, torch.Size(shape).numel()]), q, k_t, 1.0)
    with pytest.raises(IndexError):
        cpu_recompute.sparse_dot_(out, torch.tensor([-1]), q, k_t, 1.0)


@kernel_test
def test_one_and_two_threads_give_the_same_bits(monkeypatch):
    monkeypatch.setattr(cpu_recompute, "MIN_TERMS_PER_TASK", 1)  # as many ranges as the pool allows
    q, k_t, shape = CASES["contiguous"]
    flat = random_positions(torch.Size(shape).numel(), 500, seed=3)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(cpu_recompute.sparse_dot_(torch.zeros(shape), flat, q, k_t, 0.125))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(results[0], results[1])


@kernel_test
def test_bias_and_a_transposed_weight_through_recompute_matrix():
    g = gen(4)
    x, weight = torch.randn(2, 9, 40, generator=g), torch.randn(300, 40, generator=g)
    bias = torch.randn(300, generator=g)
    w = weight.t()  # a linear layer's (K, N) view of its (N, K) weight
    shape = (2, 9, 300)
    flat = random_positions(2 * 9 * 300, 200, seed=5)  # spread over many columns: the kernel, not the GEMM
    for recompute in (rc.recompute_matrix, rc.recompute_matrix_reference):
        out = torch.zeros(shape)
        recompute(out, flat, x, w, bias, 0.5)
        ok, worst = within_fp32_bound(out, flat, shape, x, w, 0.5, bias)
        assert ok, f"{recompute.__name__}: error up to {worst:.2f}x the bound"
    got = cpu_recompute.sparse_dot_(torch.zeros(shape), flat, x, w, 0.5, bias)
    assert torch.equal(got.reshape(-1)[flat], lane_order(flat, shape, x, w, 0.5, bias))


@kernel_test
def test_crowded_columns_take_the_gemm(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_recompute, "sparse_dot_", lambda *a, **k: calls.append(a))
    g = gen(6)
    x, w = torch.randn(8, 16, generator=g), torch.randn(16, 50, generator=g)
    flat = (torch.arange(8)[:, None] * 50 + torch.tensor([3, 7])).reshape(-1)  # every row of two columns
    out = rc.recompute_matrix(torch.zeros(8, 50), flat, x, w, None, 1.0)
    assert not calls
    assert within_fp32_bound(out, flat, (8, 50), x, w, 1.0)[0]


@kernel_test
def test_recompute_into_runs_the_kernel_and_the_switch_turns_it_off(monkeypatch):
    q, k_t, shape = CASES["gqa expanded"]
    selected = torch.rand(shape, generator=gen(7)) < 0.05
    flat = selected.reshape(-1).nonzero().squeeze(1)
    spied = []
    real = cpu_recompute.sparse_dot_

    def spy(*args, **kwargs):
        spied.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(cpu_recompute, "sparse_dot_", spy)
    with_kernel = rc.recompute_into(torch.zeros(shape), selected, q, k_t, 0.125, dense_above=0.5)
    assert spied
    assert torch.equal(with_kernel.reshape(-1)[flat], lane_order(flat, shape, q, k_t, 0.125))
    spied.clear()
    monkeypatch.setattr(rc, "USE_KERNEL", False)
    reference = rc.recompute_into(torch.zeros(shape), selected, q, k_t, 0.125, dense_above=0.5)
    assert not spied
    assert within_fp32_bound(reference, flat, shape, q, k_t, 0.125)[0]
    assert bool((reference.reshape(-1)[~selected.reshape(-1)] == 0).all())


def test_non_float32_operands_take_the_reference():
    q, k_t, shape = CASES["d=7"]
    assert not cpu_recompute.suits(torch.empty(shape), q.double(), k_t.double())
    assert not cpu_recompute.suits(torch.empty(shape, dtype=torch.bfloat16), q, k_t)
    assert not cpu_recompute.suits(torch.empty(shape).transpose(-1, -2), q, k_t)  # out must be contiguous
    out = torch.zeros(shape, dtype=torch.float64)
    flat = torch.tensor([0, 5, 29])
    rc.recompute_sparse(out, flat, q.double(), k_t.double(), 1.0)
    assert torch.allclose(out.reshape(-1)[flat], (q.double() @ k_t.double()).reshape(-1)[flat], rtol=1e-12)


@kernel_test
@pytest.mark.parametrize("numel,density", [(0, 0.0), (1, 1.0), (13, 0.5), (4099, 0.01), (4099, 1.0), (70001, 0.003)])
def test_scan_equals_nonzero(numel, density):
    mask = torch.rand(numel, generator=gen(numel)) < density
    got = cpu_recompute.true_positions(mask)
    assert got.dtype == torch.int64 and torch.equal(got, mask.nonzero().squeeze(1))


@kernel_test
def test_scan_in_parallel_ranges_and_of_bytes_other_than_one(monkeypatch):
    monkeypatch.setattr(cpu_recompute, "PARALLEL_SCAN_BYTES", 1000)
    raw = torch.randint(0, 256, (10003,), generator=gen(8), dtype=torch.uint8)
    raw *= torch.rand(10003, generator=gen(9)) < 0.02
    mask = raw.view(torch.bool)  # what `.to(uint8).view(bool)` can make: any nonzero byte is true
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        got = cpu_recompute.true_positions(mask.reshape(7, 1429))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(got, (raw != 0).nonzero().squeeze(1))


@kernel_test
def test_recompute_into_scans_with_the_kernel(monkeypatch):
    q, k_t, shape = CASES["contiguous"]
    selected = torch.rand(shape, generator=gen(10)) < 0.02
    scans = []
    real = cpu_recompute.true_positions
    monkeypatch.setattr(cpu_recompute, "true_positions", lambda m: scans.append(True) or real(m))
    out = rc.recompute_into(torch.zeros(shape), selected, q, k_t, 1.0, dense_above=0.5)
    assert scans
    flat = selected.reshape(-1).nonzero().squeeze(1)
    assert within_fp32_bound(out, flat, shape, q, k_t, 1.0)[0]


@pytest.fixture
def no_compiler(monkeypatch, tmp_path):
    """A machine without a C compiler and with an empty kernel cache; the real kernel is restored after."""
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("LAMPC_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))
    caches = (cpu_build.load, cpu_kernel._library, cpu_kernel.available, cpu_recompute._library)
    for cached in caches:
        cached.cache_clear()
    yield
    monkeypatch.undo()
    for cached in caches:
        cached.cache_clear()


def test_without_a_compiler_the_reference_recomputes(no_compiler):
    assert cpu_recompute.available() is not None  # "no C compiler" (or "turned off by LAMPC_KERNELS=0")
    q, k_t, shape = CASES["broadcast batch"]
    selected = torch.rand(shape, generator=gen(11)) < 0.1
    out = rc.recompute_into(torch.zeros(shape), selected, q, k_t, 0.125, dense_above=0.5)
    flat = selected.reshape(-1).nonzero().squeeze(1)
    assert within_fp32_bound(out, flat, shape, q, k_t, 0.125)[0]
