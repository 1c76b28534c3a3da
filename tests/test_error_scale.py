"""Error-scale-aware rules (SitePolicy.error_scale): each entry's sensitivity times a bound on its producer error,
against a plain re-implementation with scalar loops; through compile, fused and unfused; refused where meaningless."""

from __future__ import annotations

import math

import pytest
import torch

import lampc
from lampc.ops import lamp_select, lowp_scores
from lampc.policy import SitePolicy
from tiny_models import padded_batch, tiny_gpt2


def _gamma_by_hand(m: int, k: int) -> float:
    u, u32 = 2.0 ** -(m + 1), 2.0**-24
    v = (1 + u) * (1 + u32) - 1
    return (1 + v) ** (k + 1) * (1 + u32) - 1


def _scalar_selection(s_hat, q, k_t, scale, visible, tau, kind, m):
    """Strict with the error scale of `kind`, one entry at a time (float64)."""
    rows, keys, depth = s_hat.shape[-2], s_hat.shape[-1], q.shape[-1]
    gamma = _gamma_by_hand(m, depth)
    floor = (depth * abs(scale) + 1) * 2.0**-149
    out = torch.zeros_like(s_hat, dtype=torch.bool)
    for h in range(s_hat.shape[0]):
        for r in range(rows):
            usable = [j for j in range(keys) if visible[r, j]]
            z = {j: float(s_hat[h, r, j]) for j in usable}
            top = max(z.values())
            total = sum(math.exp(v - top) for v in z.values())
            for j in usable:
                a = math.exp(z[j] - top) / total
                if kind == "norms":
                    magnitude = math.sqrt(sum(float(x) ** 2 for x in q[h, r])) * \
                        math.sqrt(sum(float(k_t[h, d, j]) ** 2 for d in range(depth)))
                else:
                    magnitude = sum(abs(float(q[h, r, d]) * float(k_t[h, d, j])) for d in range(depth))
                bound = gamma * abs(scale) * magnitude + floor
                out[h, r, j] = 2 * a * (1 - a) * bound > tau
    return out


@pytest.mark.parametrize("kind", ["norms", "l1"])
def test_the_selection_equals_a_scalar_loop(kind):
    g = torch.Generator().manual_seed(5)
    q, k_t = torch.randn(2, 6, 16, generator=g), torch.randn(2, 16, 6, generator=g)
    q[0, 2, 3] = 40.0  # an outlier: large terms, small score after cancellation in some entries
    scale, m = 0.25, 4
    visible = torch.ones(6, 6, dtype=torch.bool).tril()
    mask = torch.zeros(6, 6).masked_fill(~visible, torch.finfo(torch.float32).min)
    spec = SitePolicy(format=f"m{m}", criterion="strict", tau=0.02, error_scale=kind).config.texts
    s_hat = lowp_scores(q, k_t, scale, spec.producer)
    got = lamp_select(s_hat, q, k_t, scale, mask, False, *spec, 0)
    want = _scalar_selection(s_hat, q, k_t, scale, visible, 0.02, kind, m)
    assert torch.equal(got, want)
    assert 0 < int(want.sum()) < int(visible.sum()) * 2  # the case selects something, not everything


@pytest.mark.parametrize("kind", ["norms", "l1", "mixed"])
def test_the_error_scale_sees_cancellation_the_score_does_not(kind):
    """A score of ~0.02 made of large cancelling terms: |ŝ| says no error, a bound (or 'mixed', which floors |ŝ| at
    the size a dot product of K terms with these norms has) says a large one: it becomes the most sensitive entry."""
    q = torch.tensor([[[8.0, -8.0, 0.1, 0.1]]])
    k_t = torch.tensor([[[8.0, 0.1], [8.0, 0.1], [0.1, 3.0], [0.1, 3.0]]])  # key 0: 64 - 64 + ... ≈ 0.02
    mask = torch.zeros(1, 2)
    picked = {}
    for scale in ("score", kind):
        spec = SitePolicy(format="m4", criterion="budget", budget=1, error_scale=scale).config.texts
        s_hat = lowp_scores(q, k_t, 1.0, spec.producer)
        picked[scale] = lamp_select(s_hat, q, k_t, 1.0, mask, False, *spec, 0)[0, 0].tolist()
    assert picked["score"] == [False, True] and picked[kind] == [True, False]


