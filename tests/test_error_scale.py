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
    spec = SitePolicy(format=f"m{m}", criterion="strict", tau=0.02, error_scale=kind).to_spec()
    s_hat = lowp_scores(q, k_t, scale, spec)
    got = lamp_select(s_hat, q, k_t, scale, mask, False, spec, 0)
    want = _scalar_selection(s_hat, q, k_t, scale, visible, 0.02, kind, m)
    assert torch.equal(got, want)
    assert 0 < int(want.sum()) < int(visible.sum()) * 2  # the case selects something, not everything


def test_the_error_scale_sees_cancellation_the_score_does_not():
    """A score of ~0 made of large cancelling terms: |ŝ| says no error, the bound says a large one."""
    q = torch.tensor([[[8.0, -8.0, 0.1, 0.1]]])
    k_t = torch.tensor([[[8.0, 0.1], [8.0, 0.1], [0.1, 3.0], [0.1, 3.0]]])  # key 0: 64 - 64 + ... ≈ 0.02
    mask = torch.zeros(1, 2)
    picked = {}
    for kind in ("score", "norms"):
        spec = SitePolicy(format="m4", criterion="budget", budget=1, error_scale=kind).to_spec()
        s_hat = lowp_scores(q, k_t, 1.0, spec)
        picked[kind] = lamp_select(s_hat, q, k_t, 1.0, mask, False, spec, 0)[0, 0].tolist()
    assert picked["score"] == [False, True] and picked["norms"] == [True, False]


@pytest.mark.slow
@pytest.mark.parametrize("fused", [False, True])
def test_compiled_models_run_the_rule_at_every_site_kind(fused, tmp_path):
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
    if not fused:
        from lampc.export import OnnxExportError, export_onnx

        with pytest.raises(OnnxExportError, match="error_scale='norms' has no ONNX translation"):
            export_onnx(lampc.compile(model, format="m4", criterion="strict", error_scale="norms"), str(tmp_path / "x.onnx"))


def test_meaningless_combinations_are_refused():
    with pytest.raises(ValueError, match="error_scale='norms' weighs each entry's error; criterion 'target'"):
        SitePolicy(criterion="target", error_scale="norms")
    with pytest.raises(ValueError, match="error_scale must be one of score, l1, norms"):
        SitePolicy(error_scale="relative")
    SitePolicy(criterion="oracle", count_from="relaxed", tau=0.5, error_scale="l1")  # counts from a weighing rule
