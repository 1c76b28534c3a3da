"""Calibration's recording, as graph values: ν of a site's look-ahead, and the module that collects it.

`lampc/passes/recording.py` adds these after each unfused selection of a threshold rule while calibration records
(and takes them out again): the ν op takes the selection op's own arguments, so it reads what the selection read.

    sel_3 = lampc.lamp_select(s_hat, q, k_t, scale, mask, causal, producer, rule, facts, execution, 3)
    nu_3  = lampc.normalised_weights(s_hat, q, k_t, scale, mask, causal, producer, rule, facts, execution)
    lampc_record_3(nu_3)                                  # WeightTap: adds ν to its WeightRecorder's site 3

ν = weight / threshold at each entry the rule may pick, NaN at the others (lampc/lookahead/record.py); all NaN for
a rule without a threshold.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..lookahead.components import normalised_component_weights as component_nu
from ..lookahead.error_scale import producer_error_scale
from ..lookahead.record import WeightRecorder
from ..lookahead.softmax import normalised_weights as softmax_nu
from .arguments import site_settings
from .linear_site import component_weights, consumer_input
from .softmax_site import lookahead_inputs
from ..numerics.tracing import is_fake


def _or_nothing(nu: Tensor | None, like: Tensor) -> Tensor:
    return torch.full_like(like, float("nan")) if nu is None else nu


@torch.library.custom_op("lampc::normalised_weights", mutates_args=())
def normalised_weights(s_hat: Tensor, q: Tensor, k_t: Tensor, scale: float, mask: Optional[Tensor], is_causal: bool,
                       producer: str, rule: str, facts: str, execution: str) -> Tensor:
    """ν of lamp_select's rule at each score entry (same arguments as lamp_select's, without the site's index)."""
    settings = site_settings(producer, rule, facts, execution)
    visible, bias, error_scale = lookahead_inputs(s_hat, q, k_t, scale, mask, is_causal, settings)
    return _or_nothing(softmax_nu(s_hat, visible, settings, bias=bias, error_scale=error_scale), s_hat)


@normalised_weights.register_fake
def _(s_hat, q, k_t, scale, mask, is_causal, producer, rule, facts, execution):
    return torch.empty_like(s_hat)


@torch.library.custom_op("lampc::normalised_component_weights", mutates_args=())
def normalised_component_weights(y_hat: Tensor, x: Tensor, w: Tensor, bias: Optional[Tensor],
                                 residual: Optional[Tensor], gamma: Optional[Tensor], eps: float, consumer: str,
                                 producer: str, rule: str, execution: str) -> Tensor:
    """ν of component_select's rule at each output (same arguments as component_select's, without the index), in
    y_hat's shape."""
    settings = site_settings(producer, rule, None, execution)
    h_hat = consumer_input(y_hat, residual)
    error_scale = producer_error_scale(settings, x, w, y_hat, bias=bias)
    weight = component_weights(y_hat, h_hat, gamma, eps, consumer, error_scale)
    nu = component_nu(y_hat.reshape(h_hat.shape), weight, settings)
    return _or_nothing(None if nu is None else nu.reshape(y_hat.shape), y_hat)


@normalised_component_weights.register_fake
def _(y_hat, x, w, bias, residual, gamma, eps, consumer, producer, rule, execution):
    return torch.empty_like(y_hat)


NORMALISED_WEIGHTS = {
    torch.ops.lampc.lamp_select.default: (torch.ops.lampc.normalised_weights.default, 10),
    torch.ops.lampc.component_select.default: (torch.ops.lampc.normalised_component_weights.default, 11),
}
"""selection op -> (its ν op, how many of the selection's leading arguments the ν op takes)."""


class WeightTap(nn.Module):
    """`lampc_record_<site>(nu)`: adds one call's ν to `recorder` (site `site`). Returns nothing and changes no
    value; skipped while the graph is traced."""

    def __init__(self, site: int, recorder: WeightRecorder):
        super().__init__()
        self.site, self.recorder = site, recorder

    def forward(self, nu: Tensor) -> None:
        if torch.compiler.is_compiling() or is_fake(nu):
            return None
        self.recorder.add(self.site, nu)
        return None
