"""lampc.eval.metrics against hand computations on tiny logits (vocab 3), with math on Python floats."""

import math

import pytest
import torch

from lampc.eval.metrics import LogitComparison, compare_logits, kl_divergence, log_probs, percentile

LN2, LN3 = math.log(2), math.log(3)

# Position A: ref uniform (1/3 each); test p = (1/2, 1/4, 1/4). Both argmax 0 (tie -> lowest id).
# Position B: ref p = (3/5, 1/5, 1/5); test p = (1/5, 3/5, 1/5). Argmax 0 vs 1: a flip.
REF_A, TEST_A = [0.0, 0.0, 0.0], [LN2, 0.0, 0.0]
REF_B, TEST_B = [LN3, 0.0, 0.0], [0.0, LN3, 0.0]
KL_A = (math.log((1 / 3) / (1 / 2)) + 2 * math.log((1 / 3) / (1 / 4))) / 3  # = ln(32/27) / 3
KL_B = 0.6 * math.log(3) + 0.2 * math.log(1 / 3) + 0.2 * math.log(1)  # = 0.4 ln 3


def logits(*rows):
    return torch.tensor([rows], dtype=torch.float32)  # (1, T, 3)


def test_kl_per_position_by_hand():
    kl = kl_divergence(log_probs(logits(REF_A, REF_B)), log_probs(logits(TEST_A, TEST_B)))
    assert kl.dtype == torch.float64
    assert kl[0, 0].item() == pytest.approx(KL_A, rel=1e-6)
    assert kl[0, 1].item() == pytest.approx(KL_B, rel=1e-6)
    assert KL_A == pytest.approx(math.log(32 / 27) / 3)


def test_two_positions_all_metrics():
    ids = torch.tensor([[2, 1]])  # position 0 predicts token 1; position 1 has no label
    m = compare_logits(logits(REF_A, REF_B), logits(TEST_A, TEST_B), ids)
    assert m["kl"] == pytest.approx((KL_A + KL_B) / 2, rel=1e-6)
    assert m["kl_max"] == pytest.approx(KL_B, rel=1e-6)
    assert m["flip_rate"] == 0.5 and m["top1_match"] == 0.5 and m["nan_rate"] == 0.0
    assert m["ppl_ref"] == pytest.approx(3.0, rel=1e-6)  # -ln p_ref(token 1) = ln 3
    assert m["ppl_test"] == pytest.approx(4.0, rel=1e-6)  # -ln p_test(token 1) = ln 4
    assert m["acc_ref"] == 0.0 and m["acc_test"] == 0.0  # both predict token 0
    assert m["n_positions"] == 2 and m["n_labels"] == 1
    # max |dlogit| per position: ln 2 and ln 3; percentiles interpolate between them
    assert m["logit_absdiff_p50"] == pytest.approx((LN2 + LN3) / 2, rel=1e-6)
    assert m["logit_absdiff_p90"] == pytest.approx(LN2 + 0.9 * (LN3 - LN2), rel=1e-6)
    assert m["logit_absdiff_max"] == pytest.approx(LN3, rel=1e-6)


