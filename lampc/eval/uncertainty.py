"""How sure a sweep's numbers are: percentile-bootstrap intervals over windows, and paired comparisons of two cells.

A sweep measures every cell on the same token windows, and each row keeps its per-window values (`windows`):

    windows = {"kl": [mean KL of each window], "positions": [positions with both distributions],
               "flips": [flip count], "flipped": [[flipped position indices]], "recompute_rate": [layer mean]}

    cell_intervals(windows)      -> kl_lo/kl_hi, flip_rate_lo/_hi, recompute_rate_lo/_hi, n_windows, n_flips,
                                    n_compared (the positions flip_rate is over)
    compare_cells(test, base)    -> the KL ratio base / test with its paired interval, McNemar's test on the flips

Every interval is a 95% percentile bootstrap over windows: RESAMPLES resamples of the windows with replacement,
drawn from numpy's `default_rng(SEED)`, each giving the statistic as the sweep computes it (a ratio of totals:
sum of KL over the resampled positions / their count), and the 2.5th and 97.5th percentiles of those (linear
interpolation, numpy's default). The seed is fixed, so the same windows always give the same interval, and two cells
with the same number of windows are resampled alike (a paired comparison uses those same resamples for both).
With one window there is nothing to resample: the interval is NaN. With few windows (4, say) the interval is
rough (4 windows have 35 distinct resamples); it is still the honest spread of what was measured.

Flips are rare events (a few among hundreds of positions), so two cells' flips are compared position by position:
McNemar's exact test on the positions that flipped in one cell and not the other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000
SEED = 0
FLIP_ALPHA = 0.05
"""Flips differ beyond noise when McNemar's two-sided p-value is below this."""

ROUNDING_KL = 1e-12
"""A mean KL below this is FP32's own rounding (logits 1 ulp apart give KL ~1e-14): two cells both below it are
the same, whatever their ratio (an FP32 recompute sums in another order than the reference)."""

METHOD = (f"{100 * LEVEL:g}% percentile bootstrap over windows ({RESAMPLES} resamples, seed {SEED}); paired cells: "
          "the KL ratio on the same resamples, McNemar's exact test on the flipped positions")
"""One line for results.json's metadata and the printed table."""