@pytest.mark.slow
@pytest.mark.parametrize("fused", [False, True])
def test_compiled_models_run_the_rule_at_every_site_kind(fused):
    model = tiny_gpt2(score_gain=6.0)
    ids, mask = padded_batch(97)
    common = dict(format="m4", criterion="strict", tau=1e-3, error_scale="norms", fused=fused)
    compiled = lampc.compile(model, kinds=["attention", "layer_norm", "logits"], **common)
    assert all(s.rule.endswith("error scale norms") for s in compiled.sites)
    with torch.no_grad():
        logits = compiled(ids, mask).logits
        exact = model(input_ids=ids, attention_mask=mask).logits
        uniform = lampc.compile(model, kinds=["attention", "layer_norm", "logits"], format="m4",
                                criterion="uniform")(ids, mask).logits
    rate = compiled.stats()["overall"]["rate"]
    assert 0 < rate < 1
    real = mask.bool()
    assert (logits - exact)[real].abs().max() < (uniform - exact)[real].abs().max()
    # (ONNX export of every error scale: translated since d52f3b9, ORT parity in tests/test_export_onnx.py)


def test_meaningless_combinations_are_refused():
    with pytest.raises(ValueError, match="error_scale='norms' weighs each entry's error; criterion 'target'"):
        SitePolicy(criterion="target", error_scale="norms")
    with pytest.raises(ValueError, match="error_scale must be one of score, l1, norms"):
        SitePolicy(error_scale="relative")
    SitePolicy(criterion="oracle", count_from="relaxed", tau=0.5, error_scale="l1")  # counts from a weighing rule


# --- "mixed" (|ŝ_i| floored at a cancelling dot product's size) and "exact" (the true error) --------------------


def _norm(values) -> float:
    return math.sqrt(sum(float(v) ** 2 for v in values))


def _mixed_by_hand(out_hat, a, b, scale):
    """max(|ŷ_ij|, |scale|·‖a_i‖₂·‖b_:j‖₂/√K), one entry at a time (a: (..., R, K), b: (..., K, C))."""
    depth = a.shape[-1]
    out = torch.zeros(out_hat.shape, dtype=torch.float64)
    for idx in torch.cartesian_prod(*(torch.arange(n) for n in out_hat.shape)).tolist():
        *batch, i, j = idx
        a_row = a[(*batch, i)] if a.dim() > 2 else a[i]
        b_col = b[(*batch, slice(None), j)] if b.dim() > 2 else b[:, j]
        floor = abs(scale) * _norm(a_row) * _norm(b_col) / math.sqrt(depth)
        out[tuple(idx)] = max(abs(float(out_hat[tuple(idx)])), floor)
    return out


def _exact_by_hand(out_hat, a, b, scale, bias=None):
    """|a_i·b_:j·scale (+ bias_j) − ŷ_ij| in float64, and the size Σ_k |a_ik·b_kj|·|scale| of the dot product."""
    error = torch.zeros(out_hat.shape, dtype=torch.float64)
    size = torch.zeros(out_hat.shape, dtype=torch.float64)
    for idx in torch.cartesian_prod(*(torch.arange(n) for n in out_hat.shape)).tolist():
        *batch, i, j = idx
        a_row = a[(*batch, i)] if a.dim() > 2 else a[i]
        b_col = b[(*batch, slice(None), j)] if b.dim() > 2 else b[:, j]
        terms = [float(x) * float(y) for x, y in zip(a_row, b_col)]
        exact = sum(terms) * scale + (0.0 if bias is None else float(bias[j]))
        error[tuple(idx)] = abs(exact - float(out_hat[tuple(idx)]))
        size[tuple(idx)] = sum(abs(t) for t in terms) * abs(scale) + (0.0 if bias is None else abs(float(bias[j])))
    return error, size


