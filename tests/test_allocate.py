"""lampc.eval.allocate: per-site KL curves from a histogram and a few measured points, and the Lagrangian allocation
of a total recompute count, against brute force over every combination of per-site choices (Everett's theorem)."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
import torch

from lampc.eval.allocate import SiteCurve, allocate
from lampc.lookahead.record import BINS_PER_DECADE, SiteWeights


def _mid_bin(x: float) -> float:
    """x moved to the middle of its 1/100-decade bin: far from every edge, so counts at edges are exact."""
    return 10.0 ** ((math.floor(math.log10(x) * BINS_PER_DECADE) + 0.5) / BINS_PER_DECADE)


def _weights(values: dict[float, int]) -> tuple[SiteWeights, list[float]]:
    """A SiteWeights holding `count` entries of each ν (moved mid-bin), and the flat list of them."""
    nu = [_mid_bin(v) for v, n in values.items() for _ in range(n)]
    weights = SiteWeights()
    weights.add(torch.tensor(nu, dtype=torch.float64))
    return weights, nu


def _random_curve(rng: random.Random) -> SiteCurve:
    """A site with 2-4 distinct ν values (a few entries each) and KLs measured at λ = 0.1, 1, 10 and none."""
    values = {10.0 ** rng.uniform(-2.5, 1.5): rng.randint(1, 6) for _ in range(rng.randint(2, 4))}
    weights, _ = _weights(values)
    scale = 10.0 ** rng.uniform(-7, -4)
    measured = {math.inf: scale * rng.uniform(1.0, 3.0)}
    for lam in rng.sample([0.1, 1.0, 10.0], rng.randint(1, 3)):
        measured[lam] = scale * rng.uniform(0.0, 1.0)
    return SiteCurve(weights, measured)


def _candidates(curve: SiteCurve) -> list[tuple[float, float]]:
    """The site's distinct counts, each with the least KL any of its candidates has at that count."""
    best: dict[float, float] = {}
    for count, kl in zip(curve.counts.tolist(), curve.kls.tolist()):
        best[count] = min(kl, best.get(count, math.inf))
    return sorted(best.items())


def _brute_force_least_kl(curves: dict[int, SiteCurve], max_total: float) -> float:
    """The least total KL over every combination of per-site choices with total count <= max_total."""
    best = math.inf
    for combo in itertools.product(*(_candidates(c) for c in curves.values())):
        if sum(count for count, _ in combo) <= max_total:
            best = min(best, sum(kl for _, kl in combo))
    return best


