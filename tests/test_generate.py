"""Decoding with a KV cache: compiled.generate against Hugging Face's generate, and the cached steps against the
full-sequence graph.

The oracle for greedy decoding is transformers' own `model.generate(do_sample=False)` on the uncompiled FP32
model: at format m23 every lampc op computes what the model computes, so the tokens must be identical. For LAMP
at m4, the oracle of a decode step is the same model run over the whole sequence at once: the decode step at
position t sees the same keys and applies the same per-row rule, so its logits and its selection must equal
row t of the full run (see CACHE_ATOL for the one source of difference).
"""

import pytest
import torch
from transformers.generation.streamers import BaseStreamer

import lampc
from lampc.cells import CellCompiler
from lampc.runtime.steps import KVCache
from tiny_models import padded_batch, tiny_gpt2, tiny_llama

pytestmark = pytest.mark.slow  # whole-model integration tests: `-m "not slow"` leaves them out

MODELS = {
    "gpt2": lambda attn="eager": tiny_gpt2(attn=attn, score_gain=3.0),
    "llama": lambda attn="eager": tiny_llama(attn=attn),
}

# A decode step computes the projections of one row where the full run computes T rows at once; the CPU's FP32
# GEMM may block the two differently, so activations differ in the last bits (measured: at most 1.5e-7 on logits
# of magnitude ~1 on these models). m4 rounds the scores to 4 bits, so these differences reach the selection only
# where a score lies within FP32 noise of an m4 rounding boundary: the seeded models here have none (0 of 912
# entries differ), and the tolerance on logits is 100x the measured difference.
CACHE_ATOL = 1e-5

CRITERIA = {
    "strict": dict(tau=0.01),
    "relaxed": dict(tau=0.5),
    "target": dict(tau=1.8),
    "budget": dict(budget=2),
    "oracle": dict(tau=0.01),
    "random": dict(tau=0.01),
    "uniform": dict(),
}


def left_padded(vocab, batch=3, seq=7, pad=3):
    ids, mask = padded_batch(vocab, batch=batch, seq=seq, pad=pad)
    ids[-1, :pad] = 5  # whatever sits under the padding must not matter
    return ids, mask


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def arch(request):
    return request.param


@pytest.fixture(scope="module")
def model(arch):
    return MODELS[arch]()


@pytest.fixture(scope="module")
def compiler(model):
    """lampc.compile for many policies with one capture of each graph (full sequence, prefill and decode steps)."""
    return CellCompiler(model)


@pytest.fixture(scope="module")
def m23(compiler):
    return compiler(format="m23", criterion="strict", tau=0.01)


def test_greedy_m23_equals_hf_generate_on_left_padded_batch(model, m23):
    ids, mask = left_padded(model.config.vocab_size)
    ours = m23.generate(ids, mask, max_new_tokens=12)
    theirs = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
    assert torch.equal(ours, theirs)
    assert ours.shape == (3, 7 + 12)


def test_greedy_m23_equals_hf_for_one_sequence_and_one_token_prompt(model, m23):
    ids, _ = left_padded(model.config.vocab_size)
    for prompt in (ids[:1], ids[:2, -1:], ids[:1, -1:]):
        ours = m23.generate(prompt, max_new_tokens=6)
        theirs = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False)
        assert torch.equal(ours, theirs), prompt.shape


@pytest.mark.parametrize("attn", ["sdpa"])
def test_greedy_m23_equals_hf_on_sdpa_models(arch, attn):
    model = MODELS[arch](attn)
    ids, mask = left_padded(model.config.vocab_size)
    ours = lampc.compile(model, format="m23", criterion="uniform").generate(ids, mask, max_new_tokens=8)
    assert torch.equal(ours, model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False))


