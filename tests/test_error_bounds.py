"""The producer error bounds of lampc/numerics/error_bounds.py hold against measured errors, and how tight they are.

Measured: |RN(lp_matmul(a, b)·c) − c·(a @ b)| with the exact product in float64, for every format lampc models,
strict and blocked accumulation and the native dtypes; operands random, outlier-heavy (a few entries 100x the
rest) and cancelling (terms of alternating sign whose sum is tiny next to their magnitudes). Entries that overflow
the format (inf/nan) are outside the bound's claim: lampc always recomputes them.
"""

from __future__ import annotations

import pytest
import torch

from lampc.formats import all_formats, parse
from lampc.numerics import lp_matmul, round_to
from lampc.numerics.error_bounds import (accumulation_gamma, magnitude_sum, norm_product, product_error_bound)
from lampc.numerics.native import native_scores

FORMATS = [f.name for f in all_formats()]


def _operands(kind: str, seed: int, k: int = 64, spread: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(3, 8, k, generator=g) * spread, torch.randn(3, k, 12, generator=g) * spread
    if kind == "outliers":
        a[:, :, 5] *= 100.0  # a massive-activation channel
        b[:, 17, :] *= 50.0
    elif kind == "cancelling":  # Σ_k a_k b_k tiny next to Σ_k |a_k b_k|
        b = torch.cat([b[:, : k // 2], b[:, : k // 2]], dim=1)
        a = torch.cat([a[..., : k // 2], -a[..., : k // 2]], dim=-1)
    return a, b


def _measured(a, b, fmt, block_k, scale):
    s_hat = round_to(lp_matmul(a, b, fmt, block_k=block_k) * scale, fmt)
    exact = (a.double() @ b.double()) * scale
    return s_hat, (s_hat.double() - exact).abs()


@pytest.mark.parametrize("kind", ["random", "outliers", "cancelling"])
@pytest.mark.parametrize("block_k", [1, 8])
@pytest.mark.parametrize("fmt", FORMATS)
def test_the_bound_holds_for_every_format_and_mode(fmt, block_k, kind):
    spread = 0.02 if parse(fmt).exp_bits is not None and parse(fmt).exp_bits <= 5 else 1.0  # stay in fp8's range
    a, b = _operands(kind, seed=len(fmt) + block_k, spread=spread)
    scale = 0.125 if kind != "cancelling" else 0.3
    s_hat, error = _measured(a, b, fmt, block_k, scale)
    finite = torch.isfinite(s_hat)
    assert finite.float().mean() > 0.5, "the operands overflow the format: the test would check nothing"
    for scale_kind in ("l1", "norms"):
        bound = product_error_bound(a, b, fmt, block_k=block_k, scale=scale, scale_kind=scale_kind).double()
        assert (error[finite] <= bound[finite]).all(), (scale_kind, float((error - bound)[finite].max()))


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
def test_the_native_bound_holds(fmt):
    for kind in ("random", "outliers", "cancelling"):
        a, b = _operands(kind, seed=3, spread=0.5)
        s_hat = native_scores(a, b, 0.3, parse(fmt).torch_dtype)
        error = (s_hat.double() - (a.double() @ b.double()) * 0.3).abs()
        bound = product_error_bound(a, b, fmt, scale=0.3, native=True).double()
        assert (error <= bound).all(), kind


@pytest.mark.parametrize("fmt, block_k, kind, at_least", [
    ("m4", 1, "random", 0.004),  # strict: a worst case over K + 1 roundings; typical errors grow like sqrt(K)
    ("m7", 8, "outliers", 0.2),  # blocked, one dominant term: few roundings, the bound is nearly reached
])
def test_how_tight_the_bound_is(fmt, block_k, kind, at_least):
    """The worst entry's error as a share of its l1 bound (docs/NUMERICS.md §9 tabulates it): not vacuous."""
    a, b = _operands(kind, seed=0, k=64)
    s_hat, error = _measured(a, b, fmt, block_k, 0.125)
    bound = product_error_bound(a, b, fmt, block_k=block_k, scale=0.125).double()
    assert at_least < float((error / bound).max()) <= 1.0


def test_norm_product_bounds_the_magnitude_sum():
    a, b = _operands("outliers", seed=1)
    assert (norm_product(a, b) >= magnitude_sum(a, b) * (1 - 1e-6)).all()


def test_gamma_grows_with_k_and_shrinks_with_blocking():
    assert accumulation_gamma("m4", 64) > accumulation_gamma("m4", 16) > accumulation_gamma("m7", 16)
    assert accumulation_gamma("m4", 64, block_k=32) < accumulation_gamma("m4", 64)
    assert accumulation_gamma("m23", 64) < 1e-5  # FP32 itself
