"""The streaming attention site's op: one call for q·kᵀ, the look-ahead, the recompute, the softmax and p·v
(SitePolicy.streaming; lampc/lookahead/streaming.py computes it over chunks of keys, never T x L):

    out, counts = lampc.lamp_attention(q, k_t, v, scale, mask, False, producer, rule, facts, execution, site)

    out:    f32[…, T, Dv]  softmax(cap(s) + mask) @ v, s the scores with the selected entries recomputed
    counts: i64[H, 4]      per head: selected visible entries, visible entries, tiles holding a selected visible
                           entry, tiles holding a visible entry (what the statistics tap adds up; no T x L
                           selection exists to hand it)

e.g. producer 'emulate m4', rule 'strict tau=0.1', facts 'softcap=none biased=0', execution 'fused=0
dense_above=0.25 streaming=1'.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..lookahead.streaming import streaming_attention
from .arguments import producer_impl, site_settings
from .softmax_site import _check_scores_inputs


@torch.library.custom_op("lampc::lamp_attention", mutates_args=())
def lamp_attention(q: Tensor, k_t: Tensor, v: Tensor, scale: float, mask: Optional[Tensor], is_causal: bool,
                   producer: str, rule: str, facts: str, execution: str, site: int) -> tuple[Tensor, Tensor]:
    """(softmax(cap(s) + mask) @ v, per-head counts): one streaming attention site (module docstring)."""
    _check_scores_inputs(q, k_t)
    settings = site_settings(producer, rule, facts, execution)
    result = streaming_attention(q, k_t, v, scale, mask, is_causal, settings, producer_impl(producer))
    return result.out, result.counts


@lamp_attention.register_fake
def _(q, k_t, v, scale, mask, is_causal, producer, rule, facts, execution, site):
    batch = torch.broadcast_shapes(q.shape[:-2], k_t.shape[:-2], v.shape[:-2])
    out = q.new_empty([*batch, q.shape[-2], v.shape[-1]])
    heads = batch[1] if len(batch) >= 2 else 1
    return out, q.new_empty([heads, 4], dtype=torch.int64)


ATTENTION_SITE_OPS = (torch.ops.lampc.lamp_attention.default,)
