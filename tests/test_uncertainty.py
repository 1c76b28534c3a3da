"""lampc.eval.uncertainty against direct computations: a plain loop over the same seeded resamples, exact cases
(every window equal, two windows), McNemar's exact test by binomial sums; and the per-cell / paired summaries."""

import math

import numpy as np
import pytest

from lampc.eval.uncertainty import (RESAMPLES, SEED, bootstrap_ci, cell_intervals, compare_cells, discordant,
                                    mcnemar_exact, paired_ratio_ci)


def loop_percentile(values: list[float], q: float) -> float:
    """numpy's default percentile (linear between order statistics), written out."""
    v = sorted(values)
    pos = q / 100 * (len(v) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] if lo == hi or v[lo] == v[hi] else v[lo] + (pos - lo) * (v[hi] - v[lo])


def loop_bootstrap(num, den, resamples=RESAMPLES, seed=SEED):
    """The percentile bootstrap of sum(num) / sum(den) over windows, one resample at a time."""
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(resamples):
        idx = [int(i) for i in rng.integers(0, len(num), size=len(num))]
        stats.append(sum(num[i] for i in idx) / sum(den[i] for i in idx))
    return loop_percentile(stats, 2.5), loop_percentile(stats, 97.5)


def test_bootstrap_equals_a_plain_loop_with_the_same_seed():
    rng = np.random.default_rng(7)
    num, den = list(rng.exponential(size=9)), [int(d) for d in rng.integers(20, 60, size=9)]
    lo, hi = bootstrap_ci(num, den)
    want = loop_bootstrap(num, den)
    assert lo == pytest.approx(want[0], rel=1e-12) and hi == pytest.approx(want[1], rel=1e-12)
    assert lo < sum(num) / sum(den) < hi
    other = bootstrap_ci(num, den, seed=SEED + 1)  # another seed: another (close) interval
    assert other != (lo, hi) and other == pytest.approx((lo, hi), rel=0.2)


def test_equal_windows_give_a_zero_width_interval():
    assert bootstrap_ci([0.25] * 6, [1] * 6) == (0.25, 0.25)
    assert bootstrap_ci([0.0] * 4, [64] * 4) == (0.0, 0.0)


def test_two_windows_known_case():
    """Windows 0 and 1: a resample's mean is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4, so the 2.5th and
    97.5th percentiles of 2000 resamples are 0 and 1 (each end holds ~500 resamples, far more than 50)."""
    assert bootstrap_ci([0.0, 1.0], [1, 1]) == (0.0, 1.0)


def test_one_window_has_no_interval():
    lo, hi = bootstrap_ci([0.3], [10])
    assert math.isnan(lo) and math.isnan(hi)


def test_an_infinite_window_gives_an_infinite_upper_end_not_nan():
    lo, hi = bootstrap_ci([1.0, 2.0, math.inf], [1, 1, 1])
    assert hi == math.inf and lo == pytest.approx(loop_bootstrap([1.0, 2.0, math.inf], [1, 1, 1])[0])


def test_paired_ratio_equals_a_plain_loop():
    rng = np.random.default_rng(3)
    den = [int(d) for d in rng.integers(30, 40, size=8)]
    base = list(rng.exponential(size=8) * 4)
    test = [b * f for b, f in zip(base, rng.uniform(0.2, 0.6, size=8))]  # lower on every window
    lo, hi = paired_ratio_ci((base, den), (test, den))
    rng = np.random.default_rng(SEED)
    ratios = []
    for _ in range(RESAMPLES):
        idx = [int(i) for i in rng.integers(0, 8, size=8)]
        ratios.append(sum(base[i] for i in idx) / sum(test[i] for i in idx))  # the same windows for both cells
    assert (lo, hi) == pytest.approx((loop_percentile(ratios, 2.5), loop_percentile(ratios, 97.5)), rel=1e-12)
    assert lo > 1.0


def test_paired_ratio_exact_cases():
    den = [10, 10, 10, 10]
    kl = [0.1, 0.4, 0.2, 0.3]
    assert paired_ratio_ci((kl, den), (kl, den)) == (1.0, 1.0)  # the same cell: no change, zero width
    assert paired_ratio_ci(([2 * k for k in kl], den), (kl, den)) == pytest.approx((2.0, 2.0))
    zero = [0.0] * 4
    assert paired_ratio_ci((zero, den), (zero, den)) == (1.0, 1.0)  # 0 / 0 on every resample: no change


