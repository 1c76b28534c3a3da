"""The embedded GPT-2 loads offline, reproduces its model-card perplexity, and its tokenizer round-trips text."""

import json
import lampc
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, GPT2LMHeadModel, PreTrainedTokenizerFast

from lampc.models import MODELS, ModelNotFoundError, load_model
from lampc.models.load import EMBEDDED_DIR

SLICE = Path(lampc.__file__).parent / "models" / "embedded" / "persuasion_slice.txt"
EXPECTED = json.loads((EMBEDDED_DIR / "eval.json").read_text())  # scripts/train_embedded.py wrote it


@pytest.fixture(scope="module")
def embedded():
    return load_model("embedded")


def slice_perplexity(model, ids: torch.Tensor, window: int) -> float:
    """Straightforward reference: each window of `window` tokens scored on its own, one window at a time."""
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, ids.numel(), window):
            x = ids[start : start + window]
            if x.numel() < 2:
                continue
            logp = torch.log_softmax(model(x[None]).logits[0, :-1].double(), dim=-1)  # (T-1, V)
            nll -= logp.gather(1, x[1:, None]).sum().item()
            count += x.numel() - 1
    return math.exp(nll / count)


def test_loads_offline_in_eval_fp32_eager(embedded):
    model, tokenizer = embedded
    assert isinstance(model, GPT2LMHeadModel)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.config._attn_implementation == "eager"
    c = model.config
    assert (c.n_layer, c.n_head, c.n_embd, c.vocab_size) == (4, 4, 256, 8192)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied
    assert len(tokenizer) == c.vocab_size
    assert (EMBEDDED_DIR / "model.safetensors").stat().st_size <= 25 * 2**20


def test_reproduces_model_card_perplexity_on_persuasion_slice(embedded):
    model, tokenizer = embedded
    ids = torch.tensor(tokenizer(SLICE.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"])
    assert ids.numel() - math.ceil(ids.numel() / EXPECTED["window"]) == EXPECTED["slice_tokens"]
    ppl = slice_perplexity(model, ids, EXPECTED["window"])
    assert ppl == pytest.approx(EXPECTED["slice_ppl"], rel=1e-4)
    card = (EMBEDDED_DIR / "MODEL_CARD.md").read_text()
    assert f"{EXPECTED['persuasion_ppl']:.2f}" in card and f"{EXPECTED['slice_ppl']:.4f}" in card


def test_sdpa_and_eager_agree(embedded):
    model, tokenizer = embedded
    sdpa, _ = load_model("embedded", attn_implementation="sdpa")
    assert sdpa.config._attn_implementation == "sdpa"
    x = torch.tensor([tokenizer("Anne Elliot walked to Uppercross with her sister.")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(sdpa(x).logits, model(x).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "text",
    [
        SLICE.read_text(encoding="utf-8")[:2000],
        "  Mr. Darcy's £10,000 a year!\n\n\tcafé — naïve “quotes” 日本語 🙂 ",
        "",
    ],
)
def test_tokenizer_round_trips(embedded, text):
    _, tokenizer = embedded
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_tokenizer_loads_by_itself():
    for cls in (AutoTokenizer, PreTrainedTokenizerFast):
        tok = cls.from_pretrained(EMBEDDED_DIR, local_files_only=True)
        assert tok.eos_token == "<|endoftext|>" and len(tok) == 8192
        assert tok.decode(tok("Persuasion")["input_ids"]) == "Persuasion"


def test_same_model_by_name_and_by_path(embedded):
    model, _ = embedded
    by_path, _ = load_model(EMBEDDED_DIR)
    for (name, a), b in zip(model.state_dict().items(), by_path.state_dict().values()):
        assert torch.equal(a, b), name


# ---- load_model errors (these need no weights) ---------------------------------------------------------------


def test_unknown_name_lists_known_names():
    with pytest.raises(ModelNotFoundError, match=r"unknown model 'gpt2'.*embedded"):
        load_model("gpt2")


def test_directory_without_model(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match="no weights"):
        load_model(str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="not a directory"):
        load_model(tmp_path / "config.json")


def test_registry_accepts_new_names(monkeypatch):
    calls = []
    monkeypatch.setitem(MODELS, "toy", lambda *, attn_implementation: calls.append(attn_implementation) or ("m", "t"))
    assert load_model("toy", attn_implementation="sdpa") == ("m", "t")
    assert calls == ["sdpa"]
