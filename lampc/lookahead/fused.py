"""Fused look-ahead: the selection arithmetic through torch.compile (SitePolicy.fused=True).

Eager PyTorch runs the look-ahead as a dozen separate passes over the scores (masked softmax, sensitivity,
threshold, ...), each reading and writing the whole (B, H, T, L) tensor; inductor fuses them into a few loops,
which is what makes the look-ahead cheap next to the low-precision GEMM. Shapes are dynamic (one compile per
rank, not per sequence length). The random baseline draws from a generator and stays eager.
"""

from __future__ import annotations

import functools

import torch

from .components import column_norms, select_components
from .softmax import select


@functools.cache
def compiled(fn):
    """fn through torch.compile with dynamic shapes, once per function."""
    return torch.compile(fn, dynamic=True)


def fused_select(s_hat, visible, site, *, s_fp32=None, bias=None, error_scale=None):
    """`select` (softmax sites), compiled."""
    return compiled(select)(s_hat, visible, site, s_fp32=s_fp32, bias=bias, error_scale=error_scale)


def _widen_and_select(s_low, visible, site, error_scale):
    s_hat = s_low.to(torch.float32)
    return s_hat, select(s_hat, visible, site, error_scale=error_scale).to(torch.uint8)


def fused_widen_select(s_low, visible, site, error_scale=None):
    """(ŝ in float32, `select` of it) from the scores of a native low-precision GEMM, in one compiled loop nest:
    the widening to FP32 is not a pass of its own. (Inductor's CPU code stores uint8 several times faster than
    bool; the selection is computed as uint8 and viewed as bool, without a copy.)"""
    s_hat, selected = compiled(_widen_and_select)(s_low, visible, site, error_scale)
    return s_hat, selected.view(torch.bool)


def _component_weights_and_select(y_hat, h_hat, consumer, gamma, eps, site, error_scale):
    scale = y_hat.abs() if error_scale is None else error_scale
    weight = column_norms(consumer, h_hat, gamma, eps) * scale.reshape(h_hat.shape)
    return select_components(y_hat.reshape(h_hat.shape), weight, site)


def fused_component_select(y_hat, h_hat, consumer, gamma, eps, site, error_scale=None):
    """Weights and selection at a linear site, compiled (criteria without randomness or an oracle)."""
    return compiled(_component_weights_and_select)(y_hat, h_hat, consumer, gamma, eps, site, error_scale)
