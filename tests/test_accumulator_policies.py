"""SitePolicy.rounding and flush_every: a compiled model's sites run lp_matmul's truncating and flushed accumulators
(tests/test_accumulators.py checks those against a scalar oracle); refused by name where they mean nothing."""

from __future__ import annotations

import pytest
import torch

import lampc
from tiny_models import tiny_gpt2
from lampc.numerics import lp_matmul, round_to
from lampc.policy import SitePolicy
from lampc.producers import implementation


def test_the_producer_runs_the_accumulator_the_policy_names():
    g = torch.Generator().manual_seed(0)
    q, k_t = torch.randn(2, 3, 9, 16, generator=g), torch.randn(2, 3, 16, 11, generator=g)
    rz = implementation(SitePolicy(format="m13", rounding="toward_zero").config.producer)
    want = round_to(lp_matmul(q, k_t, "m13", rounding="toward_zero") * 0.25, "m13")
    assert torch.equal(rz.scores(q, k_t, 0.25), want)
    flushed = implementation(SitePolicy(format="m4", flush_every=4).config.producer)
    assert torch.equal(flushed.scores(q, k_t, 0.25), lp_matmul(q, k_t, "m4", flush_every=4) * 0.25)  # FP32
    assert not torch.equal(flushed.scores(q, k_t, 0.25), implementation(SitePolicy().config.producer).scores(
        q, k_t, 0.25))
    assert rz.scores_with_fp32(q, k_t, 0.25) is None  # the Triton site kernel rounds to nearest only


def test_a_compiled_model_uses_them():
    model = tiny_gpt2()
    ids = torch.randint(0, model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(1))
    plain = lampc.compile(model, format="m13", criterion="uniform", steps="none")
    truncating = lampc.compile(model, format="m13", criterion="uniform", rounding="toward_zero", steps="none")
    flushed = lampc.compile(model, format="m13", criterion="uniform", rounding="toward_zero", flush_every=2,
                            steps="none")
    with torch.no_grad():
        ref, a, b, c = model(ids).logits, plain(ids).logits, truncating(ids).logits, flushed(ids).logits
    assert not torch.equal(a, b) and not torch.equal(b, c)
    err = [float((x - ref).abs().mean()) for x in (b, c)]
    assert err[1] < err[0]  # flushing into FP32 removes most of the truncation's drift
    assert flushed.policy.attention.config.texts.producer == "emulate m13 rounding=toward_zero flush_every=2"


def test_refused_by_name():
    with pytest.raises(ValueError, match="SitePolicy.rounding='toward_zero' needs a format with FP32's exponent"):
        SitePolicy(format="fp16", rounding="toward_zero")
    with pytest.raises(ValueError, match="SitePolicy.rounding applies to backend='emulate' only"):
        SitePolicy(format="bf16", backend="native", rounding="toward_zero")
    with pytest.raises(ValueError, match="SitePolicy.flush_every must be an integer >= 1"):
        SitePolicy(flush_every=0)
    with pytest.raises(ValueError, match="SitePolicy.rounding must be one of"):
        SitePolicy(rounding="up")


def test_export_refuses_them_by_name(tmp_path):
    from lampc.export.onnx import export_onnx

    compiled = lampc.compile(tiny_gpt2(), format="m13", rounding="toward_zero", steps="none")
    with pytest.raises(Exception, match="rounding='toward_zero', flush_every and operand_format have no ONNX translation"):
        export_onnx(compiled, tmp_path / "m.onnx")
