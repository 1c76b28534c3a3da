"""Custom ops of the linear sites (layer_norm, activation) and of the lowered matmuls.

    y_hat = lampc.lowp_matmul(x, w, bias, producer, execution)   # RN(x @ w + bias): any matmul in low precision;
                                                                 # fp16/fp8 overflows recomputed in FP32 (never inf);
                                                                 # w_low=: the weight as the producer prepared it
    sel   = lampc.component_select(y_hat, x, w, bias, residual, gamma, eps, consumer, producer, rule, execution, site)
    y     = lampc.recompute_linear(y_hat, sel, x, w, bias, execution)   # FP32 x_t·w_i + b_i at the selected outputs

producer, rule, execution: the parts of the site's configuration each op reads, as their texts (lampc/config/).

x: f32[..., K], w: f32[K, N] (or batched like torch.matmul), bias: f32[N] or None. The consumer's input is
`residual + y_hat` (viewed to the residual's shape) when the site has a residual add, else y_hat.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..lookahead.components import column_norms, select_components
from ..lookahead.error_scale import producer_error_scale
from ..lookahead.fused import fused_component_select
from ..lookahead.recompute import fp32_product, recompute
from ..policy import SitePolicy
from .arguments import execution as execution_of, producer_impl, site_settings
from .random import outside_draws


@torch.library.custom_op("lampc::lowp_matmul", mutates_args=())
def lowp_matmul(x: Tensor, w: Tensor, bias: Optional[Tensor], producer: str, execution: str,
                w_low: Optional[Tensor] = None) -> Tensor:
    """RN(x @ w + bias) by the site's producer (lampc/producers/). w_low: the producer's form of the weight w,
    prepared by the graph (ProducerImpl.prepare_weight: the native cast); None: made from w at this call."""
    for name, value in (("x", x), ("w", w)):
        if value.dtype != torch.float32:
            raise TypeError(f"lampc.lowp_matmul: {name} must be float32, got {value.dtype}")
    impl = producer_impl(producer)
    y_hat = impl.matmul(x, w, bias, w_low)
    if narrow_range(impl.p):  # an overflow must not reach the consumer where the FP32 product is finite
        overflowed = ~torch.isfinite(y_hat)
        if bool(overflowed.any()):  # host sync, fp16/fp8 only
            y_hat = recompute(y_hat, overflowed, x, w, 1.0, execution_of(execution).dense_above, bias)
    return y_hat


def narrow_range(site: SitePolicy) -> bool:
    """Whether the site's format overflows below FP32's range (fp16, fp8): its outputs need a finiteness guard.
    `site`: anything with a `format` (a SitePolicy, a producer)."""
    exp_bits = site.format.exp_bits
    return exp_bits is not None and exp_bits < 8


@lowp_matmul.register_fake
def _(x, w, bias, producer, execution, w_low=None):
    return torch.empty(_out_shape(x, w), dtype=x.dtype, device=x.device)


def _out_shape(x, w):
    batch = torch.broadcast_shapes(x.shape[:-2], w.shape[:-2]) if w.dim() > 2 else x.shape[:-2]
    return [*batch, x.shape[-2], w.shape[-1]] if x.dim() > 1 else [w.shape[-1]]


def consumer_input(y_hat: Tensor, residual: Optional[Tensor]) -> Tensor:
    """What the consumer sees: residual + y_hat in the residual's shape, or y_hat."""
    return y_hat if residual is None else residual + y_hat.reshape(residual.shape)


@torch.library.custom_op("lampc::component_select", mutates_args=())
def component_select(
    y_hat: Tensor, x: Tensor, w: Tensor, bias: Optional[Tensor], residual: Optional[Tensor], gamma: Optional[Tensor],
    eps: float, consumer: str, producer: str, rule: str, execution: str, site: int, draws: Optional[Tensor] = None,
) -> Tensor:
    """The look-ahead at a linear producer: c_i = column norm of the consumer's Jacobian x |ŷ_i|. draws: the random
    baseline's uniforms shaped like y_hat (the graph's lampc_draws_<site>, lampc/ops/random.py); None on a drawing
    rule: drawn from lampc.ops.random's outside streams of (seed, site)."""
    settings = site_settings(producer, rule, None, execution)
    if not settings.rule.looks_ahead:  # no look-ahead: only non-finite outputs are recomputed
        return ~torch.isfinite(y_hat)
    h_hat = consumer_input(y_hat, residual)
    error_scale = producer_error_scale(settings, x, w, y_hat, bias=bias)  # None: |ŷ_i|, the paper's relative error
    if settings.fused and settings.rule.pure:
        return fused_component_select(y_hat, h_hat, consumer, gamma, eps, settings, error_scale).reshape(y_hat.shape)
    weight = component_weights(y_hat, h_hat, gamma, eps, consumer, error_scale)
    true_error = None
    if settings.rule.needs_fp32:
        y = fp32_product(x, w, bias=bias)
        h = consumer_input(y, residual)
        true_error = column_norms(consumer, h, gamma, eps) * (y - y_hat).reshape(h.shape).abs()
    if settings.rule.draws and draws is None:
        draws = outside_draws(settings.seed, site, y_hat)
    selected = select_components(y_hat.reshape(h_hat.shape), weight, settings, true_error=true_error,
                                 draws=None if draws is None else draws.reshape(h_hat.shape))
    return selected.reshape(y_hat.shape)


def component_weights(y_hat: Tensor, h_hat: Tensor, gamma: Optional[Tensor], eps: float, consumer: str,
                      error_scale: Optional[Tensor]) -> Tensor:
    """c_i = column norm of the consumer's Jacobian at h_hat x the error scale of ŷ_i (|ŷ_i| when None), in
    h_hat's shape: the look-ahead weights of the unfused component_select."""
    scale = y_hat.abs() if error_scale is None else error_scale.expand(y_hat.shape)
    return column_norms(consumer, h_hat, gamma, eps) * scale.reshape(h_hat.shape)


@component_select.register_fake
def _(y_hat, x, w, bias, residual, gamma, eps, consumer, producer, rule, execution, site, draws=None):
    return torch.empty_like(y_hat, dtype=torch.bool)


@torch.library.custom_op("lampc::recompute_linear", mutates_args=())
def recompute_linear(y_hat: Tensor, selected: Tensor, x: Tensor, w: Tensor, bias: Optional[Tensor],
                     execution: str) -> Tensor:
    """y_hat with the selected outputs replaced by FP32 x_t·w_i + b_i (gathered; dense above the execution's rate)."""
    return recompute(y_hat, selected, x, w, 1.0, execution_of(execution).dense_above, bias)


@recompute_linear.register_fake
def _(y_hat, selected, x, w, bias, execution):
    return torch.empty_like(y_hat)


LINEAR_SITE_OPS = (
    torch.ops.lampc.lowp_matmul.default,
    torch.ops.lampc.component_select.default,
    torch.ops.lampc.recompute_linear.default,
)
