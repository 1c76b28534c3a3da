"""FP8 operands with per-block scales (SitePolicy.operand_format, lampc/numerics/operands.py) and the rounded
softmax (SitePolicy.exp_format) against plain loops with ml_dtypes' rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lampc
import lampc.ops
from lampc.numerics import lp_matmul, round_to
from lampc.numerics.operands import quantize
from lampc.policy import SitePolicy
from lampc.producers import implementation

ml_dtypes = pytest.importorskip("ml_dtypes")
E4M3_MAX = 448.0


def _plain_quantize_rows(a: np.ndarray, block: int):
    """Rows of a (M, K) in blocks of `block`, each scaled by amax / 448 and rounded to e4m3 by ml_dtypes."""
    out, scales = np.empty_like(a), np.empty((a.shape[0], 1), dtype=np.float32)
    for start in range(0, a.shape[0], block):
        part = a[start:start + block]
        amax = np.float32(np.abs(part).max())
        scale = np.float32(amax / np.float32(E4M3_MAX)) if amax > 0 else np.float32(1)
        out[start:start + block] = (part / scale).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
        scales[start:start + block] = scale
    return out, scales


@pytest.mark.parametrize("block", [1, 5, 16, 64])
def test_quantize_rows_and_columns_against_ml_dtypes(block):
    g = torch.Generator().manual_seed(block)
    a = torch.randn(37, 24, generator=g) * torch.logspace(-3, 3, 37).unsqueeze(-1)
    a[3:8] = 0.0  # a block of zeros keeps scale 1
    got, scale = quantize(a, "fp8_e4m3", block, -2)
    want, want_scale = _plain_quantize_rows(a.numpy(), block)
    assert np.array_equal(got.numpy(), want) and np.array_equal(scale.expand(37, 1).numpy(), want_scale)
    got_t, scale_t = quantize(a.t().contiguous(), "fp8_e4m3", block, -1)  # columns: the same blocks, transposed
    assert torch.equal(got_t, got.t()) and torch.equal(scale_t.squeeze(0), scale.squeeze(-1))


def test_bf16_operands_are_only_rounded():
    a = torch.randn(8, 8)
    got, scale = quantize(a, "bf16", 4, -2)
    assert torch.equal(got, a.to(torch.bfloat16).float()) and float(scale) == 1.0


def test_the_producer_accumulates_the_quantized_operands_and_scales_back():
    site = SitePolicy(format="m13", rounding="toward_zero", operand_format="fp8_e4m3", operand_block=16)
    g = torch.Generator().manual_seed(0)
    q, k_t = torch.randn(2, 40, 32, generator=g), torch.randn(2, 32, 50, generator=g)
    q_q, s_q = quantize(q, "fp8_e4m3", 16, -2)
    k_q, s_k = quantize(k_t, "fp8_e4m3", 16, -1)
    want = round_to(lp_matmul(q_q, k_q, "m13", 1, rounding="toward_zero") * s_q * s_k * 0.125, "m13")
    assert torch.equal(implementation(site.producer).scores(q, k_t, 0.125), want)
    fp32 = (q @ k_t) * 0.125
    assert 1e-3 < float(((want - fp32).abs().max() / fp32.abs().max())) < 0.1  # fp8's error, not more


def test_operand_format_is_refused_where_it_means_nothing():
    with pytest.raises(ValueError, match="operand_format applies to backend='emulate'"):
        SitePolicy(backend="native", format="bf16", operand_format="fp8_e4m3")
    with pytest.raises(ValueError, match="error_scale='l1'.*operand_format"):
        SitePolicy(operand_format="fp8_e4m3", error_scale="l1")
    with pytest.raises(ValueError, match="operand_block"):
        SitePolicy(operand_format="fp8_e4m3", operand_block=0)


def _plain_rounded_softmax(s: np.ndarray) -> np.ndarray:
    out = np.empty_like(s)
    for index in np.ndindex(*s.shape[:-1]):
        row = s[index]
        e = np.exp(row - row.max()).astype(np.float32).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
        out[index] = e / e.sum(dtype=np.float32)
    return out


def test_rounded_softmax_against_ml_dtypes():
    s = torch.randn(3, 5, 70) * 4
    got = lampc.ops.rounded_softmax(s, "fp8_e4m3")
    assert np.allclose(got.numpy(), _plain_rounded_softmax(s.numpy()), rtol=1e-6, atol=0)
    assert (got - torch.softmax(s, -1)).abs().max() > 1e-3


def test_exp_format_rewrites_the_materialised_softmax():
    from tiny_models import padded_batch, tiny_llama

    model = tiny_llama()
    ids, attention = padded_batch(model.config.vocab_size)
    compiled = lampc.compile(model, steps="none", exp_format="fp8_e4m3")
    targets = [n.target for n in compiled.graph_module.graph.nodes]
    assert torch.ops.lampc.rounded_softmax.default in targets and torch.ops.aten.softmax.int not in targets
    plain = lampc.compile(model, steps="none")
    streamed = lampc.compile(model, steps="none", exp_format="fp8_e4m3", streaming=True)
    got, fp = compiled(ids, attention_mask=attention).logits, plain(ids, attention_mask=attention).logits
    assert (got - fp).abs().max() > 1e-4  # the rounding shows
    # one chunk (12 keys): the running maximum is the row's, so the two forms round alike
    assert (streamed(ids, attention_mask=attention).logits - got).abs().max() <= 1e-5 * got.abs().max()
