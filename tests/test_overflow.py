"""No silent NaN: a low-precision value that overflows never reaches a consumer where the FP32 model is finite.

The models here really overflow: their query/key (and MLP) weights are scaled so that FP32 scores reach ~1e5,
above fp16's 65504, fp8_e5m2's 57344 and fp8_e4m3's 448, while the FP32 model's logits stay finite. Before the
fix, an overflowed score at a causally *masked* position stayed inf after the additive mask (inf + finfo.min =
inf), and its softmax row became NaN. Oracle: the FP32 model's own logits are finite at every real position, so
the compiled model's must be too; and the recompute rate still counts visible entries only (<= 100%).
"""

import numpy as np
import pytest
import torch

import lampc
from lampc.cells import CellCompiler
from tiny_models import padded_batch, tiny_gpt2

pytestmark = pytest.mark.slow  # whole-model integration tests: `-m "not slow"` leaves them out

RANGE_FORMATS = ("fp16", "fp8_e4m3", "fp8_e5m2")
CRITERIA = {
    "uniform": {}, "strict": dict(tau=0.1), "relaxed": dict(tau=0.5), "target": dict(tau=1.8),
    "budget": dict(budget=2), "oracle": dict(tau=0.1), "random": dict(tau=0.1),
}


def overflowing_gpt2(mlp_gain: float = 1.0):
    model = tiny_gpt2(seed=0)
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight[:, :32] *= 3000.0  # queries
            block.attn.c_attn.weight[:, 32:64] *= 600.0  # keys: scores ~1e5
            block.mlp.c_fc.weight *= mlp_gain
    return model


@pytest.fixture(scope="module")
def model():
    return overflowing_gpt2()


@pytest.fixture(scope="module")
def compiler(model):
    return CellCompiler(model)


@pytest.fixture(scope="module")
def batch():
    return padded_batch(97, batch=2, seq=12, pad=3)


def fp32_scores_max(model, ids, mask) -> float:
    out = model(ids, attention_mask=mask, output_attentions=False)
    assert torch.isfinite(out.logits[mask.bool()]).all()
    block = model.transformer.h[0]
    hidden = block.ln_1(model.transformer.wte(ids) + model.transformer.wpe(torch.arange(ids.shape[1])))
    q, k, _ = block.attn.c_attn(hidden).split(32, dim=2)
    scores = (q.view(2, 12, 4, 8).transpose(1, 2) @ k.view(2, 12, 4, 8).permute(0, 2, 3, 1)) / 8**0.5
    return float(scores.detach().abs().max())


def test_the_model_really_overflows_the_formats(model, batch):
    assert fp32_scores_max(model, *batch) > 65504.0


@pytest.mark.parametrize("fmt", RANGE_FORMATS)
@pytest.mark.parametrize("criterion", list(CRITERIA))
@pytest.mark.parametrize("fused", [False, True])
def test_attention_scores_never_turn_rows_into_nan(compiler, batch, fmt, criterion, fused):
    ids, mask = batch
    compiled = compiler(format=fmt, criterion=criterion, fused=fused, **CRITERIA[criterion])
    logits = compiled(ids, attention_mask=mask).logits
    assert torch.isfinite(logits[mask.bool()]).all()
    rate = compiled.stats()["overall"]["rate"]
    assert 0.0 < rate <= 1.0  # the overflowed visible scores are recomputed and counted; masked ones are not


@pytest.mark.parametrize("fused", [False, True])
def test_native_fp16_and_the_decode_graph_stay_finite(compiler, batch, fused):
    ids, mask = batch
    compiled = compiler(format="fp16", backend="native", criterion="strict", tau=0.1, fused=fused)
    assert torch.isfinite(compiled(ids, attention_mask=mask).logits[mask.bool()]).all()
    out = compiled(ids, attention_mask=mask, use_cache=True)  # prefill step graph, then a decode step
    assert torch.isfinite(out.logits[mask.bool()]).all()
    step = compiled(ids[:, -1:], attention_mask=torch.cat([mask, mask[:, -1:]], 1), past_key_values=out.cache)
    assert torch.isfinite(step.logits).all()


@pytest.mark.parametrize("fmt", ["fp16", "fp8_e5m2"])
@pytest.mark.parametrize("criterion", ["uniform", "strict"])
def test_every_site_kind_and_lowered_matmuls_stay_finite(batch, fmt, criterion):
    """MLP weights scaled so the c_fc and c_proj products overflow too: the linear sites select non-finite outputs,
    and the matmuls lowered without a look-ahead (sites="all") recompute their overflows in FP32."""
    model = overflowing_gpt2(mlp_gain=3000.0)
    ids, mask = batch
    assert torch.isfinite(model(ids, attention_mask=mask).logits[mask.bool()]).all()
    for kinds in (["attention", "layer_norm", "gelu", "logits"], ["attention"]):
        compiled = lampc.compile(model, format=fmt, criterion=criterion, kinds=kinds, sites="all",
                                 **({} if criterion == "uniform" else dict(tau=0.1)))
        assert torch.isfinite(compiled(ids, attention_mask=mask).logits[mask.bool()]).all(), kinds


def test_onnx_export_keeps_masked_overflows_finite(compiler, batch, tmp_path):
    from lampc.export import export_onnx, make_session, run_session

    ids, mask = batch
    compiled = compiler(format="fp16", criterion="strict", tau=0.1)
    path = tmp_path / "overflow.onnx"
    export_onnx(compiled, str(path))
    got = run_session(make_session(str(path), providers=["CPUExecutionProvider"]), ids, mask)["logits"]
    want = compiled(ids, attention_mask=mask).logits.detach().numpy()
    real = mask.bool().numpy()
    assert np.isfinite(got[real]).all()
    np.testing.assert_allclose(got[real], want[real], atol=1e-3, rtol=1e-4)
