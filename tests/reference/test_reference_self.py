"""Self-tests of the independent LAMP oracle (tests/reference/lamp_reference.py).

These check the oracle against ml_dtypes, exact Fraction arithmetic, hand-computed selections and
HF transformers' own eager forward.  They must stay fast (< 30 s on 2 CPU cores).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from .lamp_reference import (
    alibi_ref,
    bloom_forward_ref,
    falcon_forward_ref,
    gemma2_forward_ref,
    gpt2_forward_ref,
    lamp_scores_ref,
    llama_forward_ref,
    lp_matmul_ref,
    round_mantissa,
    select_ref,
    visibility_mask,
)

ml_dtypes = pytest.importorskip("ml_dtypes")


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny tensors: one intra-op thread is faster on the shared 2-core box (restored afterwards)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ---------------------------------------------------------------------------------------------
# helpers (independent re-statements of the number model, used only as cross-checks)
# ---------------------------------------------------------------------------------------------
def rn_fraction(xf: float, m: int) -> float:
    """Exact RN-even of a float32 value to m mantissa bits with Fractions (FP32 exponent range)."""
    if not math.isfinite(xf) or xf == 0.0:
        return xf
    x = Fraction(xf)
    _, e = math.frexp(xf)
    binade = max(e - 1, -126)
    ulp = Fraction(2) ** (binade - m)
    r = round(x / ulp) * ulp  # round() on a Fraction is half-to-even
    if abs(r) >= Fraction(2) ** 128:
        return math.copysign(math.inf, xf)
    return float(r)


def rn_bits(x: np.ndarray, m: int) -> np.ndarray:
    """RN-even on the float32 bit pattern (integer trick), as a third independent method."""
    x = np.asarray(x, dtype=np.float32)
    if m == 23:
        return x.copy()
    u = x.view(np.uint32).astype(np.uint64)
    shift = 23 - m
    lsb = (u >> shift) & 1
    r = (u + ((1 << (shift - 1)) - 1) + lsb) & ~np.uint64((1 << shift) - 1)
    r = r.astype(np.uint32).view(np.float32)
    return np.where(np.isfinite(x), r, x)


def f32(v) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float32)


def random_f32_bits(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u = rng.integers(0, 2**32, size=n, dtype=np.uint64).astype(np.uint32)
    x = u.view(np.float32)
    return x[np.isfinite(x)]


def same_f32(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality up to NaN payloads."""
    a, b = a.float(), b.float()
    both_nan = torch.isnan(a) & torch.isnan(b)
    eq = (a.view(torch.int32) == b.view(torch.int32)) | both_nan
    return bool(eq.all())


# ---------------------------------------------------------------------------------------------
# round_mantissa
# ---------------------------------------------------------------------------------------------
def test_round_mantissa_matches_bfloat16():
    x = random_f32_bits(200_000, seed=1)  # normals and subnormals over the whole range
    extra = np.array(
        [0.0, -0.0, 1.0, -1.0, np.float32(3.4028235e38), -np.float32(3.4028235e38), 1.1754944e-38,
         1e-45, -1e-45, np.inf, -np.inf, np.nan],
        dtype=np.float32,
    )
    x = np.concatenate([x, extra])
    want = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    got = round_mantissa(torch.from_numpy(x), 7)
    assert same_f32(got, torch.from_numpy(want))
    # the largest float32 rounds up to +-inf at m=7 (overflow at the top of the range)
    assert torch.isinf(round_mantissa(f32([3.4028235e38, -3.4028235e38]), 7)).all()


@pytest.mark.parametrize("m", [0, 1, 2, 3, 4, 7, 10, 13, 16, 22, 23])
def test_round_mantissa_matches_bit_trick(m):
    x = random_f32_bits(20_000, seed=100 + m)
    got = round_mantissa(torch.from_numpy(x), m)
    assert same_f32(got, torch.from_numpy(rn_bits(x, m)))


