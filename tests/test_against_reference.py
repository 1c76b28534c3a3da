"""The compiled model against the independent plain-torch re-implementation in tests/reference.

For every deterministic criterion: the selection masks are equal entry for entry, and the logits match within
FP32 tolerance, on seeded random GPT-2, Llama, Falcon (scores divided in place), Gemma2 (logit soft-capping) and
Bloom (ALiBi through baddbmm): several layers and heads, a left-padded batch. Each model is captured once; every
case rewrites a fresh copy of the graph (`CellCompiler`, the same result as `lampc.compile`: tests/test_sweep.py).
"""

import pytest
import torch

from transformers import AutoConfig, AutoModelForCausalLM

from lampc.cells import CellCompiler
from reference.lamp_reference import (bloom_forward_ref, falcon_forward_ref, gemma2_forward_ref, gpt2_forward_ref,
                                      llama_forward_ref)
from tiny_models import padded_batch, tiny_gpt2, tiny_llama

pytestmark = pytest.mark.slow  # whole-model integration tests: `-m "not slow"` leaves them out

CASES = [
    dict(criterion="uniform"),
    dict(criterion="strict", tau=0.1),
    dict(criterion="strict", tau=0.02, length_scaling=True, l_ref=16),
    dict(criterion="relaxed", tau=0.3),
    dict(criterion="relaxed", tau=0.05, length_scaling=True, l_ref=16),
    dict(criterion="target", tau=1.3),
    dict(criterion="budget", budget=2),
    dict(criterion="budget", budget=0.25),
    dict(criterion="oracle", tau=0.1),
]


def _tiny(kind: str, **config):
    cfg = AutoConfig.for_model(kind, vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               **config)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()


def _peaked(weight: torch.Tensor, rows, gain: float) -> None:
    """Scale the query rows of a projection: peaked attention, as in trained models, so the rules select."""
    with torch.no_grad():
        weight[rows] *= gain


def tiny_peaked_llama():
    model = tiny_llama()
    for layer in model.model.layers:
        _peaked(layer.self_attn.q_proj.weight, slice(None), 12.0)
    return model


def tiny_falcon():
    model = _tiny("falcon", new_decoder_architecture=False)  # multi-query: 4 query heads, then one key, one value
    for layer in model.transformer.h:
        _peaked(layer.self_attention.query_key_value.weight, slice(0, 32), 40.0)
    return model


def tiny_gemma2():
    model = _tiny("gemma2", num_key_value_heads=2, intermediate_size=64, head_dim=8, attn_logit_softcapping=5.0)
    for layer in model.model.layers:
        _peaked(layer.self_attn.q_proj.weight, slice(None), 60.0)
    return model


def tiny_bloom():
    model = _tiny("bloom", n_layer=2, n_head=4)
    query_rows = [h * 24 + j for h in range(4) for j in range(8)]  # per head: 8 query, 8 key, 8 value rows
    for layer in model.transformer.h:
        _peaked(layer.self_attention.query_key_value.weight, query_rows, 20.0)
    return model


MODELS = {
    "gpt2": (lambda: tiny_gpt2(n_layer=3, score_gain=6.0), gpt2_forward_ref, 97),
    "llama": (tiny_peaked_llama, llama_forward_ref, 100),
    "falcon": (tiny_falcon, falcon_forward_ref, 100),
    "gemma2": (tiny_gemma2, gemma2_forward_ref, 100),
    "bloom": (tiny_bloom, bloom_forward_ref, 100),
}


def _reference_kwargs(case: dict) -> dict:
    kw = {k: v for k, v in case.items() if k in ("length_scaling", "l_ref", "budget")}
    if case["criterion"] == "oracle":
        kw.update(count_criterion="strict", count_tau=case["tau"])
    return kw


@pytest.fixture(scope="module", params=sorted(MODELS))
def setup(request):
    make, reference, vocab = MODELS[request.param]
    model = make()
    ids, mask = padded_batch(vocab, batch=2, seq=14, pad=4)
    return CellCompiler(model), model, reference, ids, mask


@pytest.mark.parametrize("case,m_bits", [(c, 3) for c in CASES] + [(CASES[1], 7), (CASES[5], 7)],
                         ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) if isinstance(c, dict) else f"m{c}")
def test_masks_equal_and_logits_match(setup, case, m_bits):
    compile_cell, model, reference, ids, mask = setup
    compiled = compile_cell(format=f"m{m_bits}", **case)
    compiled.keep_selections()
    with torch.no_grad():
        got = compiled(ids, mask).logits
        want, want_masks = reference(model, ids, mask, m=m_bits, criterion=case["criterion"], tau=case.get("tau"),
                                     compute_dtype=torch.float32, **_reference_kwargs(case))
    selections = compiled.selections()
    assert len(selections) == len(want_masks)
    total = 0
    for index, want_mask in enumerate(want_masks):
        got_mask = selections[index]
        mismatched = (got_mask != want_mask).sum().item()
        assert mismatched == 0, f"layer {index}: {mismatched} entries selected differently"
        total += int(want_mask.sum())
    if case["criterion"] != "uniform":
        assert total > 0, "the case selects nothing: it would not test the selection"
    assert (got - want).abs().max() <= 1e-4
