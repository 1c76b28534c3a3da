"""Decoding on the decoder families whose attention is not plain causal: sliding windows and ALiBi.

Mistral (every layer windowed), Phi-3 and Mistral-7B-sized windows (longer than the context), Gemma2 and Gemma3
(config.layer_types mixing sliding and full layers), and Bloom (ALiBi, its bias built from the attention mask).
The oracles are transformers' own: `model.generate(do_sample=False)` for the tokens (exactly equal at m23) and the
model's own cached forward, with its own cache (a sliding layer keeps only the last window), for the logits of
every step. The tiny windows (4 positions) are shorter than prompt + generation, so the window shapes the result
(`test_the_window_changes_what_the_model_computes` shows it does), and the selection statistics count only the
keys inside the window (a direct count of the model's mask).
"""

import functools
import inspect

import pytest
import torch

from lampc.capture_step import cache_argument
from lampc.cells import CellCompiler
from lampc.runtime.compiled import positions_from_mask
from tiny_models import WINDOWED, padded_batch, tiny_windowed

pytestmark = pytest.mark.slow  # whole-model captures

FAMILIES = list(WINDOWED)
SLIDING = [f for f in FAMILIES if WINDOWED[f].get("sliding_window", 64) < 64]  # windows shorter than the context
LOGITS_ATOL = 1e-5  # the cache that keeps every position sums a few more exact zeros than transformers' cropped one
PROMPT, PAD, NEW = 7, 2, 12  # 19 positions: past the window of 4


@functools.lru_cache(maxsize=None)
def model_and_compiler(family: str, attn: str = "eager"):
    """The model and a compiler that captures it once (each step graph on first use) for every policy."""
    model = tiny_windowed(family, attn=attn)
    return model, CellCompiler(model)


@functools.lru_cache(maxsize=None)
def model_and_m23(family: str, attn: str = "eager"):
    model, compiler = model_and_compiler(family, attn)
    return model, compiler(format="m23", criterion="strict", tau=0.01)


def prompts(batch: int):
    """`batch` prompts of PROMPT tokens; with two, the second is left-padded by PAD (ids under the padding vary)."""
    ids, mask = padded_batch(100, batch=2, seq=PROMPT, pad=PAD)
    ids[1, :PAD] = 7
    return (ids, mask) if batch == 2 else (ids[:1], mask[:1])


def hf_cached_step(model, ids, mask, past, cache):
    """The model's own cached forward on `ids` after `past` positions, positions counted as generate counts them."""
    kwargs = {}
    if "position_ids" in inspect.signature(model.forward).parameters:
        kwargs["position_ids"] = positions_from_mask(mask)[:, past:]
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, use_cache=True, **{cache_argument(model): cache}, **kwargs)
    return out.logits, out.cache if "cache" in out.keys() else out.past_key_values


@pytest.mark.parametrize("batch", [2, 1])
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_m23_equals_hf_generate(family, batch):
    model, m23 = model_and_m23(family)
    ids, mask = prompts(batch)
    want = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False)
    got = m23.generate(ids, mask, max_new_tokens=NEW)
    assert want.shape[1] > PROMPT + 4  # the reference ran past the window before any EOS
    assert torch.equal(got, want)


def test_greedy_m23_equals_hf_generate_with_sdpa():
    model, m23 = model_and_m23("mistral", "sdpa")
    ids, mask = prompts(2)
    want = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False)
    assert torch.equal(m23.generate(ids, mask, max_new_tokens=NEW), want)


@pytest.mark.parametrize("family", ["mistral", "gemma2", "bloom"])
def test_one_token_prompt_generates_like_hf(family):
    """A one-token prompt starts with the decode step over a masked placeholder slot (runtime/steps.py)."""
    model, m23 = model_and_m23(family)
    prompt = torch.tensor([[5]])
    want = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10, do_sample=False)
    assert torch.equal(m23.generate(prompt, max_new_tokens=10), want)


