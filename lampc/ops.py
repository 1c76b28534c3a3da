"""lampc's custom ops: what a rewritten attention site calls.

Each op is a `torch.library.custom_op` with a plain-torch implementation (the reference: lampc.numerics and
lampc.lookahead) and a fake (shape-only) implementation, so rewritten graphs still export, trace and compile.
The site's `SitePolicy` travels as its text spec (`SitePolicy.to_spec()`), so a graph listing shows the numbers.

    s_hat = lampc.lowp_scores(q, k_t, scale, policy)                 # RN(lp_matmul(q, k_t) * scale)
    sel   = lampc.lamp_select(s_hat, q, k_t, scale, mask, causal, policy, site)   # bool, visible entries only
    s     = lampc.recompute_scores(s_hat, sel, q, k_t, scale, policy) # FP32 values at the selected entries
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Optional

import torch
from torch import Tensor

from .lookahead.recompute import fp32_product, recompute
from .lookahead.softmax import select, visible_from_mask
from .numerics import lp_matmul, round_to
from .policy import SitePolicy
from .lookahead.fused import fused_select
from .runtime.native import native_scores

_GENERATORS: dict[tuple[int, int], torch.Generator] = {}  # ops called outside a compiled model
_ACTIVE_STREAMS: ContextVar[dict | None] = ContextVar("lampc_random_streams", default=None)


def random_generator(seed: int, site: int) -> torch.Generator:
    """The seeded generator of one site's random baseline; it advances across calls. Inside a compiled model's call
    (`random_streams`) the generators are that model's own: two models with the same seed draw the same stream,
    and a thread running one model does not advance another's."""
    streams = _ACTIVE_STREAMS.get()
    streams = _GENERATORS if streams is None else streams
    key = (seed, site)
    if key not in streams:
        streams[key] = torch.Generator().manual_seed((seed * 1_000_003 + site) % 2**63)
    return streams[key]


@contextmanager
def random_streams(streams: dict):
    """Within this block (this thread or task), the random baseline draws from `streams` (a model's own dict)."""
    token = _ACTIVE_STREAMS.set(streams)
    try:
        yield
    finally:
        _ACTIVE_STREAMS.reset(token)


def reset_random() -> None:
    """Restart the random baseline of ops called outside a compiled model (compiled models: reset_random())."""
    _GENERATORS.clear()


def _check_scores_inputs(q: Tensor, k_t: Tensor) -> None:
    for name, value in (("q", q), ("k_t", k_t)):
        if value.dtype != torch.float32:
            raise TypeError(f"lampc attention site: {name} must be float32 (compile the FP32 model), got {value.dtype}")


def _scores_shape(q: Tensor, k_t: Tensor) -> list:
    batch = torch.broadcast_shapes(q.shape[:-2], k_t.shape[:-2])
    return [*batch, q.shape[-2], k_t.shape[-1]]


@torch.library.custom_op("lampc::lowp_scores", mutates_args=())
def lowp_scores(q: Tensor, k_t: Tensor, scale: float, policy: str) -> Tensor:
    """ŝ = RN(lp_matmul(q, k_t) * scale): the producer in the site's low-precision format."""
    _check_scores_inputs(q, k_t)
    site = SitePolicy.from_spec(policy)
    if site.backend == "native":  # the GEMM writes the dtype; the scaling is rounded to it once more
        return native_scores(q, k_t, scale, site.format.torch_dtype)
    raw = lp_matmul(q, k_t, site.format, block_k=site.block_k)
    return round_to(raw * scale, site.format)


@lowp_scores.register_fake
def _(q, k_t, scale, policy):
    return q.new_empty(_scores_shape(q, k_t))


@torch.library.custom_op("lampc::lamp_select", mutates_args=())
def lamp_select(
    s_hat: Tensor,
    q: Tensor,
    k_t: Tensor,
    scale: float,
    mask: Optional[Tensor],
    is_causal: bool,
    policy: str,
    site: int,
) -> Tensor:
    """The look-ahead: which score entries to recompute in FP32 (bool, same shape as s_hat)."""
    rule = SitePolicy.from_spec(policy)
    visible = visible_from_mask(mask, s_hat.shape, is_causal, s_hat.device)
    s_fp32 = fp32_product(q, k_t, scale) if rule.criterion == "oracle" else None
    bias = None
    if rule.biased and mask is not None:  # ALiBi: the finite part of the mask is part of the softmax's input
        bias = torch.where(visible, mask, torch.zeros((), dtype=mask.dtype, device=mask.device)).expand(s_hat.shape)
    if rule.fused and rule.criterion != "random":
        return fused_select(s_hat, visible, rule, s_fp32=s_fp32, bias=bias)
    generator = random_generator(rule.seed, site) if rule.criterion == "random" else None
    return select(s_hat, visible, rule, s_fp32=s_fp32, generator=generator, bias=bias)


@lamp_select.register_fake
def _(s_hat, q, k_t, scale, mask, is_causal, policy, site):
    return torch.empty_like(s_hat, dtype=torch.bool)


@torch.library.custom_op("lampc::recompute_scores", mutates_args=())
def recompute_scores(s_hat: Tensor, selected: Tensor, q: Tensor, k_t: Tensor, scale: float, policy: str) -> Tensor:
    """ŝ with the selected entries replaced by their FP32 dot products (sparse, dense above a rate)."""
    rule = SitePolicy.from_spec(policy)
    return recompute(s_hat, selected, q, k_t, scale, rule.dense_above)


@recompute_scores.register_fake
def _(s_hat, selected, q, k_t, scale, policy):
    return torch.empty_like(s_hat)


LAMPC_OPS = (
    torch.ops.lampc.lowp_scores.default,
    torch.ops.lampc.lamp_select.default,
    torch.ops.lampc.recompute_scores.default,
)
"""Every op a rewrite inserts (the pass uses this to recognise graphs it already rewrote)."""
