"""The softmax with its exponentials rounded to a format (SitePolicy.exp_format at a materialised attention site):
what an attention kernel computes when it feeds low-precision probabilities P to its second GEMM.

    before                          after
    p = softmax(s, -1)              p = lampc.rounded_softmax(s, 'fp8_e4m3')

    e_i = RN_fmt(exp(s_i − max_j s_j)),   p_i = e_i / Σ_j e_j   (the sum and the division in FP32)

The streaming site rounds exp(s_i − m) with m the running maximum instead (lampc/lookahead/streaming.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..lookahead.softmax import rounded_softmax as rounded_softmax_reference


@torch.library.custom_op("lampc::rounded_softmax", mutates_args=())
def rounded_softmax(s: Tensor, exp_format: str) -> Tensor:
    """softmax(s, -1) with exp(s − row max) rounded to `exp_format` (module docstring)."""
    if s.dtype != torch.float32:
        raise TypeError(f"lampc.rounded_softmax: s must be float32, got {s.dtype}")
    return rounded_softmax_reference(s, exp_format)


@rounded_softmax.register_fake
def _(s, exp_format):
    return torch.empty_like(s)
