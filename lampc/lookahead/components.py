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
A non-finite ŷ_i is always selected. The paper's `target` rule is specific to softmax and is refused here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..policy import SitePolicy
from .activations import DERIVATIVES
from .norms import layer_norm_column_norms, rms_norm_column_norms
from .softmax import budget_counts, budget_k_max, select_top, select_top_k

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


def _rule(rule: str, weight: Tensor, usable: Tensor, tau: float) -> Tensor:
    if rule == "strict":
        return (weight > tau) & usable
    if rule == "relaxed":
        return (weight > tau * weight.amax(dim=-1, keepdim=True)) & usable
    raise ValueError(f"criterion {rule!r} applies to softmax sites only (attention, logits); use strict, relaxed "
                     "or budget at layer_norm and activation sites")


def select_components(
    y_hat: Tensor,
    weight: Tensor,
    site: SitePolicy,
    *,
    true_error: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The selection (bool, shape of y_hat) for `site.criterion`, given the look-ahead weights c (same shape)."""
    finite = torch.isfinite(y_hat)
    weight = weight.nan_to_num(nan=0.0, posinf=0.0).masked_fill(~finite, 0.0)
    criterion = site.criterion
    if criterion == "uniform":
        selected = torch.zeros_like(finite)
    elif criterion in ("strict", "relaxed", "target"):
        selected = _rule(criterion, weight, finite, site.tau)
    elif criterion == "budget":
        count = budget_counts(torch.ones_like(finite), site.budget)
        selected = select_top_k(weight, finite, count, budget_k_max(y_hat.shape[-1], site.budget))
    else:
        count = _rule(site.count_from, weight, finite, site.tau).sum(dim=-1, keepdim=True)
        if criterion == "random":
            draws = torch.rand(y_hat.shape, generator=generator, device="cpu").to(y_hat.device)
            selected = select_top(draws, finite, count)
        else:
            if true_error is None:
                raise ValueError("criterion 'oracle' needs the true first-order error")
            selected = select_top(true_error.nan_to_num(nan=0.0), finite, count)
    return selected | ~finite
