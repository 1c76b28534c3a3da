"""Accuracy metrics of a test model's logits against a reference's (docs/METHOD.md §5): pure tensor functions.

Shapes and conventions shared by every function here:
    ref, test:       f32[B, T, V]  next-token logits; position t predicts token t + 1
    input_ids:       i64[B, T]     the tokens both models read; the label of position t is input_ids[:, t + 1]
    attention_mask:  i64[B, T]     1 = real token, 0 = padding (None: all real)

Which positions count:
    - distribution metrics (KL, flip rate, top-1 match, logit differences, NaN rate): every real position
      (attention_mask == 1), the last one included: they compare two distributions and need no label;
    - perplexity and top-1 accuracy: positions t < T - 1 whose own token and next token are both real.

Non-finite values. Probabilities come from `log_softmax` in float64. A -inf logit is a probability of 0 and is fine.
A position whose test (or reference) log-probabilities contain a NaN, i.e. a NaN logit, a +inf logit or a row of
-inf, has no distribution: it counts in `nan_rate` (`ref_nan_rate`) and is EXCLUDED from every mean (KL, flip rate,
logit differences, perplexity, accuracy). So `top1_match + flip_rate * (1 - nan_rate) + nan_rate = 1` when the
reference is finite: `top1_match` is over all real positions (a NaN position is not a match), `flip_rate` over the
positions where both distributions exist. KL(P_ref || P_test) is +inf where the test model gives probability 0 to a
token the reference does not; that is a real infinite divergence and is kept.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

PERCENTILES = (50, 90, 99)


def log_probs(logits: Tensor) -> Tensor:
    """log_softmax over the vocabulary in float64: f64[B, T, V]."""
    return torch.log_softmax(logits.to(torch.float64), dim=-1)


def has_distribution(logp: Tensor) -> Tensor:
    """bool[B, T]: True where a row of log-probabilities holds no NaN (see the module docstring)."""
    return ~torch.isnan(logp).any(dim=-1)


def kl_divergence(logp_ref: Tensor, logp_test: Tensor) -> Tensor:
    """KL(P_ref || P_test) per position, f64[B, T], from float64 log-probabilities.

    Terms with p_ref = 0 are 0 (0 log 0 = 0), whatever the test says; rounding noise below 0 is clamped to 0.
    NaN where either row has no distribution.
    """
    p_ref = logp_ref.exp()
    terms = torch.where(p_ref > 0, p_ref * (logp_ref - logp_test), torch.zeros_like(p_ref))  # (B, T, V)
    kl = terms.sum(dim=-1).clamp(min=0.0)  # (B, T); clamp keeps NaN and +inf
    return kl.masked_fill(~(has_distribution(logp_ref) & has_distribution(logp_test)), float("nan"))


def argmax_agrees(ref: Tensor, test: Tensor) -> Tensor:
    """bool[B, T]: the two top-1 tokens are the same (ties: the lowest token id, as torch.argmax)."""
    return ref.argmax(dim=-1) == test.argmax(dim=-1)


def next_token_nll(logp: Tensor, input_ids: Tensor) -> Tensor:
    """-log p(input_ids[t + 1]) at each position t < T - 1: f64[B, T - 1]."""
    labels = input_ids[:, 1:]  # (B, T-1)
    return -logp[:, :-1].gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def label_positions(attention_mask: Tensor) -> Tensor:
    """bool[B, T - 1]: positions t whose token and next token are both real (they have a label)."""
    real = attention_mask.bool()
    return real[:, :-1] & real[:, 1:]


def max_abs_diff(ref: Tensor, test: Tensor) -> Tensor:
    """max_v |test - ref| per position, f64[B, T] (inf where one side is infinite and the other is not)."""
    diff = (test.to(torch.float64) - ref.to(torch.float64)).abs()
    same_inf = torch.isinf(ref) & torch.isinf(test) & (torch.sign(ref) == torch.sign(test))
    return diff.masked_fill(same_inf, 0.0).amax(dim=-1)


def percentile(values: Tensor, q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics (numpy's default).

    Safe with +inf values (an interpolation towards inf is inf, never inf - inf = NaN); NaN for no values.
    """
    v = values.flatten().to(torch.float64).sort().values
    if v.numel() == 0:
        return float("nan")
    pos = q / 100.0 * (v.numel() - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    a, b = float(v[lo]), float(v[hi])
    if lo == hi or a == b:
        return a
    return a + (pos - lo) * (b - a)


class LogitComparison:
    """Sums the metrics over any number of batches; `result()` gives means over all positions of all batches.

        acc = LogitComparison()
        for ids, ref, test in batches:
            acc.update(ref, test, ids)
        acc.result()["kl"]

    Means are ratios of totals (a batch of 8 sequences weighs 8 times one sequence), never means of means.
    `windows()` keeps what each sequence (a row of a batch, in order) contributed, for intervals over windows
    (lampc.eval.uncertainty).
    """

    def __init__(self) -> None:
        self.n_real = 0  # real positions
        self.n_ref_nan = 0
        self.n_test_nan = 0  # real positions whose test distribution is NaN (reference finite)
        self.n_both = 0  # real positions where both distributions exist
        self.kl_sum = 0.0
        self.kl_max = 0.0
        self.n_flip = 0
        self.n_labels = 0  # label positions where both distributions exist
        self.nll_ref_sum = 0.0
        self.nll_test_sum = 0.0
        self.n_correct_ref = 0
        self.n_correct_test = 0
        self._absdiff: list[Tensor] = []  # per-position max |Δlogit|, kept for exact percentiles
        self._window_kl: list[float] = []  # per window: KL summed over its positions with both distributions
        self._window_positions: list[int] = []
        self._window_flipped: list[list[int]] = []  # per window: the positions whose top-1 token differs

    @torch.no_grad()
    def update(self, ref: Tensor, test: Tensor, input_ids: Tensor, attention_mask: Tensor | None = None) -> None:
        if ref.shape != test.shape or ref.dim() != 3 or ref.shape[:2] != input_ids.shape:
            raise ValueError(
                f"expected ref and test logits (B, T, V) over input_ids (B, T); got ref {tuple(ref.shape)}, "
                f"test {tuple(test.shape)}, input_ids {tuple(input_ids.shape)}"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        real = attention_mask.bool()  # (B, T)
        logp_ref, logp_test = log_probs(ref), log_probs(test)  # (B, T, V) f64
        ref_ok, test_ok = has_distribution(logp_ref), has_distribution(logp_test)  # (B, T)
        both = real & ref_ok & test_ok

        self.n_real += int(real.sum())
        self.n_ref_nan += int((real & ~ref_ok).sum())
        self.n_test_nan += int((real & ref_ok & ~test_ok).sum())
        self.n_both += int(both.sum())

        kl_all = kl_divergence(logp_ref, logp_test)  # (B, T)
        kl = kl_all[both]
        self.kl_sum += float(kl.sum())
        if kl.numel():
            self.kl_max = max(self.kl_max, float(kl.max()))
        flipped = ~argmax_agrees(ref, test) & both  # (B, T)
        self.n_flip += int(flipped.sum())
        self._window_kl += torch.where(both, kl_all, torch.zeros_like(kl_all)).sum(dim=-1).tolist()
        self._window_positions += both.sum(dim=-1).tolist()
        self._window_flipped += [row.nonzero().flatten().tolist() for row in flipped]
        self._absdiff.append(max_abs_diff(ref, test)[both])

        labelled = label_positions(attention_mask) & both[:, :-1]  # (B, T-1)
        self.n_labels += int(labelled.sum())
        self.nll_ref_sum += float(next_token_nll(logp_ref, input_ids)[labelled].sum())
        self.nll_test_sum += float(next_token_nll(logp_test, input_ids)[labelled].sum())
        labels = input_ids[:, 1:]
        self.n_correct_ref += int(((ref[:, :-1].argmax(-1) == labels) & labelled).sum())
        self.n_correct_test += int(((test[:, :-1].argmax(-1) == labels) & labelled).sum())

    def result(self) -> dict:
        """The metrics as plain floats (NaN where no position qualifies)."""
        absdiff = torch.cat(self._absdiff) if self._absdiff else torch.zeros(0, dtype=torch.float64)
        out = {
            "kl": _ratio(self.kl_sum, self.n_both),
            "kl_max": self.kl_max if self.n_both else float("nan"),
            "flip_rate": _ratio(self.n_flip, self.n_both),
            "top1_match": _ratio(self.n_both - self.n_flip, self.n_real - self.n_ref_nan),
            "ppl_ref": _exp(_ratio(self.nll_ref_sum, self.n_labels)),
            "ppl_test": _exp(_ratio(self.nll_test_sum, self.n_labels)),
            "acc_ref": _ratio(self.n_correct_ref, self.n_labels),
            "acc_test": _ratio(self.n_correct_test, self.n_labels),
            "nan_rate": _ratio(self.n_test_nan, self.n_real - self.n_ref_nan),
            "ref_nan_rate": _ratio(self.n_ref_nan, self.n_real),
        }
        for q in PERCENTILES:
            out[f"logit_absdiff_p{q}"] = percentile(absdiff, q)
        out["logit_absdiff_max"] = float(absdiff.max()) if absdiff.numel() else float("nan")
        out["n_positions"] = self.n_real
        out["n_labels"] = self.n_labels
        out["n_windows"] = len(self._window_positions)
        return out

    def windows(self) -> dict:
        """Per window (each row of each batch, in order): mean KL (NaN without positions), positions with both
        distributions, flip count and the flipped positions (indices into the window)."""
        return {"kl": [_ratio(k, n) for k, n in zip(self._window_kl, self._window_positions)],
                "positions": list(self._window_positions),
                "flips": [len(f) for f in self._window_flipped],
                "flipped": [list(f) for f in self._window_flipped]}


def compare_logits(ref: Tensor, test: Tensor, input_ids: Tensor, attention_mask: Tensor | None = None) -> dict:
    """All metrics of one batch (a `LogitComparison` with a single update)."""
    acc = LogitComparison()
    acc.update(ref, test, input_ids, attention_mask)
    return acc.result()


def _ratio(num: float, den: int) -> float:
    return num / den if den else float("nan")


def _exp(x: float) -> float:
    if math.isnan(x):
        return x
    return math.exp(x) if x < 700 else float("inf")