def mcnemar_by_hand(b: int, c: int) -> float:
    n = b + c
    return min(1.0, 2 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n)


@pytest.mark.parametrize("b, c, exact", [(0, 5, 2 / 32), (5, 0, 2 / 32), (3, 3, 1.0), (0, 0, 1.0),
                                         (1, 9, 22 / 1024), (2, 4, 1.0 * 44 / 64)])
def test_mcnemar_exact(b, c, exact):
    assert mcnemar_exact(b, c) == pytest.approx(exact)
    assert mcnemar_exact(b, c) == pytest.approx(mcnemar_by_hand(b, c))


def test_discordant_flips_are_counted_per_window_and_position():
    a = [[3, 17], [], [5]]
    b = [[3], [8], [5, 6]]
    assert discordant(a, b) == (1, 2)  # window 0 pos 17 only in a; window 1 pos 8, window 2 pos 6 only in b


def windows(kl, flips=None, rate=None, positions=32):
    n = len(kl)
    flipped = flips or [[] for _ in range(n)]
    return {"kl": list(kl), "positions": [positions] * n, "flips": [len(f) for f in flipped], "flipped": flipped,
            "recompute_rate": rate}


def test_cell_intervals():
    w = windows([0.1, 0.3, 0.2, 0.4], flips=[[1], [], [4, 9], []], rate=[0.02, 0.03, 0.01, 0.02])
    out = cell_intervals(w)
    assert out["n_windows"] == 4 and out["n_flips"] == 3 and out["n_compared"] == 128
    assert (out["kl_lo"], out["kl_hi"]) == bootstrap_ci([k * 32 for k in w["kl"]], [32] * 4)
    assert (out["flip_rate_lo"], out["flip_rate_hi"]) == bootstrap_ci([1, 0, 2, 0], [32] * 4)
    assert (out["recompute_rate_lo"], out["recompute_rate_hi"]) == bootstrap_ci(w["recompute_rate"], [1] * 4)
    assert out["kl_lo"] <= 0.25 <= out["kl_hi"]
    out = cell_intervals(windows([0.1, 0.2]))  # no per-window rates (a model whose taps are not per window)
    assert out["recompute_rate_lo"] is None and out["recompute_rate_hi"] is None


def test_compare_cells_says_when_a_difference_is_within_noise():
    base = {"windows": windows([0.4, 0.5, 0.3, 0.6, 0.5], flips=[[1], [2], [], [3], [4]])}
    better = {"windows": windows([0.1, 0.1, 0.05, 0.2, 0.1])}
    noisy = {"windows": windows([0.2, 0.9, 0.1, 0.9, 0.4], flips=[[1], [2], [], [3], [5]])}
    c = compare_cells(better, base)
    assert c["kl_ratio"] == pytest.approx(2.3 / 0.55) and c["kl_ratio_lo"] > 1 and not c["kl_within_noise"]
    assert (c["only_test"], c["only_base"]) == (0, 4) and c["flip_p"] == pytest.approx(2 / 16)
    assert c["flip_within_noise"]  # 4 discordant flips: p = 0.125
    c = compare_cells(noisy, base)
    assert c["kl_ratio_lo"] <= 1 <= c["kl_ratio_hi"] and c["kl_within_noise"]
    assert (c["only_test"], c["only_base"]) == (1, 1) and c["flip_p"] == 1.0
    with pytest.raises(ValueError, match="same windows"):
        compare_cells(better, {"windows": windows([0.1, 0.2])})


def test_kls_at_fp32_rounding_are_the_same_whatever_their_ratio():
    fp32 = {"windows": windows([0.0] * 4)}
    recomputed = {"windows": windows([2e-16, 4e-16, 3e-16, 1e-16])}  # another summation order than the reference
    c = compare_cells(recomputed, fp32)
    assert c["kl_ratio"] == 0.0 and c["kl_at_rounding"] and c["kl_within_noise"]
    c = compare_cells({"windows": windows([2e-6, 4e-6, 3e-6, 1e-6])}, fp32)
    assert not c["kl_at_rounding"] and not c["kl_within_noise"]