def test_eos_stops_each_row_and_pads_finished_rows_like_hf(model, m23):
    ids, mask = left_padded(model.config.vocab_size)
    free = m23.generate(ids, mask, max_new_tokens=10)
    eos = int(free[0, 7 + 2])  # row 0 emits it at its third new token; the other rows may or may not
    pad = (eos + 1) % model.config.vocab_size
    ours = m23.generate(ids, mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=pad)
    theirs = model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, eos_token_id=eos,
                            pad_token_id=pad)
    assert torch.equal(ours, theirs)
    assert (ours[0, 7 + 3:] == pad).all()  # row 0 finished: padded after its EOS


def test_stops_early_when_every_row_has_finished(model, m23):
    ids, mask = left_padded(model.config.vocab_size, batch=1, pad=0)
    free = m23.generate(ids, mask, max_new_tokens=8)
    eos = int(free[0, 7 + 1])
    ours = m23.generate(ids, mask, max_new_tokens=8, eos_token_id=eos)
    assert ours.shape[1] <= 7 + 2 and ours[0, -1] == eos


def test_sampling_is_reproducible_with_a_seeded_generator(m23, model):
    ids, mask = left_padded(model.config.vocab_size)

    def sample(seed, **kw):
        return m23.generate(ids, mask, max_new_tokens=10, do_sample=True,
                            generator=torch.Generator().manual_seed(seed), **kw)

    assert torch.equal(sample(1), sample(1))
    assert torch.equal(sample(3, top_k=5, temperature=0.7), sample(3, top_k=5, temperature=0.7))
    assert not torch.equal(sample(1), sample(2))  # 30 draws over ~100 tokens of a random model
    assert torch.equal(sample(4, top_k=1), m23.generate(ids, mask, max_new_tokens=10))  # top-1 sampling is greedy


def test_top_p_keeps_the_smallest_set_reaching_p(m23, model):
    """Sampling at top_p=1e-6 keeps only the most likely token: the greedy continuation."""
    ids, mask = left_padded(model.config.vocab_size)
    sampled = m23.generate(ids, mask, max_new_tokens=6, do_sample=True, top_p=1e-6,
                           generator=torch.Generator().manual_seed(0))
    assert torch.equal(sampled, m23.generate(ids, mask, max_new_tokens=6))


class Recorder(BaseStreamer):
    def __init__(self):
        self.puts, self.ended = [], False

    def put(self, value):
        self.puts.append(value.clone())

    def end(self):
        self.ended = True


def test_streamer_gets_the_prompt_then_each_step(model, m23):
    ids, mask = left_padded(model.config.vocab_size)
    streamer = Recorder()
    out = m23.generate(ids, mask, max_new_tokens=4, streamer=streamer)
    assert streamer.ended and torch.equal(streamer.puts[0], ids)
    assert torch.equal(torch.stack(streamer.puts[1:], dim=1), out[:, 7:])


def test_max_new_tokens_zero_returns_the_prompt(model, m23):
    ids, mask = left_padded(model.config.vocab_size)
    assert torch.equal(m23.generate(ids, mask, max_new_tokens=0), ids)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_new_tokens=-1), "max_new_tokens must be >= 0"),
    (dict(max_new_tokens=2.5), "max_new_tokens must be an int"),
    (dict(do_sample=True, top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(do_sample=True, top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(do_sample=True, top_k=0), "top_k must be >= 1"),
    (dict(do_sample=True, temperature=0.0), "temperature must be > 0"),
    (dict(eos_token_id=10**6), "eos_token_id must be a token id"),
    (dict(num_beams=2), "unsupported argument.*num_beams"),
])
def test_bad_generate_arguments_are_named(m23, model, kwargs, message):
    ids, mask = left_padded(model.config.vocab_size)
    with pytest.raises((ValueError, TypeError), match=message):
        m23.generate(ids, mask, **kwargs)


def test_prompt_longer_than_the_context_is_refused(m23):
    context = m23.max_len
    with pytest.raises(ValueError, match="exceeds the model's context"):
        m23.generate(torch.zeros(1, context - 2, dtype=torch.long), max_new_tokens=3)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        m23.generate(torch.zeros(1, context + 1, dtype=torch.long), max_new_tokens=0)