def test_round_mantissa_ties_vs_fractions():
    cases = []
    for m in (1, 2, 3, 4, 7, 10, 16, 22):
        u = 2.0 ** -m
        for base in (1.0, 2.0, 0.5, 2.0 ** -100, 2.0 ** 100, 2.0 ** -126, 2.0 ** 127):
            for k in range(0, 2 ** min(m, 4)):
                # exact midpoints between consecutive m-bit values in the binade of `base`, and one
                # FP32 ulp above them
                for v in (base * (1.0 + k * u + u / 2), base * (1.0 + k * u + u / 2 + 2.0 ** -23)):
                    cases.append((m, v))
                    cases.append((m, -v))
        # subnormal-grid ties: midpoint between multiples of 2**(-126-m)
        step = 2.0 ** (-126 - m)
        for k in (0, 1, 2, 3, 5):
            cases.append((m, (k + 0.5) * step))
        # the top of the range: (2 - 2**-(m+1)) * 2**127 ties to 2**128 -> inf
        cases.append((m, (2.0 - 2.0 ** -(m + 1)) * 2.0 ** 127))
        cases.append((m, (2.0 - 2.0 ** -(m + 1) - 2.0 ** -23) * 2.0 ** 127))
    for m, v in cases:
        v32 = float(np.float32(v))
        assert v32 == v, (m, v)  # all constructed cases are exact float32 values
        got = round_mantissa(f32([v32]), m).item()
        want = rn_fraction(v32, m)
        assert got == want or (math.isnan(got) and math.isnan(want)), (m, v32, got, want)
    # a few explicit hand-checked ties
    assert round_mantissa(f32([1 + 2 ** -8]), 7).item() == 1.0  # tie -> even (down)
    assert round_mantissa(f32([1 + 3 * 2 ** -8]), 7).item() == 1 + 2 ** -6  # tie -> even (up)
    assert round_mantissa(f32([1 + 2 ** -8 + 2 ** -20]), 7).item() == 1 + 2 ** -7  # above tie
    assert math.isinf(round_mantissa(f32([(2 - 2 ** -8) * 2.0 ** 127]), 7).item())


def test_round_mantissa_random_vs_fractions():
    x = random_f32_bits(3000, seed=7)
    for m in (2, 5, 10):
        got = round_mantissa(torch.from_numpy(x), m).tolist()
        for xi, gi in zip(x.tolist(), got):
            assert gi == rn_fraction(xi, m)


def test_round_mantissa_identity_and_specials():
    x = torch.from_numpy(random_f32_bits(10_000, seed=3))
    assert same_f32(round_mantissa(x, 23), x)
    sp = f32([float("nan"), float("inf"), float("-inf"), -0.0])
    r = round_mantissa(sp, 4)
    assert math.isnan(r[0].item()) and r[1].item() == math.inf and r[2].item() == -math.inf
    assert r[3].item() == 0.0 and math.copysign(1.0, r[3].item()) == -1.0


# ---------------------------------------------------------------------------------------------
# lp_matmul_ref
# ---------------------------------------------------------------------------------------------
def test_lp_matmul_m23_equals_fp32_matmul():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 5, 37, generator=g)
    b = torch.randn(3, 37, 6, generator=g)
    exact = a.double() @ b.double()
    bound = 37 * 2.0 ** -23 * (a.double().abs() @ b.double().abs())
    for bk in (1, 4, 37):
        r = lp_matmul_ref(a, b, 23, bk)
        assert ((r.double() - exact).abs() <= bound).all()
        assert (r - a @ b).abs().max().item() < 1e-5


def test_lp_matmul_hand_example():
    # terms 1, 2**-5, 2**-5 with m = 4 (ulp at 1 is 2**-4):
    a = f32([[1.0, 2.0 ** -5, 2.0 ** -5]])
    b = torch.ones(3, 1)
    # strict: 1 + 2**-5 is a tie -> 1 (even), twice
    assert lp_matmul_ref(a, b, 4, 1).item() == 1.0
    # blocks [1, 2**-5] -> 1.03125 -> RN4 -> 1, then [2**-5] -> 1 again
    assert lp_matmul_ref(a, b, 4, 2).item() == 1.0
    # one block: FP32 sum 1.0625 is representable with 4 bits
    assert lp_matmul_ref(a, b, 4, 3).item() == 1.0625
    assert lp_matmul_ref(a, b, 23, 1).item() == 1.0625