def _strict_by_hand(s_hat, visible, weights_scale, tau):
    """Strict with a given per-entry error scale: 2·a·(1 − a)·scale_i > tau, a the softmax of ŝ over visible keys."""
    out = torch.zeros(s_hat.shape, dtype=torch.bool)
    margin = torch.full(s_hat.shape, math.inf, dtype=torch.float64)  # |weight − tau| / tau, for near-ties
    for h in range(s_hat.shape[0]):
        for r in range(s_hat.shape[1]):
            keys = [j for j in range(s_hat.shape[2]) if visible[r, j]]
            top = max(float(s_hat[h, r, j]) for j in keys)
            total = sum(math.exp(float(s_hat[h, r, j]) - top) for j in keys)
            for j in keys:
                a = math.exp(float(s_hat[h, r, j]) - top) / total
                weight = 2 * a * (1 - a) * float(weights_scale[h, r, j])
                out[h, r, j] = weight > tau
                margin[h, r, j] = abs(weight - tau) / tau
    return out, margin


def _cancelling_case():
    """Random q, k_t (2 heads, 6 x 6, depth 8) with one entry whose terms cancel: q[0, 2]·k_t[0, :, 1] ≈ 0.02."""
    g = torch.Generator().manual_seed(8)
    q, k_t = torch.randn(2, 6, 8, generator=g), torch.randn(2, 8, 6, generator=g)
    q[0, 2] = torch.tensor([8.0, -8.0, 0.1, 0.1, 0.0, 0.0, 0.0, 0.0])
    k_t[0, :, 1] = torch.tensor([8.0, 8.0, 0.1, 0.1, 0.0, 0.0, 0.0, 0.0])
    return q, k_t


def test_mixed_and_exact_scales_equal_scalar_loops_at_a_softmax_site():
    from lampc.lookahead.error_scale import producer_error_scale

    q, k_t = _cancelling_case()
    scale = 0.35
    for kind in ("mixed", "exact"):
        site = SitePolicy(format="m3", criterion="strict", tau=0.02, error_scale=kind)
        s_hat = lowp_scores(q, k_t, scale, site.config.texts.producer)
        got = producer_error_scale(site, q, k_t, s_hat, scale).expand(s_hat.shape).double()
        if kind == "mixed":
            want = _mixed_by_hand(s_hat, q, k_t, scale)
            assert torch.allclose(got, want, rtol=1e-6, atol=0)
            floor = scale * _norm(q[0, 2]) * _norm(k_t[0, :, 1]) / math.sqrt(8)  # ≈ 128.02·scale/√8
            assert abs(float(s_hat[0, 2, 1])) < 0.05 < floor
            assert float(got[0, 2, 1]) == pytest.approx(floor, rel=1e-6)  # the cancelling entry sits at the floor
            assert bool((got > s_hat.abs().double() * (1 + 1e-6)).any())  # and elsewhere too, the floor binds ...
            assert bool((got == s_hat.abs().double()).any())  # ... but not everywhere: |ŝ| wins somewhere
        else:
            want, size = _exact_by_hand(s_hat, q, k_t, scale)
            # the FP32 product differs from the float64 loop by FP32 rounding only: ~K·2^-24 of the terms' size
            assert bool(((got - want).abs() <= 8 * 2.0**-24 * size + 1e-30).all())
            assert float(want.max()) > 1e-3  # m3 errors are far above that tolerance


