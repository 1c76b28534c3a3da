"""The compiled model against the independent plain-torch re-implementation in tests/reference.

For every deterministic criterion: the selection masks are equal entry for entry, and the logits match within
FP32 tolerance, on a seeded random GPT-2 / Llama (several layers and heads, a left-padded batch).
"""

import pytest
import torch

import lampc
from reference.lamp_reference import gpt2_forward_ref, llama_forward_ref
from tiny_models import padded_batch, tiny_gpt2, tiny_llama

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
MODELS = {
    "gpt2": (lambda: tiny_gpt2(n_layer=3, score_gain=6.0), gpt2_forward_ref, 97),
    "llama": (lambda: tiny_llama(), llama_forward_ref, 100),
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
    if request.param == "llama":  # peaked attention, as in trained models, so the rules select something
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_proj.weight.mul_(12.0)
    ids, mask = padded_batch(vocab, batch=2, seq=14, pad=4)
    return model, reference, ids, mask


@pytest.mark.parametrize("case,m_bits", [(c, 3) for c in CASES] + [(CASES[1], 7), (CASES[5], 7)],
                         ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) if isinstance(c, dict) else f"m{c}")
def test_masks_equal_and_logits_match(setup, case, m_bits):
    model, reference, ids, mask = setup
    compiled = lampc.compile(model, format=f"m{m_bits}", **case)
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