def test_nan_row_and_padding_are_excluded():
    nan = float("nan")
    ref = logits(REF_A, REF_B, REF_A, REF_A)
    test = logits(TEST_A, TEST_B, [nan, 0.0, 0.0], [nan, nan, nan])  # position 3 is padding: ignored entirely
    ids = torch.tensor([[2, 1, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    m = compare_logits(ref, test, ids, mask)
    assert m["n_positions"] == 3
    assert m["nan_rate"] == pytest.approx(1 / 3)
    assert m["kl"] == pytest.approx((KL_A + KL_B) / 2, rel=1e-6)  # the NaN position is not in the mean
    assert m["flip_rate"] == 0.5  # over the 2 positions with both distributions
    assert m["top1_match"] == pytest.approx(1 / 3)  # over all 3 real positions: NaN is no match
    assert m["top1_match"] + m["flip_rate"] * (1 - m["nan_rate"]) + m["nan_rate"] == pytest.approx(1.0)
    # labels: t=0 -> token 1, t=1 -> token 0; t=2 is NaN (and its next token is padding)
    assert m["n_labels"] == 2
    assert m["ppl_ref"] == pytest.approx(math.exp((LN3 + math.log(5 / 3)) / 2), rel=1e-6)  # = sqrt(5)
    assert m["ppl_ref"] == pytest.approx(math.sqrt(5), rel=1e-6)
    assert m["ppl_test"] == pytest.approx(math.sqrt(20), rel=1e-6)  # -ln(1/4), -ln(1/5)
    assert m["acc_ref"] == 0.5 and m["acc_test"] == 0.0
    assert math.isfinite(m["logit_absdiff_max"]) and m["logit_absdiff_max"] == pytest.approx(LN3, rel=1e-6)


def test_infinities():
    inf = float("inf")
    # test gives probability 0 to a token the reference likes: infinite KL, kept
    m = compare_logits(logits(REF_A), logits([-inf, 0.0, 0.0]), torch.tensor([[0]]))
    assert m["kl"] == inf and m["nan_rate"] == 0.0
    # the reference gives probability 0 to token 0: that term is 0 (0 log 0), whatever the test says
    ref = logits([-inf, 0.0, 0.0])
    kl = kl_divergence(log_probs(ref), log_probs(logits([5.0, 0.0, 0.0])))
    p0 = math.exp(5) / (math.exp(5) + 2)
    assert kl.item() == pytest.approx(math.log(0.5 / ((1 - p0) / 2)), rel=1e-6)
    # a +inf logit has no distribution: counted as NaN
    assert compare_logits(logits(REF_A), logits([inf, 0.0, 0.0]), torch.tensor([[0]]))["nan_rate"] == 1.0


def test_identical_logits():
    x = torch.randn(2, 5, 7)
    m = compare_logits(x, x.clone(), torch.randint(0, 7, (2, 5)))
    assert m["kl"] == 0.0 and m["flip_rate"] == 0.0 and m["top1_match"] == 1.0 and m["logit_absdiff_max"] == 0.0
    assert m["ppl_ref"] == m["ppl_test"]


def test_accumulator_means_over_positions_not_batches():
    acc = LogitComparison()
    acc.update(logits(REF_A), logits(TEST_A), torch.tensor([[0]]))  # 1 position
    acc.update(logits(REF_B, REF_B, REF_B), logits(TEST_B, TEST_B, TEST_B), torch.tensor([[0, 0, 0]]))  # 3
    m = acc.result()
    assert m["kl"] == pytest.approx((KL_A + 3 * KL_B) / 4, rel=1e-6)  # not (KL_A + KL_B) / 2
    assert m["flip_rate"] == 0.75
    # labels: only the second batch has them (2 positions, token 0): -ln(3/5) and -ln(1/5)
    assert m["ppl_ref"] == pytest.approx(5 / 3, rel=1e-6)
    assert m["ppl_test"] == pytest.approx(5.0, rel=1e-6)
    whole = compare_logits(logits(REF_B, REF_B), logits(TEST_B, TEST_B), torch.tensor([[0, 0]]))
    assert whole["kl"] == pytest.approx(KL_B, rel=1e-6)


def test_percentile_matches_linear_interpolation():
    v = torch.tensor([4.0, 1.0, 3.0, 2.0, 10.0])
    assert percentile(v, 50) == 3.0
    assert percentile(v, 90) == pytest.approx(4 + 0.6 * 6)  # position 3.6 between 4 and 10
    assert percentile(v, 100) == 10.0
    assert percentile(torch.tensor([1.0, float("inf")]), 50) == float("inf")
    assert math.isnan(percentile(torch.tensor([]), 50))


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="expected ref and test logits"):
        compare_logits(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4), torch.zeros(1, 2, dtype=torch.long))


def test_per_window_values_equal_each_window_measured_alone():
    """Windows are the rows of every batch, in order: each one's KL mean, positions, flips and flipped positions
    equal a comparison of that row alone; the pooled means are the position-weighted means of the windows."""
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(5, 6, 4, generator=gen)
    test = ref + 0.7 * torch.randn(5, 6, 4, generator=gen)
    ids = torch.randint(0, 4, (5, 6), generator=gen)
    mask = torch.ones_like(ids)
    mask[3, :2] = 0  # a window with padding: 4 positions
    acc = LogitComparison()
    acc.update(ref[:3], test[:3], ids[:3], mask[:3])
    acc.update(ref[3:], test[3:], ids[3:], mask[3:])
    w = acc.windows()
    assert len(w["kl"]) == 5 and w["positions"] == [6, 6, 6, 4, 6]
    for i in range(5):
        alone = compare_logits(ref[i:i + 1], test[i:i + 1], ids[i:i + 1], mask[i:i + 1])
        assert w["kl"][i] == pytest.approx(alone["kl"], rel=1e-12)
        assert w["flips"][i] == round(alone["flip_rate"] * w["positions"][i])
        flipped = [t for t in range(6) if mask[i, t] and ref[i, t].argmax() != test[i, t].argmax()]
        assert w["flipped"][i] == flipped
    m = acc.result()
    assert m["n_windows"] == 5
    assert m["kl"] == pytest.approx(sum(k * n for k, n in zip(w["kl"], w["positions"])) / sum(w["positions"]))
    assert m["flip_rate"] == sum(w["flips"]) / sum(w["positions"])


def test_per_window_kl_is_nan_for_a_window_without_positions():
    acc = LogitComparison()
    x = torch.randn(2, 3, 4)
    acc.update(x, x + 1.0, torch.zeros(2, 3, dtype=torch.long), torch.tensor([[1, 1, 1], [0, 0, 0]]))
    w = acc.windows()
    assert w["positions"] == [3, 0] and w["kl"][0] == pytest.approx(0.0, abs=1e-12) and math.isnan(w["kl"][1])
