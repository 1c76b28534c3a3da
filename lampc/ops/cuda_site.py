"""The fused softmax site on a CUDA device: `lampc::lamp_scores` (lampc/ops/fused_site.py) with the emulated producer
and the FP32 scores from one Triton kernel (lampc/kernels/triton_scores.py).

    register_cuda()            registers `lamp_scores_cuda` as the op's CUDA kernel (torch.library.register_kernel);
                               False, and nothing registered, without CUDA or triton
    lamp_scores_cuda(...)      the op's arguments -> (scores, selection), as the op's default implementation

What it runs for a site it takes (a producer with a device kernel for its scores and the FP32 ones,
`ProducerImpl.scores_with_fp32`: the emulated one with a low-precision format; a rule that selects from the scores
alone, `settings.rule.pure`: strict, relaxed, target, budget, uniform):

    s_hat, s32 = producer.scores_with_fp32(q, k_t, scale)   ŝ bit for bit as the producer, s32 in FP32 (Triton)
    selected   = select(s_hat, visible, settings, ...)                the look-ahead's own torch code, on the GPU
    scores     = torch.where(selected, s32, s_hat)                    the recompute: no second matmul

The selection is the default's (same ŝ, same rule code; the default compiles that code when the site is fused, with
the same values); the recomputed entries are FP32 dot products summed in another order than torch.matmul's, which
the recompute allows (lampc/lookahead/recompute.py: "up to FP32 summation order"). Every other site (a native
producer, an identity format, a rule that draws or reads the FP32 product, a weight's prepared k_low) runs the op's
default implementation.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..lookahead.softmax import select
from .arguments import producer_impl, site_settings
from .fused_site import lamp_scores
from .softmax_site import lookahead_inputs

OP_NAME = "lampc::lamp_scores"
_registered = False


def register_cuda() -> bool:
    """Register `lamp_scores_cuda` as lampc::lamp_scores's CUDA kernel; True once registered (again: no-op, True).
    False, with nothing registered, where torch has no CUDA device or triton is not installed."""
    global _registered
    if _registered:
        return True
    if not torch.cuda.is_available():
        return False
    try:
        from ..kernels import triton_scores  # noqa: F401 (what lamp_scores_cuda launches)
    except ImportError:  # no triton
        return False
    torch.library.register_kernel(OP_NAME, "cuda", lamp_scores_cuda)
    _registered = True
    return True


def lamp_scores_cuda(
    q: Tensor, k_t: Tensor, scale: float, mask: Optional[Tensor], is_causal: bool, producer: str, rule: str,
    facts: str, execution: str, site: int, draws: Optional[Tensor] = None, k_low: Optional[Tensor] = None
) -> tuple[Tensor, Tensor]:
    """lampc::lamp_scores with ŝ and the FP32 scores from one Triton kernel where the site allows it (module
    docstring), else the op's default implementation. Runs on any device Triton can launch on (CUDA; the CPU under
    TRITON_INTERPRET=1, as the tests do)."""
    args = (q, k_t, scale, mask, is_causal, producer, rule, facts, execution, site, draws, k_low)
    settings = site_settings(producer, rule, facts, execution)
    if not settings.rule.pure or k_low is not None or not _takes(q, k_t):
        return default_lamp_scores(*args)
    scores = producer_impl(producer).scores_with_fp32(q, k_t, scale)  # None: the producer has no such kernel
    if scores is None:
        return default_lamp_scores(*args)
    s_hat, s32 = scores
    visible, bias, error_scale = lookahead_inputs(s_hat, q, k_t, scale, mask, is_causal, settings)
    selected = select(s_hat, visible, settings, bias=bias, error_scale=error_scale)
    return torch.where(selected, s32, s_hat), selected


def default_lamp_scores(*args) -> tuple[Tensor, Tensor]:
    """The op's default (Python) implementation, called directly: what lamp_scores runs where no kernel is
    registered. torch keeps the decorated function as the CustomOpDef's `_init_fn` (torch >= 2.4); should that ever
    go, the op is called again with its CUDA kernel switched off (set_kernel_enabled), which runs the same function."""
    init_fn = getattr(lamp_scores, "_init_fn", None)
    if init_fn is not None:
        return init_fn(*args)
    with lamp_scores.set_kernel_enabled("cuda", False):
        return lamp_scores(*args)


def _takes(q: Tensor, k_t: Tensor) -> bool:
    """float32 operands of at least two dimensions on one device (anything else: the default, which checks them)."""
    return (q.dtype == torch.float32 and k_t.dtype == torch.float32 and q.dim() >= 2 and k_t.dim() >= 2
            and q.device == k_t.device)
