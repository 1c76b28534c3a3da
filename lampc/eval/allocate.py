"""Where the FP32 budget goes across the model: one threshold per site, for the least KL at a total recompute count.

Each site's rule selects the entries whose normalised weight ν (weight / threshold, lampc/lookahead/record.py)
exceeds λ_ℓ, its tau scale. A `SiteCurve` models the KL that site ℓ alone leaves at any λ (docs/NUMERICS.md §10):

    KL_ℓ(λ) = g_ℓ(λ) · E_ℓ(λ)        E_ℓ(λ) = Σ_{i at ℓ, ν_i <= λ} ν_i²   (from the histogram: any λ)
                                     g_ℓ(λ) = KL / E measured with ℓ alone in low precision at a few λ (and with
                                              no recompute), interpolated in log λ, held beyond the ends

ν_i is proportional to entry i's first-order error bound at its consumer, so E is the (squared) error the rule leaves;
g carries it to the model's output, and varies slowly with λ (not at all if errors were small and independent).
The sites' KLs add (errors at different sites are independent to first order). `allocate` minimises
Σ_ℓ KL_ℓ(λ_ℓ) at a total count by a Lagrange multiplier μ: each site takes the λ minimising KL_ℓ(λ) + μ·count_ℓ(λ)
(over its histogram's bin edges and "no recompute"), and μ is bisected for the largest total within the target.
Any such choice is the least-KL one for the count it takes (Everett's theorem): tests/test_allocate.py checks it
against every combination on small cases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..lookahead.record import SiteWeights, bin_edges


@dataclass
class SiteCurve:
    """One site: its histogram of ν and the KL measured with it alone in low precision, λ -> KL (inf: none).

    After construction: `lams`, `counts`, `kls`, the candidates (bin edges of the occupied range, then λ = inf)
    with the entries each selects and the KL the model predicts there."""

    weights: SiteWeights
    measured: dict[float, float]

    def __post_init__(self) -> None:
        counts, squares = self.weights.counts.numpy(), self.weights.squares.numpy()
        occupied = np.flatnonzero(counts)
        no_recompute = self.measured.get(math.inf, float(self.gain(np.array([math.inf]))[0]) * squares.sum())
        if occupied.size == 0:
            self.lams, self.counts, self.kls = np.array([math.inf]), np.array([0.0]), np.array([no_recompute])
            return
        edges = np.arange(occupied[0], occupied[-1] + 1)  # λ at bin j's lower edge selects the bins >= j
        lams = bin_edges().numpy()[edges]
        above = np.cumsum(counts[::-1])[::-1][edges]
        left = np.concatenate([[0.0], np.cumsum(squares)])[edges]
        self.lams = np.append(lams, math.inf)
        self.counts = np.append(above, 0.0)
        self.kls = np.append(self.gain(lams) * left, no_recompute)

    def gain(self, lams: np.ndarray) -> np.ndarray:
        """g(λ): measured KL / E at the measured λ (no recompute: at the largest ν), interpolated in log λ."""
        largest = self.weights.largest()
        points = []
        for lam, kl in self.measured.items():
            left = self.weights.total_square if lam == math.inf else self.weights.square_below(lam)
            at = largest if lam == math.inf else lam
            if left > 0 and at > 0 and math.isfinite(kl):
                points.append((math.log(at), math.log(max(kl, 1e-300) / left)))
        if not points:
            return np.zeros_like(lams)
        points.sort()
        x, y = np.array([p[0] for p in points]), np.array([p[1] for p in points])
        return np.exp(np.interp(np.log(np.minimum(lams, largest or 1.0).clip(min=1e-300)), x, y))

    def best(self, mu: float) -> int:
        """The candidate minimising KL + μ·count (ties: the smaller count)."""
        cost = self.kls + mu * self.counts
        ties = np.flatnonzero(cost == cost.min())
        return int(ties[np.argmin(self.counts[ties])])


@dataclass
class Allocation:
    """λ per site (inf: no recompute), the entries each then selects, and the modelled KL of the whole."""

    lams: dict[int, float]
    counts: dict[int, float]
    kl: float


def allocate(curves: dict[int, SiteCurve], target_count: float) -> Allocation:
    """The least modelled KL among the Lagrangian choices of total count <= target_count."""

    def pick(mu: float) -> Allocation:
        chosen = {site: curve.best(mu) for site, curve in curves.items()}
        return Allocation({s: float(curves[s].lams[j]) for s, j in chosen.items()},
                          {s: float(curves[s].counts[j]) for s, j in chosen.items()},
                          sum(float(curves[s].kls[j]) for s, j in chosen.items()))

    low, high = 1e-300, 1e300  # μ: tiny takes the least KL (most recompute), huge recomputes nothing
    best = pick(low)
    if sum(best.counts.values()) <= target_count:
        return best
    best = pick(high)
    for _ in range(200):  # bisection in log μ: the total count is non-increasing in μ
        mid = math.sqrt(low * high)
        trial = pick(mid)
        if sum(trial.counts.values()) <= target_count:
            high, best = mid, trial
        else:
            low = mid
        if high / low < 1.0 + 1e-12:
            break
    return best
