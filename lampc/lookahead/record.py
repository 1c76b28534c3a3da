"""Recording what each site's threshold rule sees, for calibration (lampc/eval/calibrate.py).

A threshold rule (strict, relaxed) selects `weight > threshold`. Its usable entries' normalised weights
ν = weight / threshold (`normalised`, computed by the look-ahead from the same rows it selects from) go to a
histogram per site: at a site whose tau is scaled by λ the rule selects exactly the entries with ν > λ, so one
forward pass tells every site's recompute count at every threshold, and the sum of ν² below λ (the first-order
error left unrecomputed, squared) at each. The look-ahead only computes ν; what collects it is explicit: a
`WeightRecorder` that a graph's recorder nodes feed (lampc/passes/recording.py, `recording(gm)`), or a caller:

    recorder = WeightRecorder()
    recorder.add(3, normalised_weights(s_hat, visible, site))    # lampc/lookahead/softmax.py
    recorder.sites[3].count_above(0.5)      # entries site 3 selects with tau x 0.5

Bins are 1/BINS_PER_DECADE decade wide (a count at λ is exact to within the entries of one bin: 2.3% in λ), from
10**LOW_DECADE to 10**HIGH_DECADE; ν below the range (zero included) lands in the first bin, above in the last.
"""

from __future__ import annotations

import torch
from torch import Tensor

LOW_DECADE, HIGH_DECADE, BINS_PER_DECADE = -12, 8, 100
N_BINS = (HIGH_DECADE - LOW_DECADE) * BINS_PER_DECADE


class SiteWeights:
    """One site's histogram of ν: entries per bin, Σν² per bin, and the usable entries seen."""

    def __init__(self) -> None:
        self.counts = torch.zeros(N_BINS, dtype=torch.float64)
        self.squares = torch.zeros(N_BINS, dtype=torch.float64)
        self.usable = 0

    def add(self, nu: Tensor) -> None:
        nu = nu.detach().to(torch.float64).flatten().cpu()
        self.usable += nu.numel()
        self.counts += torch.bincount(_bin_of(nu), minlength=N_BINS).to(torch.float64)
        self.squares.index_add_(0, _bin_of(nu), nu.clamp(max=10.0**HIGH_DECADE).square())

    def count_above(self, lam: float) -> float:
        """Entries with ν > λ (to within one bin)."""
        return float(self.counts[_first_bin_above(lam):].sum())

    def square_below(self, lam: float) -> float:
        """Σν² over the entries with ν <= λ: what the rule leaves unrecomputed, squared."""
        return float(self.squares[:_first_bin_above(lam)].sum())

    @property
    def total_square(self) -> float:
        return float(self.squares.sum())

    def largest(self) -> float:
        """The upper edge of the highest occupied bin: λ at or above it selects nothing."""
        occupied = torch.nonzero(self.counts).flatten()
        if occupied.numel() == 0:
            return 0.0
        return bin_edge(int(occupied[-1]) + 1)


def bin_edge(index: int) -> float:
    """The lower edge of bin `index`: 10**(LOW_DECADE + index / BINS_PER_DECADE)."""
    return 10.0 ** (LOW_DECADE + index / BINS_PER_DECADE)


def _bin_of(nu: Tensor) -> Tensor:
    """The bin of each ν (float64): bin_edge(b) <= ν < bin_edge(b + 1), against the very edges bin_edge computes
    (whatever log10 rounds); below the range (zero included) the first bin, above it the last."""
    position = (torch.log10(nu.clamp(min=1e-300)) - LOW_DECADE) * BINS_PER_DECADE
    b = position.nan_to_num(nan=0.0).floor().clamp(0, N_BINS - 1).to(torch.int64)
    edges = bin_edges()
    b = b + ((b + 1 < N_BINS) & (nu >= edges[(b + 1).clamp(max=N_BINS - 1)])).to(torch.int64)
    return b - ((b > 0) & (nu < edges[b])).to(torch.int64)


_EDGES: list[Tensor] = []


def bin_edges() -> Tensor:
    """bin_edge(b) for every bin, as a float64 tensor (computed once)."""
    if not _EDGES:
        _EDGES.append(torch.tensor([bin_edge(b) for b in range(N_BINS)], dtype=torch.float64))
    return _EDGES[0]


def _first_bin_above(lam: float) -> int:
    """The first bin whose entries count as ν > λ: the bin holding λ and up (at a bin edge exactly, that bin's).
    Beyond the range: the first or the last bin (over-counting, never under)."""
    return int(_bin_of(torch.tensor([lam], dtype=torch.float64))[0])


def normalised(rows, site) -> Tensor | None:
    """ν = weight / threshold of the rule of `site` (a SitePolicy) over `rows` (its RuleInputs), at every entry the
    rule may pick (NaN at the others, e.g. masked or non-finite ones); None for a rule without a threshold to scale
    (uniform, budget, target, the baselines): nothing to calibrate."""
    terms = site.rule.terms
    if terms is None:
        return None
    weight, threshold = terms(rows, site)
    nu = (weight / threshold).nan_to_num(nan=0.0)
    return nu.masked_fill(~rows.usable.expand(nu.shape), float("nan"))


class WeightRecorder:
    """Per-site histograms of ν (`sites`: {site index: SiteWeights}), filled by `add`."""

    def __init__(self) -> None:
        self.sites: dict[int, SiteWeights] = {}

    def add(self, index: int, nu: Tensor | None) -> None:
        """Add one look-ahead call's ν (`normalised`: NaN at the entries its rule may not pick) to site `index`;
        None (a rule without a threshold) adds nothing."""
        if nu is None:
            return
        nu = nu.detach()
        self.sites.setdefault(index, SiteWeights()).add(nu[~torch.isnan(nu)])