@pytest.mark.parametrize("batch", [2, 1])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_cached_step_equals_the_models_own_cached_forward(family, batch):
    """A prefill of 5 tokens, a chunk of 2 more (prefill over a past), then 8 single tokens (decode), each step's
    logits against the model's own forward with its own cache (cropped to the window where the model crops it)."""
    model, m23 = model_and_m23(family)
    ids = torch.randint(2, 100, (batch, 15), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    if batch == 2:
        mask[1, :PAD] = 0
    chunks = [(0, 5), (5, 7)] + [(t, t + 1) for t in range(7, 15)]
    ours = theirs = None
    for start, end in chunks:
        step_mask = mask[:, :end]
        out = m23(ids[:, start:end], attention_mask=step_mask, past_key_values=ours, use_cache=True)
        want, theirs = hf_cached_step(model, ids[:, start:end], step_mask, start, theirs)
        real = step_mask[:, start:].bool()  # padded query rows attend to nothing: their logits are no one's
        assert (out.logits - want)[real].abs().max() <= LOGITS_ATOL, (start, end)
        ours = out.past_key_values
        assert ours.length == end  # every position is kept, also past the window


@pytest.mark.parametrize("family", SLIDING)
def test_the_window_changes_what_the_model_computes(family):
    """The tests above would pass with a plain causal mask if the window never hid a key: it does."""
    windowed, unwindowed = tiny_windowed(family), tiny_windowed(family, sliding_window=64)
    ids, mask = prompts(2)
    with torch.no_grad():
        gap = (windowed(ids, attention_mask=mask).logits - unwindowed(ids, attention_mask=mask).logits)[:, -1]
    assert gap.abs().max() > 1e-2


def visible_keys(mask: torch.Tensor, past: int, window: int | None) -> int:
    """Keys each query row of a step may see, summed over rows: a direct count of the model's rule (token, not in
    the future, and within `window` positions of the query: kv > q - window)."""
    batch, total = mask.shape
    count = 0
    for b in range(batch):
        for q in range(past, total):
            if not mask[b, q]:
                continue  # a padded query row: every key masked
            count += sum(1 for k in range(q + 1) if mask[b, k] and (window is None or k > q - window))
    return count


@pytest.mark.parametrize("family", ["mistral", "gemma2"])
def test_selection_statistics_count_only_keys_inside_the_window(family):
    """Keys beyond the window are masked, so they are not visible entries: per site, the visible count of the
    prefill and of one decode step equals heads x the direct count (full layers of Gemma2 see every key)."""
    model, compiler = model_and_compiler(family)
    compiled = compiler(format="m4", criterion="strict", tau=0.05)
    window = model.config.sliding_window
    layer_types = getattr(model.config, "layer_types", None) or ["sliding_attention"] * 2
    heads = model.config.num_attention_heads
    ids, mask = prompts(2)
    out = compiled(ids, attention_mask=mask, use_cache=True)
    grown = torch.cat([mask, mask.new_ones(2, 1)], dim=1)
    compiled(torch.tensor([[3], [4]]), attention_mask=grown, past_key_values=out.past_key_values)
    for phase, step_mask, past in [("prefill", mask, 0), ("decode", grown, PROMPT)]:
        sites = compiled.stats(phase)["sites"]
        assert len(sites) == len(layer_types)
        for site, layer_type in zip(sites, layer_types):
            sliding = layer_type == "sliding_attention"
            assert site["visible"] == heads * visible_keys(step_mask, past, window if sliding else None), (phase, site)
        assert sum(s["selected"] for s in sites) > 0


def saved_with_tokenizer(model, path):
    """The model and a word-level tokenizer (w0 .. w98 and [UNK]) saved like a Hugging Face model directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model.save_pretrained(path)
    vocab = {"[UNK]": 0, **{f"w{i}": i + 1 for i in range(model.config.vocab_size - 1)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(path)
    return path


def test_cli_generate_and_eval_generate_run_on_a_sliding_window_mistral(tmp_path, capsys):
    """`lampc generate` and `lampc eval --generate`, as a user runs them, past the window of 4."""
    import json
    import random

    from lampc.cli import main

    model = tiny_windowed("mistral")
    path = saved_with_tokenizer(model, tmp_path / "mistral")
    code = main(["generate", "--model", str(path), "--prompt", "w3 w14 w15 w92 w65 w35 w86", "--max-new-tokens",
                 "10", "--format", "m23", "--criterion", "uniform", "--json", "-"])
    assert code == 0
    lamp = json.loads(capsys.readouterr().out)["prompts"][0]["variants"][0]
    ids = torch.tensor([[4, 15, 16, 93, 66, 36, 87]])
    want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False)[0, 7:].tolist()
    eos = model.config.eos_token_id
    assert lamp["tokens"] == (want[:want.index(eos) + 1] if eos in want else want)
    text = tmp_path / "words.txt"
    rng = random.Random(0)
    text.write_text(" ".join(f"w{rng.randrange(99)}" for _ in range(300)) + "\n")
    code = main(["eval", "--model", str(path), "--text", str(text), "--seq-len", "16", "--n-seq", "2",
                 "--format", "m23", "--criterion", "strict", "--tau", "0.01", "--generate", "2,8",
                 "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 0
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    assert [row["gen_identical"] for row in rows] == [1.0]  # every prompt's continuation is FP32's