@pytest.mark.parametrize("kind", ["mixed", "exact"])
def test_mixed_and_exact_selections_equal_a_scalar_loop(kind):
    q, k_t = _cancelling_case()
    scale, tau = 0.35, 0.01
    visible = torch.ones(6, 6, dtype=torch.bool).tril()
    mask = torch.zeros(6, 6).masked_fill(~visible, torch.finfo(torch.float32).min)
    spec = SitePolicy(format="m3", criterion="strict", tau=tau, error_scale=kind).config.texts
    s_hat = lowp_scores(q, k_t, scale, spec.producer)
    got = lamp_select(s_hat, q, k_t, scale, mask, False, *spec, 0)
    if kind == "mixed":
        error_scale = _mixed_by_hand(s_hat, q, k_t, scale)
    else:
        error_scale, _ = _exact_by_hand(s_hat, q, k_t, scale)
    want, margin = _strict_by_hand(s_hat, visible, error_scale, tau)
    clear = margin > 1e-3  # entries within 0.1% of tau may go either way in FP32: none should be that close
    assert int((~clear & visible).sum()) <= 1
    assert torch.equal(got[clear.expand(got.shape)], want[clear.expand(want.shape)])
    assert not bool(got[:, ~visible].any())
    assert 0 < int(want.sum()) < int(visible.sum()) * 2
    if kind == "mixed":  # the cancelling entry: |ŝ| ≈ 0 gives the paper's rule no weight, the floor does
        assert bool(got[0, 2, 1])
        score_spec = SitePolicy(format="m3", criterion="strict", tau=tau).config.texts
        assert not bool(lamp_select(s_hat, q, k_t, scale, mask, False, *score_spec, 0)[0, 2, 1])



def _gelu_erf_derivative_by_hand(y: float) -> float:
    return 0.5 * (1 + math.erf(y / math.sqrt(2))) + y * math.exp(-0.5 * y * y) / math.sqrt(2 * math.pi)


@pytest.mark.parametrize("kind", ["mixed", "exact"])
def test_mixed_and_exact_at_a_linear_site_equal_scalar_loops(kind):
    from lampc.ops.linear_site import component_select, lowp_matmul

    g = torch.Generator().manual_seed(9)
    x, w, bias = torch.randn(5, 12, generator=g), torch.randn(12, 7, generator=g), torch.randn(7, generator=g)
    x[1] = torch.tensor([6.0, -6.0] + [0.05] * 10)
    w[:, 3] = torch.tensor([6.0, 6.0] + [0.05] * 10)  # x[1]·w[:, 3] cancels: 36 − 36 + 0.025
    tau = 0.02
    spec = SitePolicy(format="m3", criterion="strict", tau=tau, error_scale=kind).config.texts
    y_hat = lowp_matmul(x, w, bias, spec.producer, spec.execution)
    got = component_select(y_hat, x, w, bias, None, None, 0.0, "gelu", spec.producer, spec.rule, spec.execution, 0)
    if kind == "mixed":
        scale = _mixed_by_hand(y_hat, x, w, 1.0)  # the floor is that of x·w (the bias adds no cancellation)
        assert float(scale[1, 3]) == pytest.approx(_norm(x[1]) * _norm(w[:, 3]) / math.sqrt(12), rel=1e-6)
    else:
        scale, _ = _exact_by_hand(y_hat, x, w, 1.0, bias)
    agree = 0
    for t in range(5):
        for i in range(7):
            weight = abs(_gelu_erf_derivative_by_hand(float(y_hat[t, i]))) * float(scale[t, i])
            if abs(weight - tau) > 1e-3 * tau:
                assert bool(got[t, i]) == (weight > tau), (t, i, weight)
                agree += 1
    assert agree >= 34  # at most one entry too close to tau to call
    assert 0 < int(got.sum()) < 35
    if kind == "mixed":
        assert bool(got[1, 3])  # the cancelling output is picked


def test_mixed_and_exact_apply_to_the_rules_that_weigh_errors_only():
    for kind in ("mixed", "exact"):
        site = SitePolicy(criterion="strict", tau=0.1, error_scale=kind)
        assert site.rule_text == f"strict tau=0.1 error scale {kind}"
        assert SitePolicy.from_spec(site.to_spec()) == site
        SitePolicy(criterion="relaxed", error_scale=kind)
        SitePolicy(criterion="budget", budget=4, error_scale=kind)
        with pytest.raises(ValueError, match=f"error_scale='{kind}' weighs each entry's error; criterion 'uniform'"):
            SitePolicy(criterion="uniform", error_scale=kind)
        with pytest.raises(ValueError, match=f"error_scale='{kind}' weighs each entry's error; criterion 'target'"):
            SitePolicy(criterion="target", error_scale=kind)