def _lp_dot_scalar(x, y, m, bk):
    """Scalar reference: numpy float32 products/sums, RN via Fractions."""
    acc = np.float32(0.0)
    for s in range(0, len(x), bk):
        blk = np.float32(0.0)
        for k in range(s, min(s + bk, len(x))):
            blk = np.float32(blk + np.float32(np.float32(x[k]) * np.float32(y[k])))
        acc = np.float32(rn_fraction(float(np.float32(acc + blk)), m))
    return float(acc)


@pytest.mark.parametrize("m,bk", [(3, 1), (4, 1), (7, 3), (10, 4), (4, 5)])
def test_lp_matmul_vs_scalar_loop(m, bk):
    g = torch.Generator().manual_seed(m * 10 + bk)
    a = torch.randn(4, 13, generator=g) * 3
    b = torch.randn(13, 3, generator=g)
    r = lp_matmul_ref(a, b, m, bk)
    an, bn = a.numpy(), b.numpy()
    for i in range(4):
        for j in range(3):
            assert r[i, j].item() == _lp_dot_scalar(an[i], bn[:, j], m, bk)


# ---------------------------------------------------------------------------------------------
# select_ref on a hand-made 4-key row
# ---------------------------------------------------------------------------------------------
# s = [2, 1, 0, -1]:  a = softmax(s) ~ [0.6439, 0.2369, 0.0871, 0.0321]
#   strict sensitivity 2a(1-a)|s| ~ [0.9172, 0.3615, 0, 0.0621]
#   relaxed z = |s| exp(s - 2)    = [2, 0.3679, 0, 0.0498]  (max z = 2)
#   target 2 - A_k - 2 min(a) for prefixes k = 0..4 ~ [1.9359, 1.2920, 1.0551, 0.9679, 0.9359]
ROW = [2.0, 1.0, 0.0, -1.0]


def _row(vals=ROW, extra_invisible=None):
    s = f32([vals + ([extra_invisible] if extra_invisible is not None else [])])
    vis = torch.ones_like(s, dtype=torch.bool)
    if extra_invisible is not None:
        vis[0, -1] = False
    return s, vis


def _sel(crit, tau=None, extra_invisible=None, **kw):
    s, vis = _row(extra_invisible=extra_invisible)
    out = select_ref(s, vis, crit, tau, **kw)
    assert out.dtype == torch.bool and out.shape == s.shape
    if extra_invisible is not None:
        assert not out[0, -1]
        out = out[:, :-1]
    return out[0].tolist()


def test_hand_row_numbers():
    e = [math.exp(v) for v in ROW]
    a = [x / sum(e) for x in e]
    sens = [2 * ai * (1 - ai) * abs(si) for ai, si in zip(a, ROW)]
    assert [round(v, 4) for v in sens] == [0.9172, 0.3615, 0.0, 0.0621]
    pref = [2 - sum(sorted(a, reverse=True)[:k]) - 2 * min(a) for k in range(5)]
    assert [round(v, 4) for v in pref] == [1.9359, 1.292, 1.0551, 0.9679, 0.9359]


