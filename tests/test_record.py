"""lampc.lookahead.record: the per-site log-histogram of normalised weights ν = weight / threshold, against scalar
loops over the same ν; the ν the softmax and linear look-aheads give, against the selection the same rule makes (an
independent count of the entries it picked); and `recording(gm)`, the graph's recorder nodes, only while recording."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch

from lampc.criteria import CALIBRATED, CRITERIA
from lampc.lookahead.components import normalised_component_weights, select_components
from lampc.lookahead.record import BINS_PER_DECADE, HIGH_DECADE, LOW_DECADE, N_BINS, SiteWeights, WeightRecorder
from lampc.lookahead.softmax import normalised_weights, select
from lampc.policy import SitePolicy


def _bin_position(x: float) -> float:
    """Where x falls on the bin axis, in bins (scalar math; the oracle's own binning)."""
    return (math.log10(x) - LOW_DECADE) * BINS_PER_DECADE


def _lower_edge(x: float) -> float:
    """The lower edge of the 1/100-decade bin that holds x (x inside the histogram's range)."""
    return 10.0 ** (LOW_DECADE + math.floor(_bin_position(x)) / BINS_PER_DECADE)


def _off_edge(rng: random.Random, low: float, high: float) -> float:
    """A log-uniform value in [10**low, 10**high) at least 1e-3 bins away from every bin edge."""
    while True:
        x = 10.0 ** rng.uniform(low, high)
        frac = _bin_position(x) % 1.0
        if 1e-3 < frac < 1 - 1e-3:
            return x


def _sample_nu(seed: int) -> list[float]:
    """ν as a site records them: zeros, values below the range (tiny), inside it, above it (huge)."""
    rng = random.Random(seed)
    nu = [0.0] * 7 + [1e-300, 3e-200, 4.2e-14, 9.9e-13]  # below 10**LOW_DECADE: the first bin
    nu += [_off_edge(rng, LOW_DECADE, HIGH_DECADE) for _ in range(400)]
    nu += [_off_edge(rng, -1.5, 1.5) for _ in range(200)]  # dense where the thresholds are
    nu += [2.5e8, 7e11, 1e30]  # above 10**HIGH_DECADE: the last bin
    nu += nu[20:60]  # repeated values: several entries per bin
    rng.shuffle(nu)
    return nu


def _filled(nu: list[float]) -> SiteWeights:
    weights = SiteWeights()
    half = len(nu) // 2  # in two calls: add accumulates
    weights.add(torch.tensor(nu[:half], dtype=torch.float64))
    weights.add(torch.tensor(nu[half:], dtype=torch.float64).reshape(-1, 1))
    return weights


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_count_above_is_exact_at_decade_edges(seed):
    nu = _sample_nu(seed)
    weights = _filled(nu)
    assert weights.usable == len(nu)
    for k in range(LOW_DECADE + 1, HIGH_DECADE):
        lam = 10.0**k
        assert weights.count_above(lam) == sum(1 for v in nu if v > lam), lam
        below = sum(v * v for v in nu if v <= lam)
        assert weights.square_below(lam) == pytest.approx(below, rel=1e-12, abs=1e-300), lam
    assert weights.count_above(0.0) == len(nu) and weights.count_above(-1.0) == len(nu)
    assert weights.square_below(0.0) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_between_edges_count_above_overcounts_by_at_most_the_entries_of_its_bin(seed):
    nu = _sample_nu(seed)
    weights = _filled(nu)
    rng = random.Random(100 + seed)
    lams = [_off_edge(rng, LOW_DECADE + 0.05, HIGH_DECADE - 0.05) for _ in range(300)]
    lams += [v * f for v in nu if 1e-11 < v < 1e7 for f in (1.0 + 1e-9, 1.0 - 1e-9)][:200]  # next to an entry
    overcounts = 0
    for lam in lams:
        above = sum(1 for v in nu if v > lam)
        low = _lower_edge(lam)
        in_bin_below = sum(1 for v in nu if low * (1 - 1e-9) <= v <= lam)  # λ's bin, at or below λ
        got = weights.count_above(lam)
        assert above <= got <= above + in_bin_below, lam
        overcounts += got > above
        # Σν² of the entries at or below λ, less (at most) those of λ's own bin
        left = weights.square_below(lam)
        full = sum(v * v for v in nu if v <= lam)
        below_bin = sum(v * v for v in nu if v < low * (1 - 1e-9))
        assert below_bin * (1 - 1e-12) <= left <= full * (1 + 1e-12) + 1e-300, lam
    assert overcounts > 0  # the sample does put entries below λ in λ's bin: the tolerance is exercised


def test_total_square_and_largest_against_the_entries():
    rng = random.Random(7)
    nu = [0.0, 0.0] + [_off_edge(rng, -6, 6) for _ in range(300)]
    weights = _filled(nu)
    assert weights.total_square == pytest.approx(sum(v * v for v in nu), rel=1e-12)
    top = max(nu)
    assert top < weights.largest() <= top * 10 ** (1 / BINS_PER_DECADE) * (1 + 1e-12)
    assert weights.count_above(weights.largest() * (1 + 1e-9)) == 0  # past the highest occupied bin: nothing
    assert weights.count_above(top) == sum(1 for v in nu if _lower_edge(top) <= v)  # the whole top bin
    assert SiteWeights().largest() == 0.0 and SiteWeights().count_above(1.0) == 0.0
    assert weights.counts.shape == (N_BINS,) and float(weights.counts.sum()) == len(nu)


def test_count_above_is_exact_at_every_bin_edge_the_module_computes():
    """10.0 ** (LOW_DECADE + b / BINS_PER_DECADE) rounds below the true edge at 275 of the 2000 edges; flooring its
    log10 once counted the bin below too (count_above(largest()) was 1)."""
    centres = [10.0 ** (LOW_DECADE + (b + 0.5) / BINS_PER_DECADE) for b in range(N_BINS)]
    weights = _filled(centres)  # one entry per bin, mid-bin
    wrong = [b for b in range(1, N_BINS)
             if weights.count_above(10.0 ** (LOW_DECADE + b / BINS_PER_DECADE)) != N_BINS - b]
    single = SiteWeights()
    single.add(torch.tensor([0.0106], dtype=torch.float64))
    assert wrong == [] and single.count_above(single.largest()) == 0


# --- the look-aheads' ν ---------------------------------------------------------------------------------


def _scores(seed: int = 0):
    """Attention-like scores (2, 3, 9, 9), causal plus a padded batch row, one overflowed visible entry and a NaN
    at a masked one."""
    g = torch.Generator().manual_seed(seed)
    s_hat = torch.randn(2, 3, 9, 9, generator=g) * 3.0
    visible = torch.ones(2, 1, 9, 9, dtype=torch.bool).tril()
    visible[1, :, :, :2] = False  # left padding of the second sequence
    visible[1, :, :2, :2] = True  # (rows with no visible key would have none)
    visible = visible.expand(s_hat.shape).clone()
    s_hat[0, 1, 6, 3] = float("inf")  # visible, not finite: always selected, never usable
    s_hat[1, 2, 1, 8] = float("nan")  # masked
    return s_hat, visible


SITES = [
    SitePolicy(criterion="strict", tau=0.05),
    SitePolicy(criterion="strict", tau=0.05, length_scaling=True, l_ref=4),
    SitePolicy(criterion="relaxed", tau=0.03),
    SitePolicy(criterion="strict", tau=0.05, error_scale="norms"),  # weights from an explicit error scale
]


@pytest.mark.parametrize("site", SITES, ids=lambda s: s.rule_text)
def test_recorded_counts_equal_the_selection_at_every_scaled_tau(site):
    s_hat, visible = _scores()
    usable = visible & torch.isfinite(s_hat)
    error_scale = None
    if site.error_scale == "norms":
        error_scale = torch.rand(s_hat.shape, generator=torch.Generator().manual_seed(3)) * 4
    recorder = WeightRecorder()
    chosen = select(s_hat, visible, site, error_scale=error_scale)
    recorder.add(3, normalised_weights(s_hat, visible, site, error_scale=error_scale))
    assert list(recorder.sites) == [3]
    weights = recorder.sites[3]
    assert weights.usable == int(usable.sum())
    picked = int((chosen & usable).sum())
    assert 0 < picked < int(usable.sum())
    assert weights.count_above(1.0) == picked
    assert bool(chosen[0, 1, 6, 3])  # the overflowed entry is selected, but not recorded
    for lam in (0.1, 10.0):  # tau x λ selects exactly the entries with ν > λ (what calibration relies on)
        scaled = dataclasses.replace(site, tau=site.tau * lam)
        again = select(s_hat, visible, scaled, error_scale=error_scale)  # a selection records nothing
        assert weights.count_above(lam) == int((again & usable).sum()), lam
    assert weights.usable == int(usable.sum())  # the selections added nothing


@pytest.mark.parametrize("criterion", ["strict", "relaxed"])
def test_recorded_counts_at_a_linear_site(criterion):
    g = torch.Generator().manual_seed(4)
    y_hat = torch.randn(5, 16, generator=g)
    y_hat[2, 7] = float("inf")
    weight = torch.rand(5, 16, generator=g).square()
    site = SitePolicy(criterion=criterion, tau=0.2)
    recorder = WeightRecorder()
    chosen = select_components(y_hat, weight, site)
    recorder.add(11, normalised_component_weights(y_hat, weight, site))
    finite = torch.isfinite(y_hat)
    weights = recorder.sites[11]
    assert weights.usable == int(finite.sum()) == 79
    picked = int((chosen & finite).sum())
    assert 0 < picked < 79 and weights.count_above(1.0) == picked
    # the weights a scalar loop normalises: strict by tau, relaxed by tau times the row's largest weight
    nu = []
    for r in range(5):
        row_max = max(float(weight[r, j]) for j in range(16) if finite[r, j])
        for j in range(16):
            if finite[r, j]:
                threshold = 0.2 if criterion == "strict" else 0.2 * row_max
                nu.append(float(weight[r, j]) / threshold)
    assert weights.square_below(1e-3) == pytest.approx(sum(v * v for v in nu if v <= 1e-3), rel=1e-5)
    assert weights.total_square == pytest.approx(sum(v * v for v in nu), rel=1e-5)


class _Attention(torch.nn.Module):
    """softmax(q·kᵀ · 0.5 + mask): one attention site."""

    def forward(self, q, k, mask):
        return torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * 0.5 + mask, dim=-1)