def resample_indices(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """i64[resamples, n]: each row draws n window indices with replacement (the same rows for the same n, seed)."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The (1 - level) / 2 and (1 + level) / 2 percentiles, linear between order statistics; safe with +inf."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    if v.size == 0 or np.isnan(v).any():
        return math.nan, math.nan
    return _percentile(v, 50 * (1 - level)), _percentile(v, 50 * (1 + level))


def _percentile(v: np.ndarray, q: float) -> float:
    pos = q / 100 * (v.size - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    a, b = float(v[lo]), float(v[hi])
    return a if lo == hi or a == b else a + (pos - lo) * (b - a)  # towards inf is inf, never inf - inf


def bootstrap_ci(num: Sequence[float], den: Sequence[float] | None = None, *, resamples: int = RESAMPLES,
                 seed: int = SEED, level: float = LEVEL) -> tuple[float, float]:
    """Interval of sum(num) / sum(den) (den None: the mean of num) over windows; (nan, nan) for under 2 windows."""
    num = np.asarray(num, dtype=np.float64)
    den = np.ones_like(num) if den is None else np.asarray(den, dtype=np.float64)
    if num.size < 2:
        return math.nan, math.nan
    idx = resample_indices(num.size, resamples, seed)
    return percentile_interval(_ratio_of_sums(num, den, idx), level)


def paired_ratio_ci(a: tuple[Sequence[float], Sequence[float]], b: tuple[Sequence[float], Sequence[float]], *,
                    resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL) -> tuple[float, float]:
    """Interval of stat(a) / stat(b), stat = sum(num) / sum(den), both cells on the same resampled windows.

    A resample where both statistics are 0 counts as no change (ratio 1); where only b's is 0, as +inf."""
    (num_a, den_a), (num_b, den_b) = (tuple(np.asarray(x, dtype=np.float64) for x in cell) for cell in (a, b))
    if num_a.size != num_b.size:
        raise ValueError(f"paired cells need the same windows, got {num_a.size} and {num_b.size}")
    if num_a.size < 2:
        return math.nan, math.nan
    idx = resample_indices(num_a.size, resamples, seed)
    stat_a, stat_b = _ratio_of_sums(num_a, den_a, idx), _ratio_of_sums(num_b, den_b, idx)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where((stat_a == 0) & (stat_b == 0), 1.0, stat_a / stat_b)
    return percentile_interval(ratio, level)


def _ratio_of_sums(num: np.ndarray, den: np.ndarray, idx: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return num[idx].sum(axis=1) / den[idx].sum(axis=1)  # (resamples,)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: 2 P(X <= min) for X ~ Binomial(only_a + only_b, 1/2), at most 1."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2 ** n)


def discordant(flipped_a: Sequence[Sequence[int]], flipped_b: Sequence[Sequence[int]]) -> tuple[int, int]:
    """(positions flipped in a only, in b only), window by window."""
    if len(flipped_a) != len(flipped_b):
        raise ValueError(f"paired cells need the same windows, got {len(flipped_a)} and {len(flipped_b)}")
    only_a = only_b = 0
    for a, b in zip(flipped_a, flipped_b):
        a, b = set(a), set(b)
        only_a += len(a - b)
        only_b += len(b - a)
    return only_a, only_b


def _kl_totals(windows: dict) -> tuple[np.ndarray, np.ndarray]:
    """(per-window KL sums, positions): the numerator and denominator of the cell's mean KL."""
    positions = np.asarray(windows["positions"], dtype=np.float64)
    kl = np.asarray(windows["kl"], dtype=np.float64)
    return np.where(positions > 0, kl * positions, 0.0), positions


def cell_intervals(windows: dict) -> dict:
    """The interval columns of one row from its per-window values (None where a value has no per-window data)."""
    kl_num, positions = _kl_totals(windows)
    out = {"n_windows": len(positions), "n_compared": int(positions.sum()), "n_flips": int(sum(windows["flips"]))}
    out["kl_lo"], out["kl_hi"] = bootstrap_ci(kl_num, positions)
    out["flip_rate_lo"], out["flip_rate_hi"] = bootstrap_ci(windows["flips"], positions)
    rates = windows.get("recompute_rate")
    out["recompute_rate_lo"], out["recompute_rate_hi"] = (None, None) if rates is None else bootstrap_ci(rates)
    return out


def compare_cells(test: dict, base: dict) -> dict:
    """`test` (a LAMP rule's row) against `base` (uniform, or random at the same counts) on the same windows.

    kl_ratio = KL(base) / KL(test) (above 1: test is better) with its paired interval; kl_within_noise when the
    interval holds 1, or when both KLs are below ROUNDING_KL (kl_at_rounding). only_test / only_base: positions flipped in one cell alone; flip_p: McNemar's exact p-value;
    flip_within_noise when p >= FLIP_ALPHA."""
    wt, wb = test["windows"], base["windows"]
    if len(wt["kl"]) != len(wb["kl"]):
        raise ValueError(f"compare_cells: the cells were not measured on the same windows ({len(wt['kl'])} and "
                         f"{len(wb['kl'])} windows)")
    (nt, dt), (nb, db) = _kl_totals(wt), _kl_totals(wb)
    kl_t, kl_b = _safe_ratio(nt.sum(), dt.sum()), _safe_ratio(nb.sum(), db.sum())
    ratio = 1.0 if kl_t == 0 and kl_b == 0 else _safe_ratio(kl_b, kl_t)
    lo, hi = paired_ratio_ci((nb, db), (nt, dt))
    only_test, only_base = discordant(wt["flipped"], wb["flipped"])
    p = mcnemar_exact(only_test, only_base)
    rounding = max(kl_t, kl_b) < ROUNDING_KL
    return {"kl_ratio": ratio, "kl_ratio_lo": lo, "kl_ratio_hi": hi, "kl_at_rounding": rounding,
            "kl_within_noise": bool(rounding or (not math.isnan(lo) and lo <= 1.0 <= hi)),
            "flips_test": int(sum(wt["flips"])), "flips_base": int(sum(wb["flips"])),
            "only_test": only_test, "only_base": only_base, "flip_p": p, "flip_within_noise": p >= FLIP_ALPHA}


def _safe_ratio(num: float, den: float) -> float:
    if den == 0:
        return math.inf if num > 0 else math.nan
    return float(num / den)