def test_right_padding_is_refused(m23, model):
    ids, mask = left_padded(model.config.vocab_size)
    with pytest.raises(ValueError, match="pad prompts on the left"):
        m23.generate(ids, mask.flip(-1), max_new_tokens=2)


def test_single_token_forward_equals_the_model(model, m23):
    ids = torch.tensor([[3], [7]])
    assert torch.allclose(m23(ids).logits, model(ids).logits, atol=1e-6, rtol=0)


def test_cached_forward_equals_the_model_with_its_cache(model, m23):
    ids, mask = left_padded(model.config.vocab_size)
    out = m23(ids[:, :4], attention_mask=mask[:, :4], use_cache=True)
    assert isinstance(out.past_key_values, KVCache) and out.past_key_values.length == 4
    step = m23(ids[:, 4:], attention_mask=mask, past_key_values=out.past_key_values)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    full = model(ids, attention_mask=mask, position_ids=positions).logits
    real = mask[:, 4:].bool()
    assert torch.allclose(step.logits[real], full[:, 4:][real], atol=CACHE_ATOL, rtol=0)


def test_cache_misuse_is_named(m23):
    out = m23(torch.tensor([[1, 2, 3]]), use_cache=True)
    with pytest.raises(ValueError, match="past_key_values holds 1 sequences"):
        m23(torch.tensor([[4], [5]]), past_key_values=out.past_key_values)
    with pytest.raises(TypeError, match="past_key_values must be the KVCache"):
        m23(torch.tensor([[4]]), past_key_values=((1, 2),))
    with pytest.raises(ValueError, match="attention_mask must be a tensor over the 3 cached"):
        m23(torch.tensor([[4]]), attention_mask=torch.ones(1, 1, dtype=torch.long), past_key_values=out.past_key_values)