def _rewritten(site: SitePolicy):
    """The attention graph rewritten under `site`, and its inputs (2 sequences, 3 heads, 9 x 9 scores, causal)."""
    from lampc.passes import attention_sites, rewrite_sites

    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(2, 3, 9, 8, generator=g) * 2, torch.randn(2, 3, 9, 8, generator=g) * 2
    mask = torch.zeros(1, 1, 9, 9).masked_fill(~torch.ones(9, 9, dtype=torch.bool).tril(), float("-inf"))
    gm = torch.export.export(_Attention(), (q, k, mask), strict=False).module()
    rewrite_sites(gm, [attention_sites(site)])
    return gm, (q, k, mask)


def test_the_graph_records_only_inside_the_block():
    """recording(gm) adds a recorder node per threshold site and takes it out again: before and after the block the
    graph is the one compiled, and a recorder is fed only by the calls made inside its block."""
    from lampc.ops import graph_taps
    from lampc.passes.recording import recording

    gm, inputs = _rewritten(SitePolicy(criterion="strict", tau=0.05))
    code, modules = gm.code, dict(gm.named_children())
    tap = graph_taps(gm)[0]
    gm(*inputs)  # no recorder: a plain forward
    with recording(gm) as first:
        assert first.sites == {} and gm.code != code
        tap.reset()
        gm(*inputs)
        gm(*inputs)  # a second call adds to the same site
    usable = 2 * 3 * 9 * 10 // 2  # the causally visible scores
    assert list(first.sites) == [0] and first.sites[0].usable == 2 * usable == int(tap.visible.sum())
    assert first.sites[0].count_above(1.0) == int(tap.selected.sum()) > 0  # ν > 1: what the rule selected
    assert gm.code == code and dict(gm.named_children()) == modules
    gm(*inputs)  # after the block: the old recorder is not fed
    assert list(first.sites) == [0] and first.sites[0].usable == 2 * usable
    with recording(gm) as second:
        pass
    assert second.sites == {} and second is not first
    uniform, uniform_inputs = _rewritten(SitePolicy(criterion="uniform"))
    code = uniform.code
    with recording(uniform) as none:  # no threshold: no recorder node
        assert uniform.code == code
        uniform(*uniform_inputs)
    assert none.sites == {}


