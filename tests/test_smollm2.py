"""SmolLM2-135M (a real Llama with GQA, 30 layers) through lampc: capture, site finding and an FP32-exact rewrite.

At format m23 (FP32 itself) with criterion "uniform" the rewritten graph must compute what the model computes: the
low-precision matmul of m23 is plain torch.matmul and nothing is recomputed, so any difference would be a capture or
rewrite bug (a wrong mask, a lost scale, a mis-ordered head). We compare logits on a short real-text batch whose
second sequence is left-padded, at real positions only.

One model load (~15-50 s) serves every test; the SDPA variant switches the same model to
attn_implementation="sdpa" (transformers' `set_attn_implementation`) instead of loading it again, and switches it
back afterwards. Marked slow (integration on a real model), still run in CI.
"""

import pytest
import torch

import lampc
from lampc.models import smollm2

N_LAYERS = 30
SITE_MODULES = [f"model.layers.{i}.self_attn" for i in range(N_LAYERS)]
SEQ_LEN = 24
PAD = 7  # left padding of the second sequence

# Public-domain text (Jane Austen, Persuasion, 1817), kept inline so the test needs no data download.
TEXTS = (
    ("Sir Walter Elliot, of Kellynch Hall, in Somersetshire, was a man who, for his own amusement, never took up "
     "any book but the Baronetage; there he found occupation for an idle hour, and consolation in a distressed one."),
    ("Vanity was the beginning and the end of Sir Walter Elliot's character; vanity of person and of situation. He "
     "had been remarkably handsome in his youth; and, at fifty-four, was still a very fine man."),
)

# m23 uniform runs exactly the model's own ops (plain matmul, softmax, no recompute), so we expect equality up to
# FP32 reassociation at most; measured: 0.0 on the eager model. 1e-5 still leaves room for a different op order
# in a future capture, while any real bug (mask, scale, GQA) moves logits by far more than that.
ATOL_SAME_MATH = 1e-5
# The SDPA model runs torch's fused CPU attention kernel (blocked online softmax), whose summation order differs
# from the expanded matmul -> softmax -> matmul form lampc rewrites; over 30 layers that reaches ~6e-5 on logits of
# magnitude ~30 (a relative ~2e-6, a few FP32 ulps). Measured: 5.8e-5.
ATOL_VS_SDPA_KERNEL = 1e-4

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(smollm2.missing_packages()),
        reason=f"SmolLM2 not installed (missing: {', '.join(smollm2.missing_packages())}); {smollm2.INSTALL}",
    ),
]


@pytest.fixture(scope="module")
def loaded(smollm2_loaded):
    return smollm2_loaded  # one load for the session (tests/conftest.py)


@pytest.fixture(scope="module")
def batch(loaded):
    """(input_ids, attention_mask), (2, SEQ_LEN): the second row left-padded by PAD tokens."""
    _, tokenizer = loaded
    first, second = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS)
    assert len(first) >= SEQ_LEN and len(second) >= SEQ_LEN - PAD
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([first[:SEQ_LEN], [pad_id] * PAD + second[: SEQ_LEN - PAD]])
    mask = torch.ones_like(ids)
    mask[1, :PAD] = 0
    return ids, mask


@pytest.fixture(scope="module")
def reference(loaded, batch):
    model, _ = loaded
    ids, mask = batch
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, use_cache=False).logits


@pytest.fixture(scope="module")
def compiled(loaded):
    model, _ = loaded
    return lampc.compile(model, format="m23", criterion="uniform")


def real_positions_max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    real = mask.bool()
    assert torch.isfinite(a[real]).all() and torch.isfinite(b[real]).all()
    return (a[real] - b[real]).abs().max().item()


def test_finds_the_30_attention_sites(compiled):
    assert [s.kind for s in compiled.sites] == ["attention"] * N_LAYERS
    assert [s.module for s in compiled.sites] == SITE_MODULES
    assert [s.index for s in compiled.sites] == list(range(N_LAYERS))
    assert compiled.skips == []
    assert compiled.model_type == "llama"


def test_m23_uniform_logits_match_the_model(compiled, batch, reference):
    ids, mask = batch
    with torch.no_grad():
        got = compiled(ids, attention_mask=mask).logits
    assert got.shape == reference.shape == (2, SEQ_LEN, 49152)
    assert real_positions_max_diff(got, reference, mask) <= ATOL_SAME_MATH
    # uniform recomputes nothing, and counts only causally visible entries (the padded row sees fewer keys)
    overall = compiled.stats()["overall"]
    visible = N_LAYERS * 9 * (SEQ_LEN * (SEQ_LEN + 1) // 2 + (SEQ_LEN - PAD) * (SEQ_LEN - PAD + 1) // 2)
    assert (overall["selected"], overall["visible"]) == (0, visible)


def test_sdpa_model_compiles_to_the_same_sites(loaded, batch, reference):
    from lampc.capture import capture
    from lampc.passes import run_passes
    from lampc.runtime.compiled import CompiledModel

    model, _ = loaded
    ids, mask = batch
    model.set_attn_implementation("sdpa")
    try:
        assert model.config._attn_implementation == "sdpa"
        with torch.no_grad():
            sdpa_logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        captured = capture(model)
        sdpa_nodes = [n for n in captured.graph_module.graph.nodes
                      if n.op == "call_function" and "scaled_dot_product_attention" in str(n.target)]
        assert len(sdpa_nodes) == N_LAYERS  # the capture really went through SDPA
        policy = lampc.Policy.from_overrides(None, format="m23", criterion="uniform")
        result = run_passes(captured.graph_module, policy)
        c = CompiledModel(result.graph_module, result, policy, model_type=captured.model_type,
                          max_len=captured.max_len, vocab_size=captured.vocab_size)
        with torch.no_grad():
            got = c(ids, attention_mask=mask).logits
    finally:
        model.set_attn_implementation("eager")
    assert [s.module for s in c.sites] == SITE_MODULES
    assert [s.kind for s in c.sites] == ["attention"] * N_LAYERS
    assert c.skips == []
    # the expanded SDPA is the eager math: same logits as the eager model; and close to torch's fused kernel
    assert real_positions_max_diff(got, reference, mask) <= ATOL_SAME_MATH
    assert real_positions_max_diff(got, sdpa_logits, mask) <= ATOL_VS_SDPA_KERNEL


def test_m23_greedy_generation_equals_transformers_generate(loaded, compiled):
    """Two left-padded prompts, 12 greedy tokens: lampc's prefill and decode graphs against HF's own generate."""
    model, tokenizer = loaded
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"][:n] for t, n in zip(TEXTS, (10, 6))]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([[pad_id] * (10 - len(p)) + p for p in prompts])
    mask = (torch.arange(10) >= torch.tensor([[10 - len(p)] for p in prompts])).long()
    with torch.no_grad():
        theirs = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
    ours = compiled.generate(ids, mask, max_new_tokens=12)
    assert torch.equal(ours, theirs)
    assert compiled.stats("decode")["sites"][0]["calls"] >= 1 and len(compiled.stats("decode")["sites"]) == N_LAYERS