@pytest.mark.parametrize("criterion", list(CRITERIA))
def test_decode_step_equals_the_full_sequence_row_at_m4(model, compiler, criterion):
    """Cache consistency: the decode step at position t has the logits and the selection of row t of the full
    sequence (prefill step over all tokens), for every criterion (random: the same count, drawn afresh)."""
    compiled = compiler(format="m4", criterion=criterion, **CRITERIA[criterion])
    compiled.keep_selections()
    ids, mask = left_padded(model.config.vocab_size, batch=2, seq=12)
    full = compiled(ids, attention_mask=mask, use_cache=True)
    full_selection = compiled.selections("prefill")
    start = 6
    cache = compiled(ids[:, :start], attention_mask=mask[:, :start], use_cache=True).past_key_values
    selected = 0
    for t in range(start, ids.shape[1]):
        out = compiled(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        if criterion != "random":  # random draws other entries (same count), so other values
            assert torch.allclose(out.logits[:, 0], full.logits[:, t], atol=CACHE_ATOL, rtol=0), t
        for site, step_selection in compiled.selections("decode").items():
            row = full_selection[site][:, :, t:t + 1, :t + 1]
            if criterion == "random":
                assert torch.equal(step_selection.sum(-1), row.sum(-1))
            else:
                assert torch.equal(step_selection, row), (site, t)
            selected += int(step_selection.sum())
    if criterion != "uniform":
        assert selected > 0  # the rule really selected something in the decode steps
    if criterion != "random":  # the full-sequence graph and the prefill step agree on an unpadded row
        assert torch.allclose(compiled(ids, attention_mask=mask).logits[0], full.logits[0], atol=CACHE_ATOL, rtol=0)


def test_decode_statistics_are_reported_apart_from_prefill(model, compiler):
    compiled = compiler(format="m4", criterion="strict", tau=0.01)
    ids, mask = left_padded(model.config.vocab_size)
    compiled.generate(ids, mask, max_new_tokens=5)
    stats = compiled.stats()
    prefill, decode = stats["prefill"]["overall"], stats["decode"]["overall"]
    assert stats["overall"]["visible"] == 0  # the full-sequence graph did not run
    # visible entries: prefill = the causal, unpadded prompt pairs per head and layer; decode = one row per step
    heads, layers = model.config.num_attention_heads, model.config.num_hidden_layers
    lengths = mask.sum(-1)
    assert prefill["visible"] == int((lengths * (lengths + 1) // 2).sum()) * heads * layers
    assert decode["visible"] == int(sum((lengths + k).sum() for k in range(1, 5))) * heads * layers
    assert decode["selected"] > 0 and stats["decode"]["sites"][0]["calls"] == 4
    compiled.reset_stats()
    assert compiled.stats("decode")["overall"]["visible"] == 0
    compiled.record_stats(False)
    compiled.generate(ids, mask, max_new_tokens=3)
    assert compiled.stats("decode")["overall"]["visible"] == 0


@pytest.mark.parametrize("backend, fmt", [("emulate", "m4"), ("native", "bf16")])
def test_fused_decode_equals_unfused(model, compiler, backend, fmt):
    ids, mask = left_padded(model.config.vocab_size)
    policy = dict(format=fmt, backend=backend, criterion="strict", tau=0.01)
    unfused = compiler(**policy)
    fused = compiler(**policy, fused=True)
    a = unfused.generate(ids, mask, max_new_tokens=6)
    assert torch.equal(a, fused.generate(ids, mask, max_new_tokens=6))
    assert unfused.stats("decode")["overall"]["selected"] == fused.stats("decode")["overall"]["selected"] > 0


def test_every_site_kind_runs_in_the_decode_graph(model, compiler):
    compiled = compiler(format="m7", criterion="budget", budget=2,
                             kinds=["attention", "layer_norm", "gelu", "logits"], sites="all")
    ids, mask = left_padded(model.config.vocab_size)
    out = compiled.generate(ids, mask, max_new_tokens=4)
    assert out.shape == (3, 11)
    decode = compiled.stats("decode")
    assert {s["kind"] for s in decode["sites"]} == {s.kind for s in compiled.sites}
    assert all(s["calls"] == 3 for s in decode["sites"])


def test_step_graphs_have_the_sites_of_the_full_sequence_graph(model, compiler):
    compiled = compiler(format="m4", criterion="strict", tau=0.01, kinds=["attention", "logits"])
    ids, mask = left_padded(model.config.vocab_size)
    compiled.generate(ids, mask, max_new_tokens=2)
    compiled.generate(ids[:1], max_new_tokens=2)
    full = [(s.index, s.kind, s.module, s.rule) for s in compiled.sites]
    assert set(compiled.step_graphs.results) == {"prefill", "decode", "decode_1"}
    for result in compiled.step_graphs.results.values():
        assert [(s.index, s.kind, s.module, s.rule) for s in result.sites] == full
    report = compiled.report()
    assert report["steps"]["decode"]["n_sites"] == len(full) and "decode" in report["stats"]


def test_embedded_model_m23_greedy_equals_hf_and_m4_strict_decodes():
    """lampc's own trained model: two left-padded Persuasion prompts, 16 greedy tokens, exactly HF's at m23; at m4
    strict the decode steps recompute something."""
    from lampc.models import load_model

    model, tokenizer = load_model("embedded")
    prompts = ["Sir Walter Elliot, of Kellynch Hall, in Somersetshire,", "Anne"]
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    batch = tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert (mask == 0).any()  # the second prompt really is left-padded
    exact = lampc.compile(model, format="m23", criterion="uniform")
    theirs = model.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False)
    assert torch.equal(exact.generate(ids, mask, max_new_tokens=16), theirs)
    low = lampc.compile(model, format="m4", criterion="strict", tau=0.2)
    out = low.generate(ids, mask, max_new_tokens=16)
    assert out.shape[0] == 2 and low.stats("decode")["overall"]["selected"] > 0