@pytest.mark.parametrize("extra", [None, 10.0, -5.0])  # an invisible key must change nothing
def test_select_hand_row(extra):
    T, F_ = True, False
    assert _sel("uniform", extra_invisible=extra) == [F_, F_, F_, F_]
    # strict
    assert _sel("strict", 1.0, extra) == [F_, F_, F_, F_]
    assert _sel("strict", 0.3, extra) == [T, T, F_, F_]
    assert _sel("strict", 0.5, extra) == [T, F_, F_, F_]
    assert _sel("strict", 0.05, extra) == [T, T, F_, T]
    assert _sel("strict", 0.0, extra) == [T, T, F_, T]  # s=0 has zero sensitivity
    # relaxed (threshold tau * 2)
    assert _sel("relaxed", 1.0, extra) == [F_, F_, F_, F_]
    assert _sel("relaxed", 0.1, extra) == [T, T, F_, F_]
    assert _sel("relaxed", 0.2, extra) == [T, F_, F_, F_]
    assert _sel("relaxed", 0.02, extra) == [T, T, F_, T]
    # target (shortest prefix of a sorted descending)
    assert _sel("target", 2.0, extra) == [F_, F_, F_, F_]
    assert _sel("target", 1.95, extra) == [F_, F_, F_, F_]
    assert _sel("target", 1.5, extra) == [T, F_, F_, F_]
    assert _sel("target", 1.1, extra) == [T, T, F_, F_]
    assert _sel("target", 1.0, extra) == [T, T, T, F_]
    assert _sel("target", 0.95, extra) == [T, T, T, T]
    # budget by strict sensitivity (order 0, 1, 3, 2)
    assert _sel("budget", budget=0, extra_invisible=extra) == [F_, F_, F_, F_]
    assert _sel("budget", budget=1, extra_invisible=extra) == [T, F_, F_, F_]
    assert _sel("budget", budget=2, extra_invisible=extra) == [T, T, F_, F_]
    assert _sel("budget", budget=3, extra_invisible=extra) == [T, T, F_, T]
    assert _sel("budget", budget=10, extra_invisible=extra) == [T, T, T, T]
    assert _sel("budget", budget=0.5, extra_invisible=extra) == [T, T, F_, F_]  # ceil(2.0)
    assert _sel("budget", budget=0.6, extra_invisible=extra) == [T, T, F_, T]  # ceil(2.4)
    assert _sel("budget", budget=0.01, extra_invisible=extra) == [T, F_, F_, F_]  # ceil(0.04)
    assert _sel("budget", budget=1.0, extra_invisible=extra) == [T, T, T, T]


def test_select_length_scaling_hand_row():
    T, F_ = True, False
    # L_t = 4: l_ref = 16 doubles tau, l_ref = 1 halves it
    assert _sel("strict", 0.15, length_scaling=True, l_ref=16) == [T, T, F_, F_]  # tau_t = 0.3
    assert _sel("strict", 0.6, length_scaling=True, l_ref=1) == [T, T, F_, F_]  # tau_t = 0.3
    assert _sel("strict", 0.6, length_scaling=False, l_ref=1) == [T, F_, F_, F_]
    assert _sel("relaxed", 0.05, length_scaling=True, l_ref=16) == [T, T, F_, F_]  # 0.1
    assert _sel("relaxed", 0.04, length_scaling=True, l_ref=1) == [T, T, F_, T]  # 0.02
    assert _sel("relaxed", 0.9, length_scaling=True, l_ref=16) == [F_, F_, F_, F_]  # min(1, 1.8)
    # the default l_ref=1024 with L=4: tau_t = 16 tau
    assert _sel("strict", 0.3 / 16, length_scaling=True) == [T, T, F_, F_]
    with pytest.raises(ValueError):
        _sel("target", 1.5, length_scaling=True)


def test_select_through_a_softcap_hand_row():
    """Capped at 2, the 8 of [0, 8, 1, 1] no longer dominates (the softmax sees [0, 2.0, 0.92, 0.92]) and its
    error barely passes the cap (gain 1 - tanh²(4) = 0.0013): the two 1s matter; uncapped, the row is one-hot."""
    s_hat, vis = f32([[0.0, 8.0, 1.0, 1.0]]), torch.ones(1, 4, dtype=torch.bool)
    assert select_ref(s_hat, vis, "strict", 0.05, softcap=2.0).tolist() == [[False, False, True, True]]
    assert select_ref(s_hat, vis, "strict", 0.05).tolist() == [[False, False, False, False]]
    z = [2 * math.tanh(v / 2) for v in (0.0, 8.0, 1.0, 1.0)]
    a = [math.exp(v) / sum(math.exp(w) for w in z) for v in z]
    gain = 1 - math.tanh(4.0) ** 2
    assert 2 * a[1] * (1 - a[1]) * gain * 8.0 < 0.05 < 2 * a[2] * (1 - a[2]) * (1 - math.tanh(0.5) ** 2) * 1.0