def _check_consistent(curves, allocation):
    """The allocation's counts and KL are those of the candidates it names."""
    assert set(allocation.lams) == set(curves)
    total_kl = 0.0
    for site, curve in curves.items():
        j = int(np.flatnonzero(curve.lams == allocation.lams[site])[0])
        assert allocation.counts[site] == curve.counts[j]
        total_kl += curve.kls[j]
    assert allocation.kl == pytest.approx(total_kl, rel=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_the_allocation_is_the_least_kl_for_its_count_by_brute_force(seed):
    rng = random.Random(seed)
    curves = {site: _random_curve(rng) for site in range(rng.randint(2, 4))}
    everything = sum(float(c.counts.max()) for c in curves.values())
    lagrangian_totals = set()
    for target in range(0, int(everything) + 2):
        allocation = allocate(curves, float(target))
        total = sum(allocation.counts.values())
        assert total <= target  # (i)
        _check_consistent(curves, allocation)
        least = _brute_force_least_kl(curves, total)  # (ii) Everett: nothing at the same count or less does better
        assert allocation.kl <= least * (1 + 1e-12) + 1e-300, (target, allocation, least)
        lagrangian_totals.add(total)
    assert len(lagrangian_totals) >= 3  # the targets reach several different Lagrangian choices


def test_candidates_count_and_model_the_kl_at_bin_edges():
    weights, nu = _weights({0.02: 3, 0.3: 2, 4.0: 5})
    measured = {math.inf: 5e-5, 1.0: 2e-6, 0.1: 4e-7}
    curve = SiteCurve(weights, measured)
    assert curve.lams[-1] == math.inf and curve.counts[-1] == 0 and curve.kls[-1] == 5e-5
    assert np.all(np.diff(curve.lams[:-1]) > 0)
    for lam, count, kl in zip(curve.lams[:-1], curve.counts[:-1], curve.kls[:-1]):
        assert count == sum(1 for v in nu if v > lam)  # the entries the rule selects at tau x λ
        left = sum(v * v for v in nu if v <= lam)
        assert kl == pytest.approx(float(curve.gain(np.array([lam]))[0]) * left, rel=1e-12, abs=1e-300)
    assert curve.lams[0] <= min(nu) and curve.counts[0] == len(nu) and curve.kls[0] == 0.0
    assert max(nu) < curve.lams[-2] * 10 ** (1 / BINS_PER_DECADE)  # the last edge still selects the top bin


def test_the_gain_reproduces_the_measured_points_and_interpolates_in_log_lambda():  # (iv)
    weights, nu = _weights({0.02: 3, 0.3: 2, 4.0: 5})
    measured = {math.inf: 5e-5, 1.0: 2e-6, 0.1: 4e-7}
    curve = SiteCurve(weights, measured)
    g = {lam: measured[lam] / sum(v * v for v in nu if v <= lam) for lam in (0.1, 1.0)}
    g_none = measured[math.inf] / sum(v * v for v in nu)  # no recompute: at the largest ν's bin edge
    for lam in (0.1, 1.0):  # bin edges: E(λ) is exact there
        assert float(curve.gain(np.array([lam]))[0]) == pytest.approx(g[lam], rel=1e-12)
    at_none = weights.largest()
    assert float(curve.gain(np.array([at_none]))[0]) == pytest.approx(g_none, rel=1e-12)
    assert float(curve.gain(np.array([math.inf]))[0]) == pytest.approx(g_none, rel=1e-12)
    mid = math.sqrt(0.1 * 1.0)  # halfway in log λ: the geometric mean of the gains
    assert float(curve.gain(np.array([mid]))[0]) == pytest.approx(math.sqrt(g[0.1] * g[1.0]), rel=1e-12)
    assert float(curve.gain(np.array([1e-4]))[0]) == pytest.approx(g[0.1], rel=1e-12)  # held below the ends
    t = (math.log(2.0) - math.log(1.0)) / (math.log(at_none) - math.log(1.0))
    between = math.exp((1 - t) * math.log(g[1.0]) + t * math.log(g_none))
    assert float(curve.gain(np.array([2.0]))[0]) == pytest.approx(between, rel=1e-12)
    # the modelled KL at a measured edge is the measured KL
    j = int(np.flatnonzero(np.isclose(curve.lams, 1.0, rtol=0, atol=1e-15))[0])
    assert curve.kls[j] == pytest.approx(measured[1.0], rel=1e-12)


def test_target_zero_recomputes_nothing():  # (iii)
    rng = random.Random(11)
    curves = {site: _random_curve(rng) for site in range(4)}
    allocation = allocate(curves, 0.0)
    assert all(lam == math.inf for lam in allocation.lams.values())
    assert all(count == 0 for count in allocation.counts.values())
    assert allocation.kl == pytest.approx(sum(c.measured[math.inf] for c in curves.values()), rel=1e-12)


def test_a_target_above_everything_takes_the_least_kl_choice():  # (iii)
    rng = random.Random(12)
    curves = {site: _random_curve(rng) for site in range(4)}
    free, _ = _weights({0.5: 3, 2.0: 1})
    curves[4] = SiteCurve(free, {math.inf: 0.0, 1.0: 0.0})  # a site that costs nothing left in low precision
    allocation = allocate(curves, 1e9)
    for site, curve in curves.items():
        least = float(curve.kls.min())
        at_least = curve.counts[curve.kls == least]
        j = int(np.flatnonzero(curve.lams == allocation.lams[site])[0])
        assert curve.kls[j] == least and curve.counts[j] == at_least.min()  # ties: the smaller count
    assert allocation.lams[4] == math.inf and allocation.counts[4] == 0  # free: nothing recomputed there
    for site in range(4):  # everything recomputed leaves no error: all entries, KL 0
        assert allocation.counts[site] == curves[site].weights.usable and curves[site].kls.min() == 0.0
    assert allocation.kl == 0.0


def test_a_site_with_no_entries_has_only_no_recompute():
    curve = SiteCurve(SiteWeights(), {math.inf: 3e-6})
    assert curve.lams.tolist() == [math.inf] and curve.counts.tolist() == [0.0] and curve.kls.tolist() == [3e-6]
    other, _ = _weights({1.5: 4})
    allocation = allocate({0: curve, 1: SiteCurve(other, {math.inf: 1e-5, 1.0: 1e-6})}, 4.0)
    assert allocation.lams[0] == math.inf and allocation.counts == {0: 0.0, 1: 4.0}
