"""Selection at a linear producer: which (token, feature) outputs of y = x·W + b to recompute in FP32.

Each output component i gets the weight c_i = (l1 norm of column i of the consumer's Jacobian) x |ŷ_i|
(the error scale of ŷ_i: a low-precision output carries a relative error, as in the paper's attention rule).
Rows are tokens, components are the features of the consumer's input. Rules:

    strict   c_i > tau
    relaxed  c_i > tau · max_row c          (scale-free)
    budget   the k (or fraction f) largest c_i per row
    random   per row as many as `count_from` picks, uniformly          (evaluation)
    oracle   per row as many, by the true first-order error col_i·|y_i − ŷ_i| at the FP32 input (evaluation)
    uniform  none
A non-finite ŷ_i is always selected. The paper's `target` rule is specific to softmax and is refused here. Each
rule is declared once, in lampc.criteria; `ComponentRows` is what it reads at a linear site.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..policy import SitePolicy
from .activations import DERIVATIVES
from .norms import layer_norm_column_norms, rms_norm_column_norms
from .record import normalised
from .softmax import TorchRows, budget_counts, budget_k_max

CONSUMERS = ("layer_norm", "rms_norm", "gelu_tanh", "gelu", "silu")


def column_norms(consumer: str, consumer_input: Tensor, gamma: Tensor | None, eps: float) -> Tensor:
    """Per component l1 norm (or bound) of the consumer's Jacobian column, at its input (shape of the input)."""
    if consumer == "layer_norm":
        return layer_norm_column_norms(consumer_input, gamma, eps)
    if consumer == "rms_norm":
        return rms_norm_column_norms(consumer_input, gamma, eps)
    if consumer in DERIVATIVES:
        return DERIVATIVES[consumer](consumer_input).abs()
    raise ValueError(f"consumer must be one of {', '.join(CONSUMERS)}, got {consumer!r}")


class ComponentRows(TorchRows):
    """`lampc.criteria.RuleInputs` at a linear producer, in torch: per row (token), the look-ahead weights c of the
    output components, finite outputs only. Both the strict and the relaxed rule read c; there is no softmax, so
    the target rule (and random/oracle counting from it) is refused (Policy refuses it at compile time)."""

    def __init__(self, y_hat: Tensor, weight: Tensor, site: SitePolicy, *, true_error=None, draws=None):
        self.y_hat, self.site, self.true, self._draws = y_hat, site, true_error, draws
        self.usable = torch.isfinite(y_hat)
        self.weight = weight.nan_to_num(nan=0.0, posinf=0.0).masked_fill(~self.usable, 0.0)

    def strict_weight(self) -> Tensor:
        return self.weight

    relaxed_weight = strict_weight

    def probabilities(self) -> Tensor:
        raise ValueError(f"criterion {self.site.counting_rule.name!r} applies to softmax sites only (attention, "
                         "logits); use strict, relaxed or budget at layer_norm and activation sites")

    def row_tau(self, tau: float, relaxed: bool) -> float:
        return tau  # one row is one token's features: no row length to scale by

    def target_counts(self, a, tau):
        return self.probabilities()

    def budget_counts(self, budget) -> Tensor:
        return budget_counts(torch.ones_like(self.usable), budget)

    def budget_k_max(self, budget) -> int:
        return budget_k_max(self.y_hat.shape[-1], budget)

    def true_error(self) -> Tensor:
        if self.true is None:
            raise ValueError("criterion 'oracle' needs the true first-order error")
        return self.true.nan_to_num(nan=0.0)


def select_components(
    y_hat: Tensor,
    weight: Tensor,
    site: SitePolicy,
    *,
    true_error: Tensor | None = None,
    draws: Tensor | None = None,
) -> Tensor:
    """The selection (bool, shape of y_hat) for `site.criterion`, given the look-ahead weights c (same shape); a
    non-finite output is always selected. draws: the random baseline's uniforms (shaped like y_hat)."""
    rows = ComponentRows(y_hat, weight, site, true_error=true_error, draws=draws)
    return site.rule.select(rows, site) | ~rows.usable


def normalised_component_weights(y_hat: Tensor, weight: Tensor, site: SitePolicy) -> Tensor | None:
    """ν = weight / threshold of the site's rule at each finite output (NaN elsewhere), from the rows
    `select_components` selects from: what calibration records (lookahead/record.py); None without a threshold."""
    return normalised(ComponentRows(y_hat, weight, site), site)