class _Residual(torch.nn.Module):
    """layer_norm(x + linear(x)): one layer_norm site."""

    def __init__(self):
        super().__init__()
        self.linear, self.norm = torch.nn.Linear(16, 16), torch.nn.LayerNorm(16)

    def forward(self, x):
        return self.norm(x + self.linear(x))


@pytest.mark.parametrize("criterion", ["strict", "relaxed"])
def test_the_graph_records_a_linear_site(criterion):
    """The ν op of component_select reads what the selection read: its count above 1 is the tap's selected count."""
    from lampc.ops import graph_taps
    from lampc.passes import linear_sites, rewrite_sites
    from lampc.passes.recording import recording

    torch.manual_seed(0)
    x = torch.randn(2, 5, 16) * 3
    gm = torch.export.export(_Residual().eval(), (x,), strict=False).module()
    rewrite_sites(gm, [linear_sites({"layer_norm": SitePolicy(criterion=criterion, tau=0.3 if criterion == "relaxed"
                                                              else 0.05)})])
    tap = graph_taps(gm)[0]
    with recording(gm) as recorder:
        tap.reset()
        gm(x)
    weights = recorder.sites[0]
    assert weights.usable == 2 * 5 * 16 == int(tap.visible.sum())
    assert weights.count_above(1.0) == int(tap.selected.sum()) > 0


@pytest.mark.parametrize("site", [SitePolicy(criterion="uniform"), SitePolicy(criterion="budget", budget=2),
                                  SitePolicy(criterion="budget", budget=0.25), SitePolicy(criterion="target", tau=1.5)],
                         ids=lambda s: s.rule_text)
def test_rules_without_a_threshold_record_nothing(site):
    s_hat, visible = _scores(2)
    chosen = select(s_hat, visible, site)
    assert normalised_weights(s_hat, visible, site) is None
    uniform = dataclasses.replace(site, criterion="uniform", tau=None, budget=None)
    assert normalised_component_weights(s_hat[0, 0], s_hat[0, 0].abs(), uniform) is None
    if site.criterion != "uniform":
        assert int((chosen & visible & torch.isfinite(s_hat)).sum()) > 0  # it did select: it just has no ν


def test_the_calibrated_criteria_are_those_with_a_weight_against_a_threshold():
    assert set(CALIBRATED) == {"strict", "relaxed"}
    assert all((c.terms is not None) == (name in CALIBRATED) for name, c in CRITERIA.items())