def test_select_with_a_bias_hand_row():
    """The bias moves the softmax, not the error scale: with b = [0, 0, 3, 0] the score 0.3 takes the mass, yet its
    error (scale 0.3) is smaller than that of the 2.0 (scale 2.0) it displaced."""
    s_hat, vis = f32([[2.0, 1.0, 0.3, -1.0]]), torch.ones(1, 4, dtype=torch.bool)
    bias = f32([[0.0, 0.0, 3.0, 0.0]])
    z = [2.0, 1.0, 3.3, -1.0]
    a = [math.exp(v) / sum(math.exp(w) for w in z) for v in z]
    sens = [2 * ai * (1 - ai) * abs(si) for ai, si in zip(a, [2.0, 1.0, 0.3, -1.0])]
    want = [v > 0.1 for v in sens]
    assert want == [True, True, True, False]
    assert select_ref(s_hat, vis, "strict", 0.1, bias=bias).tolist() == [want]
    order = sorted(range(4), key=lambda i: -sens[i])
    assert select_ref(s_hat, vis, "budget", budget=1, bias=bias)[0, order[0]]
    assert order[0] == 0  # the largest error is the 2.0's, not the biggest probability's (the 0.3)


def test_alibi_is_slope_times_real_position():
    am = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    bias = alibi_ref(am, 2, 4, heads=4)
    assert bias.shape == (2, 4, 1, 4)
    assert bias[0, 0, 0].tolist() == [0.0, 0.25, 0.5, 0.75]  # slope 2**-2 for head 1 of 4
    assert bias[1, 3, 0].tolist() == [0.0, 0.0, 0.0, 2.0**-8]  # head 4: 2**-8; padded keys 0, positions restart


def test_select_oracle_hand_row():
    s_fp32, vis = _row()
    s_hat = f32([[2.01, 1.0, 0.3, -1.0]])
    # p = softmax(s_fp32); contributions 2p(1-p)|diff| ~ [0.0046, 0, 0.0477, 0]
    one = torch.tensor([[False, False, False, True]])
    two = torch.tensor([[True, False, True, False]])
    r1 = select_ref(s_hat, vis, "oracle", s_fp32=s_fp32, count_from=one)
    r2 = select_ref(s_hat, vis, "oracle", s_fp32=s_fp32, count_from=two)
    r0 = select_ref(s_hat, vis, "oracle", s_fp32=s_fp32, count_from=torch.zeros_like(one))
    assert r1[0].tolist() == [False, False, True, False]
    assert r2[0].tolist() == [True, False, True, False]
    assert not r0.any()


def test_select_nonfinite_and_empty_rows():
    s = f32([[1.0, float("inf"), 0.5, float("nan")], [float("inf"), 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]])
    vis = torch.tensor([[True, True, True, False], [False, False, False, False], [True, True, False, False]])
    for crit, kw in [("uniform", {}), ("strict", {"tau": 100.0}), ("relaxed", {"tau": 1.0}), ("target", {"tau": 2.0}),
                     ("budget", {"budget": 0})]:
        r = select_ref(s, vis, crit, **kw)
        assert r.tolist() == [[False, True, False, False], [False] * 4, [False] * 4], crit
    r = select_ref(s, vis, "oracle", s_fp32=torch.zeros_like(s), count_from=torch.zeros_like(vis))
    assert r.tolist() == [[False, True, False, False], [False] * 4, [False] * 4]
    # the finite part of a row with an inf still follows the rule (softmax over the finite visible keys)
    r = select_ref(s, vis, "strict", 0.0)
    assert r[0].tolist() == [True, True, True, False]


@pytest.mark.parametrize("crit,kw", [("strict", {"tau": 0.01}), ("relaxed", {"tau": 0.05}), ("target", {"tau": 1.05}),
                                     ("budget", {"budget": 3}), ("budget", {"budget": 0.3}),
                                     ("strict", {"tau": 0.05, "length_scaling": True, "l_ref": 8})])
def test_select_random_rows_properties(crit, kw):
    g = torch.Generator().manual_seed(5)
    s = torch.randn(2, 3, 9, 9, generator=g) * 3
    am = torch.ones(2, 9, dtype=torch.long)
    am[1, :3] = 0
    vis = visibility_mask(am, 2, 9).expand(2, 3, 9, 9)
    r = select_ref(s, vis, crit, **kw)
    assert not (r & ~vis).any()
    assert not r[1, :, :3].any()  # left-pad query rows have no visible key
    if crit == "budget":
        L = vis.sum(-1)
        b = kw["budget"]
        want = torch.clamp(L, max=b) if isinstance(b, int) else torch.ceil(b * L.double()).long()
        assert torch.equal(r.sum(-1), want)
    # float32 selection arithmetic agrees with float64 away from ties (random data: everywhere)
    r32 = select_ref(s, vis, crit, compute_dtype=torch.float32, **kw)
    assert (r32 != r).float().mean() < 0.01


