"""The fused softmax site: producer, look-ahead and recompute in one op, over one buffer (SitePolicy.fused).

The unfused site is three ops (lowp_scores, lamp_select, recompute_scores), each returning a new tensor, as
custom ops must: the recompute copies the whole score tensor to change a few entries, and the native scores are
widened to FP32 in a pass of their own. The fused op owns its score buffer, so the look-ahead reads the GEMM's
low-precision output while widening it (one compiled loop nest; on the CPU, strict and uniform sites select from
row statistics instead, lampc/lookahead/row_stats.py) and the recompute writes into the buffer:

    before (fused=False)                                    after (fused=True)
    s_hat = lampc.lowp_scores(q, k_t, scale, producer)      both = lampc.lamp_scores(q, k_t, scale, mask, False,
    sel   = lampc.lamp_select(s_hat, q, k_t, scale, mask,              producer, rule, facts, execution, site)
              False, producer, rule, facts, execution, site) s    = both[0]
    s     = lampc.recompute_scores(s_hat, sel, q, k_t,      sel  = both[1]
                                   scale, execution)

The values and the selection are those of the three ops (tests/test_fused_site.py checks them equal).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..lookahead import row_stats
from ..lookahead.error_scale import producer_error_scale
from ..lookahead.fused import fused_widen_select
from ..lookahead.recompute import recompute_in_format, recompute_into
from ..lookahead.softmax import visible_from_mask
from .arguments import producer_impl, site_settings
from .softmax_site import _check_scores_inputs, _scores_shape, check_fits_materialised, lamp_select, lowp_scores


@torch.library.custom_op("lampc::lamp_scores", mutates_args=())
def lamp_scores(
    q: Tensor, k_t: Tensor, scale: float, mask: Optional[Tensor], is_causal: bool, producer: str, rule: str,
    facts: str, execution: str, site: int, draws: Optional[Tensor] = None, k_low: Optional[Tensor] = None
) -> tuple[Tensor, Tensor]:
    """(scores with the selected entries in FP32, the selection): one softmax site in one op. draws: as lamp_select
    takes them (the random baseline's uniforms); k_low: as lowp_scores takes it (a weight's prepared form)."""
    _check_scores_inputs(q, k_t)
    check_fits_materialised(q, k_t)
    settings = site_settings(producer, rule, facts, execution)
    # a producer with a dtype of its own writes its scores in it; a pure rule reads them while widening
    pure = settings.rule.pure and not settings.biased
    s_low = producer_impl(producer).scores_low(q, k_t, scale, k_low) if pure else None
    if s_low is not None:
        visible = visible_from_mask(mask, _scores_shape(q, k_t), is_causal, q.device)
        if row_stats.supports(settings, q.device) and settings.recompute_format is None:
            s_hat = s_low.to(torch.float32)
            every = mask is None and not is_causal
            selected, flat = row_stats.select_from_row_stats(s_hat, None if every else visible, settings, s_low=s_low)
            return recompute_into(s_hat, selected, q, k_t, scale, settings.dense_above, flat=flat), selected
        error_scale = producer_error_scale(settings, q, k_t, s_low, scale)
        s_hat, selected = fused_widen_select(s_low, visible, settings, error_scale)
    else:  # emulated formats and the evaluation baselines: the unfused ops' own code
        s_hat = lowp_scores(q, k_t, scale, producer, k_low)
        selected = lamp_select(s_hat, q, k_t, scale, mask, is_causal, producer, rule, facts, execution, site, draws)
    if settings.recompute_format is not None:
        return recompute_in_format(s_hat, selected, q, k_t, scale, settings.recompute_format), selected
    return recompute_into(s_hat, selected, q, k_t, scale, settings.dense_above), selected


@lamp_scores.register_fake
def _(q, k_t, scale, mask, is_causal, producer, rule, facts, execution, site, draws=None, k_low=None):
    scores = q.new_empty(_scores_shape(q, k_t))
    return scores, torch.empty_like(scores, dtype=torch.bool)
