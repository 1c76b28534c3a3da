"""The strict rule's C pass (lampc/kernels/cpu_select.c) against the readable reference selection, entry for entry.

The reference is `site.rule.select(softmax_rows(...))` (lookahead/softmax.py), which `select` runs wherever the C
pass does not apply. Inputs: causal and padding masks (rows with nothing visible), NaN and ±inf scores, and
thresholds placed exactly on a weight, one float32 ulp either side, and not representable in float32 (0.1), so a
`>=` for `>`, a double comparison for torch's float32 one, or a reordered product would show.
"""

from __future__ import annotations

import pytest
import torch

from lampc.kernels import cpu as cpu_kernel
from lampc.lookahead import softmax
from lampc.lookahead.softmax import select, softmax_rows, strict_sensitivity
from lampc.policy import SitePolicy


def reference(s_hat, visible, site):
    rows = softmax_rows(s_hat, visible, site)
    return site.rule.select(rows, site) | ~torch.isfinite(s_hat)


def scores(shape, seed, specials=True):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(shape, generator=g) * 4
    if specials:
        flat = s.view(-1)
        picks = torch.randperm(flat.numel(), generator=g)[:6]
        for index, value in zip(picks.tolist(), (float("nan"), float("inf"), float("-inf"), float("nan"), 1e30, -0.0)):
            flat[index] = value
    return s


def masks(shape):
    *_, t, l = shape
    causal = torch.ones(t, l, dtype=torch.bool).tril().expand(shape)
    padding = torch.ones(shape, dtype=torch.bool)
    padding[..., :, : l // 3] = False  # left padding
    padding[..., 0, :] = False  # a row with nothing visible
    return {"all": torch.ones(1, 1, t, l, dtype=torch.bool).expand(shape), "causal": causal, "padding": padding}


@pytest.mark.parametrize("mask", ["all", "causal", "padding"])
@pytest.mark.parametrize("tau", [0.1, 1.0, 1e-3, 5.0])
def test_c_pass_equals_reference(mask, tau):
    shape = (2, 3, 17, 29)
    s_hat, site = scores(shape, 1), SitePolicy(format="m4", tau=tau)
    assert softmax._plain_cpu_site(site, s_hat, None, None)  # the C pass runs (else the test would be vacuous)
    visible = masks(shape)[mask]
    got = select(s_hat, visible, site)
    assert torch.equal(got, reference(s_hat, visible, site))


def test_threshold_exactly_on_a_weight_and_one_ulp_either_side():
    shape = (1, 2, 16, 16)
    s_hat = scores(shape, 2, specials=False)
    visible = masks(shape)["causal"]
    rows = softmax_rows(s_hat, visible, SitePolicy(format="m4"))
    weights = strict_sensitivity(rows.error_scale, rows.probabilities())
    w = weights[rows.usable].sort().values[len(weights[rows.usable]) // 2]
    for tau in (w, torch.nextafter(w, torch.tensor(0.0)), torch.nextafter(w, torch.tensor(10.0))):
        site = SitePolicy(format="m4", tau=float(tau))
        got, want = select(s_hat, visible, site), reference(s_hat, visible, site)
        assert torch.equal(got, want)
    site = SitePolicy(format="m4", tau=float(w))
    assert not bool(select(s_hat, visible, site)[weights == w].any())  # strictly above: the entry at tau stays out


def test_sites_the_c_pass_does_not_serve_take_the_reference():
    s_hat = scores((1, 1, 4, 4), 3, specials=False)
    assert not softmax._plain_cpu_site(SitePolicy(format="m4", softcap=30.0), s_hat, None, None)
    assert not softmax._plain_cpu_site(SitePolicy(format="m4", criterion="relaxed", tau=0.5), s_hat, None, None)
    assert not softmax._plain_cpu_site(SitePolicy(format="m4", length_scaling=True), s_hat, None, None)
    assert not softmax._plain_cpu_site(SitePolicy(format="m4"), s_hat, torch.zeros_like(s_hat), None)
    assert not softmax._plain_cpu_site(SitePolicy(format="m4"), s_hat, None, s_hat.abs())


def test_one_and_two_threads_agree_on_a_large_site():
    shape = (1, 4, 128, 160)  # above the size from which the pass is split across threads
    s_hat, site = scores(shape, 4), SitePolicy(format="m4", tau=0.05)
    visible = masks(shape)["causal"]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = select(s_hat, visible, site)
        torch.set_num_threads(2)
        two = select(s_hat, visible, site)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two) and torch.equal(one, reference(s_hat, visible, site))
    assert cpu_kernel.available() is None