# ---------------------------------------------------------------------------------------------
# lamp_scores_ref
# ---------------------------------------------------------------------------------------------
def test_lamp_scores_ref_composition():
    g = torch.Generator().manual_seed(11)
    q = torch.randn(2, 2, 7, 8, generator=g)
    k = torch.randn(2, 2, 7, 8, generator=g)
    vis = visibility_mask(None, 2, 7).expand(2, 2, 7, 7)
    scale = 8 ** -0.5
    s_hat = round_mantissa(lp_matmul_ref(q, k.transpose(-1, -2), 4) * scale, 4)
    s32 = (q @ k.transpose(-1, -2)) * scale
    scores, sel = lamp_scores_ref(q, k, scale, vis, 4, 1, "strict", 0.05)
    assert torch.equal(sel, select_ref(s_hat, vis, "strict", 0.05))
    assert 0 < sel.sum() < vis.sum()
    assert torch.equal(scores[sel], s32[sel]) and torch.equal(scores[~sel], s_hat[~sel])
    scores_u, sel_u = lamp_scores_ref(q, k, scale, vis, 4, 1, "uniform")
    assert not sel_u.any() and torch.equal(scores_u, s_hat)
    # oracle with an on-the-fly count from the strict rule: same per-row counts
    _, sel_o = lamp_scores_ref(q, k, scale, vis, 4, 1, "oracle", count_criterion="strict", count_tau=0.05)
    assert torch.equal(sel_o.sum(-1), sel.sum(-1))


# ---------------------------------------------------------------------------------------------
# full forwards vs HF
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf():
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def _gpt2(hf, init=0.02, seed=0):
    cfg = hf.GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=97, n_positions=64, initializer_range=init,
                        bos_token_id=0, eos_token_id=0)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = hf.GPT2LMHeadModel(cfg).eval()
    assert model.config._attn_implementation == "eager"
    return model


def _llama(hf, init=0.02, seed=0, tie=False):
    cfg = hf.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=100, max_position_embeddings=128, initializer_range=init,
                         tie_word_embeddings=tie)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = hf.LlamaForCausalLM(cfg).eval()
    assert model.config._attn_implementation == "eager"
    return model


def _batch(vocab, T=14, pad=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (2, T), generator=g)
    am = torch.ones(2, T, dtype=torch.long)
    am[1, :pad] = 0  # left padding in the second sequence
    ids[1, :pad] = 0
    return ids, am


def _hf_logits(model, ids, am, **kw):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=am, **kw).logits


@pytest.mark.parametrize("arch", ["gpt2", "llama", "llama_tied"])
def test_forward_m23_matches_hf(hf, arch):
    if arch == "gpt2":
        model, fwd, V = _gpt2(hf), gpt2_forward_ref, 97
    else:
        model, fwd, V = _llama(hf, tie=arch == "llama_tied"), llama_forward_ref, 100
    ids, am = _batch(V)
    ref = _hf_logits(model, ids, am)
    # HF uses arange position ids even under left padding: passing them explicitly changes nothing
    T = ids.shape[1]
    ref_pos = _hf_logits(model, ids, am, position_ids=torch.arange(T)[None].expand(2, T))
    assert torch.equal(ref, ref_pos)
    for crit, kw in [("uniform", {}), ("strict", {"tau": 0.1}), ("target", {"tau": 1.2}), ("budget", {"budget": 2})]:
        logits, sel = fwd(model, ids, am, m=23, criterion=crit, **kw)
        # every position, pad query rows included (they follow HF's fully-masked-row behaviour)
        assert (logits - ref).abs().max().item() <= 1e-5, crit
        assert len(sel) == 2 and sel[0].shape == (2, 4, T, T) and sel[0].dtype == torch.bool
    # without attention_mask (pure causal)
    logits, _ = fwd(model, ids, None, m=23)
    assert (logits - _hf_logits(model, ids, None)).abs().max().item() <= 1e-5


