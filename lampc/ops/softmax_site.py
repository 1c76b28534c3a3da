"""The softmax site's custom ops: what a rewritten attention (or logits) site calls.

Each op is a `torch.library.custom_op` with a plain-torch implementation (the reference: lampc.numerics and
lampc.lookahead) and a fake (shape-only) implementation, so rewritten graphs still export, trace and compile.
Each op receives only the parts of the site's configuration it reads (lampc/config/), as their texts, so a graph
listing shows the numbers:

    s_hat = lampc.lowp_scores(q, k_t, scale, producer)       # RN(RN(q @ k_t) * scale), the producer's numerics
    sel   = lampc.lamp_select(s_hat, q, k_t, scale, mask, causal, producer, rule, facts, execution, site)
                                                             # bool, visible entries only
    s     = lampc.recompute_scores(s_hat, sel, q, k_t, scale, execution)   # FP32 values at the selected entries

    e.g. producer 'emulate m4', rule 'strict tau=0.1', facts 'softcap=none biased=0', execution
    'fused=0 dense_above=0.25'
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ..lookahead.error_scale import producer_error_scale
from ..lookahead.fused import fused_select
from ..lookahead.recompute import fp32_product, recompute, recompute_in_format
from ..lookahead.softmax import select, visible_from_mask
from .arguments import execution as execution_of, producer_impl, site_settings
from .random import outside_draws, scores_shape as _scores_shape


def _check_scores_inputs(q: Tensor, k_t: Tensor) -> None:
    for name, value in (("q", q), ("k_t", k_t)):
        if value.dtype != torch.float32:
            raise TypeError(f"lampc attention site: {name} must be float32 (compile the FP32 model), got {value.dtype}")


SCORE_BUFFERS = 7
"""Score-sized float32 buffers a materialised attention site holds at its peak (the scores, their softmax, the
weights, the selection, the recomputed copy, ...; measured: SmolLM2's extra memory over FP32 is about this many per
layer)."""

CHECK_ABOVE = 1 << 26
"""Score entries above which a materialised site first checks that its buffers fit in the available memory."""


def check_fits_materialised(q: Tensor, k_t: Tensor) -> None:
    """MemoryError naming streaming=True when a materialised attention site's buffers would exceed the memory this
    machine has available (CPU, attention's batched keys; Linux's MemAvailable), instead of swapping or an OOM."""
    if k_t.dim() < 3 or q.device.type != "cpu" or torch.compiler.is_compiling():
        return
    entries = math.prod(_scores_shape(q, k_t))
    if entries <= CHECK_ABOVE:
        return
    available = available_memory()
    need = entries * 4 * SCORE_BUFFERS
    if available is not None and need > available:
        shape = "x".join(str(n) for n in _scores_shape(q, k_t))
        raise MemoryError(f"lampc attention site: a materialised site holds about {SCORE_BUFFERS} buffers of the "
                          f"{shape} scores, {need / 2**30:.1f} GiB, and this machine has {available / 2**30:.1f} GiB "
                          "available; compile with streaming=True (O(T x chunk) memory; criteria uniform, strict, "
                          "relaxed, running_max), or a shorter sequence")


def available_memory() -> int | None:
    """Bytes the kernel says are available (MemAvailable), or None where /proc/meminfo has no such line."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@torch.library.custom_op("lampc::lowp_scores", mutates_args=())
def lowp_scores(q: Tensor, k_t: Tensor, scale: float, producer: str, k_low: Optional[Tensor] = None) -> Tensor:
    """ŝ = RN(RN(q @ k_t) * scale): the site's producer (lampc/producers/). k_low: the producer's form of k_t when
    it is a weight (the logits site's lm_head), prepared by the graph; None: made from k_t at this call."""
    _check_scores_inputs(q, k_t)
    check_fits_materialised(q, k_t)
    return producer_impl(producer).scores(q, k_t, scale, k_low)


@lowp_scores.register_fake
def _(q, k_t, scale, producer, k_low=None):
    return q.new_empty(_scores_shape(q, k_t))


@torch.library.custom_op("lampc::lamp_select", mutates_args=())
def lamp_select(
    s_hat: Tensor,
    q: Tensor,
    k_t: Tensor,
    scale: float,
    mask: Optional[Tensor],
    is_causal: bool,
    producer: str,
    rule: str,
    facts: str,
    execution: str,
    site: int,
    draws: Optional[Tensor] = None,
) -> Tensor:
    """The look-ahead: which score entries to recompute in FP32 (bool, same shape as s_hat). draws: the random
    baseline's uniforms shaped like s_hat (the graph's lampc_draws_<site>, lampc/ops/random.py); None on a drawing
    rule: drawn from lampc.ops.random's outside streams of (seed, site)."""
    settings = site_settings(producer, rule, facts, execution)
    visible, bias, scale_ = lookahead_inputs(s_hat, q, k_t, scale, mask, is_causal, settings)
    s_fp32 = fp32_product(q, k_t, scale) if settings.rule.needs_fp32 else None
    if settings.fused and settings.rule.compiles and settings.granularity == "entry":
        return fused_select(s_hat, visible, settings, s_fp32=s_fp32, bias=bias, error_scale=scale_)
    if settings.rule.draws and draws is None:
        draws = outside_draws(settings.seed, site, s_hat)
    return select(s_hat, visible, settings, s_fp32=s_fp32, draws=draws, bias=bias, error_scale=scale_)


def lookahead_inputs(s_hat: Tensor, q: Tensor, k_t: Tensor, scale: float, mask: Optional[Tensor], is_causal: bool,
                     settings) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """(visible, bias, error scale): what the look-ahead reads beside ŝ, from lamp_select's arguments."""
    visible = visible_from_mask(mask, s_hat.shape, is_causal, s_hat.device)
    bias = None
    if settings.biased and mask is not None:  # ALiBi: the finite part of the mask is part of the softmax's input
        bias = torch.where(visible, mask, torch.zeros((), dtype=mask.dtype, device=mask.device)).expand(s_hat.shape)
    return visible, bias, producer_error_scale(settings, q, k_t, s_hat, scale)


@lamp_select.register_fake
def _(s_hat, q, k_t, scale, mask, is_causal, producer, rule, facts, execution, site, draws=None):
    return torch.empty_like(s_hat, dtype=torch.bool)


@torch.library.custom_op("lampc::recompute_scores", mutates_args=())
def recompute_scores(s_hat: Tensor, selected: Tensor, q: Tensor, k_t: Tensor, scale: float, execution: str) -> Tensor:
    """ŝ with the selected entries replaced by their FP32 dot products (sparse, dense above a rate), or by their
    values in the execution's recompute_format."""
    settings = execution_of(execution)
    if settings.recompute_format is not None:
        return recompute_in_format(s_hat.clone(), selected, q, k_t, scale, settings.recompute_format)
    return recompute(s_hat, selected, q, k_t, scale, settings.dense_above)


@recompute_scores.register_fake
def _(s_hat, selected, q, k_t, scale, execution):
    return torch.empty_like(s_hat)


SOFTMAX_SITE_OPS = (
    torch.ops.lampc.lowp_scores.default,
    torch.ops.lampc.lamp_select.default,
    torch.ops.lampc.recompute_scores.default,
)