def _tiny(hf, kind, **config):
    cfg = hf.AutoConfig.for_model(kind, vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  **config)
    torch.manual_seed(0)
    return hf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()


OTHER_ARCHITECTURES = {
    "falcon": (dict(new_decoder_architecture=False), falcon_forward_ref),
    "gemma2": (dict(num_key_value_heads=2, intermediate_size=64, head_dim=8, attn_logit_softcapping=5.0),
               gemma2_forward_ref),
    "bloom": (dict(n_layer=2, n_head=4), bloom_forward_ref),
}


@pytest.mark.parametrize("arch", sorted(OTHER_ARCHITECTURES))
def test_other_forwards_m23_match_hf(hf, arch):
    """Falcon, Gemma2 and Bloom at m = 23: HF's logits at every position, pad query rows included."""
    config, fwd = OTHER_ARCHITECTURES[arch]
    model = _tiny(hf, arch, **config)
    ids, am = _batch(100)
    for mask in (am, None):
        want = _hf_logits(model, ids, mask)
        for crit, kw in [("uniform", {}), ("strict", {"tau": 0.1}), ("target", {"tau": 1.2})]:
            logits, sel = fwd(model, ids, mask, m=23, criterion=crit, **kw)
            assert (logits - want).abs().max().item() <= 1e-5, (crit, mask is None)
            assert len(sel) == 2 and sel[0].shape == (2, 4, 14, 14)


@pytest.mark.parametrize("arch", sorted(OTHER_ARCHITECTURES))
def test_other_forwards_low_precision_and_recompute(hf, arch):
    """m = 4 moves the logits; recomputing more moves them less; recomputing everything gives FP32 back."""
    config, fwd = OTHER_ARCHITECTURES[arch]
    model = _tiny(hf, arch, initializer_range=0.2, **config)
    ids, am = _batch(100, T=16)
    real = am.bool()
    want = _hf_logits(model, ids, am)

    def err(**kw):
        logits, _ = fwd(model, ids, am, m=4, **kw)
        return (logits - want)[real].abs().max().item()

    e_u, e_b = err(criterion="uniform"), err(criterion="budget", budget=0.5)
    assert e_u > 1e-3 and e_b < e_u
    assert err(criterion="budget", budget=1.0) < 1e-5


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_forward_low_precision_and_recompute(hf, arch):
    # larger init so that attention scores are O(1) and m = 4 visibly perturbs the logits
    if arch == "gpt2":
        model, fwd, V = _gpt2(hf, init=0.1), gpt2_forward_ref, 97
    else:
        model, fwd, V = _llama(hf, init=0.1), llama_forward_ref, 100
    ids, am = _batch(V, T=16)
    ref = _hf_logits(model, ids, am)
    real = am.bool()

    def err(**kw):
        logits, sel = fwd(model, ids, am, m=4, **kw)
        vis = visibility_mask(am, 2, ids.shape[1]).expand_as(sel[0])
        assert all(not (s & ~vis).any() for s in sel)
        rate = sum(int(s.sum()) for s in sel) / (len(sel) * int(vis.sum()))
        return (logits - ref)[real].abs().max().item(), rate

    e_u, r_u = err(criterion="uniform")
    assert r_u == 0.0 and e_u > 1e-3
    e_1, r_1 = err(criterion="strict", tau=0.1)
    e_2, r_2 = err(criterion="strict", tau=0.01)
    assert 0 < r_1 < r_2 < 1
    assert e_2 < e_1 < e_u and e_2 < 0.5 * e_u
    # tau = 0 recomputes every entry with nonzero sensitivity -> FP32 result
    e_0, _ = err(criterion="strict", tau=0.0)
    assert e_0 < 1e-5
    e_b, r_b = err(criterion="budget", budget=1.0)
    assert r_b == 1.0 and e_b < 1e-5
    # blocked accumulation changes the result but keeps it low precision
    e_blk, _ = err(criterion="uniform", block_k=4)
    assert e_blk > 1e-4 and e_blk != e_u
    # oracle at the strict(0.1) rate: same counts per row
    _, r_o = err(criterion="oracle", count_criterion="strict", count_tau=0.1)
    assert r_o > 0
