"""Calling a compiled model with what it cannot honour: a named error before any work, or Hugging Face's behaviour.

Each case was a third-party traceback (torch's IndexError, an export guard's AssertionError, a dtype mismatch) or
a silent acceptance. The oracles: the model's own cache layout, HF's `model.generate` for generation lengths, and a
sequential run of the same calls for the random baseline under threads.
"""

import threading
import warnings

import pytest
import torch
from transformers import GenerationConfig

import lampc
from lampc.runtime.steps import KVCache
from tiny_models import padded_batch, tiny_gpt2, tiny_llama

pytestmark = pytest.mark.slow  # every test compiles a (tiny) model


@pytest.fixture(scope="module")
def model():
    return tiny_gpt2(score_gain=3.0)


@pytest.fixture(scope="module")
def m23(model):
    return lampc.compile(model, format="m23", criterion="uniform")


@pytest.fixture(scope="module")
def prefix(m23):
    """A 5-token prompt and its cache (2 layers, 4 heads of dim 8)."""
    ids = torch.randint(0, 97, (1, 5), generator=torch.Generator().manual_seed(0))
    return ids, m23(ids, use_cache=True).past_key_values


# -- past_key_values ------------------------------------------------------------------------------------------


def _next(m23, cache):
    return m23(torch.tensor([[7]]), past_key_values=cache)


def test_a_cache_with_too_few_layers_is_named(m23, prefix):
    _, cache = prefix
    with pytest.raises(ValueError, match=r"past_key_values holds 1 layer\(s\) of keys and 1 of values; this model "
                                         r"has 2 layers"):
        _next(m23, KVCache(cache.keys[:1], cache.values[:1]))


def test_a_cache_from_another_model_is_named(m23):
    other = lampc.compile(tiny_llama(), format="m23", criterion="uniform")  # 2 layers, 2 kv heads of dim 16
    cache = other(torch.tensor([[1, 2, 3]]), use_cache=True).past_key_values
    with pytest.raises(ValueError, match=r"past_key_values: layer 0 keys are shaped \(1, 2, 3, 16\); this model's "
                                         r"cache is \(batch, 4, positions, 8\)"):
        _next(m23, cache)


def test_layers_of_different_lengths_are_named(m23, prefix):
    _, cache = prefix
    keys = (cache.keys[0], cache.keys[1][:, :, :3])
    values = (cache.values[0], cache.values[1][:, :, :3])
    with pytest.raises(ValueError, match=r"past_key_values: layer 1 holds 1 sequence\(s\) of 3 positions, layer 0 holds 1 of 5"):
        _next(m23, KVCache(keys, values))


def test_keys_and_values_of_different_lengths_are_named(m23, prefix):
    _, cache = prefix
    with pytest.raises(ValueError, match=r"past_key_values: layer 0 values are shaped \(1, 4, 3, 8\), its keys "
                                         r"\(1, 4, 5, 8\)"):
        _next(m23, KVCache(cache.keys, tuple(v[:, :, :3] for v in cache.values)))


def test_a_cache_of_another_dtype_or_holding_non_tensors_is_named(m23, prefix):
    _, cache = prefix
    with pytest.raises(TypeError, match="past_key_values: layer 0 keys must be a float32 tensor"):
        _next(m23, KVCache(tuple(k.half() for k in cache.keys), cache.values))
    with pytest.raises(TypeError, match=r"past_key_values: layer 1 values must be a float32 tensor \(the cache a compiled model returns\), got list"):
        _next(m23, KVCache(cache.keys, (cache.values[0], [0.0])))


def test_an_empty_cache_is_no_cache(m23, model):
    """A cache of 0 positions (the right layers) continues nothing: the logits are the model's on the tokens."""
    empty = KVCache(tuple(torch.zeros(1, 4, 0, 8) for _ in range(2)), tuple(torch.zeros(1, 4, 0, 8) for _ in range(2)))
    for ids in (torch.tensor([[7]]), torch.tensor([[7, 9, 11]])):
        out = m23(ids, past_key_values=empty)
        assert out.past_key_values.length == ids.shape[1]
        assert torch.allclose(out.logits, model(ids).logits, atol=1e-5, rtol=0)


def test_a_valid_cache_still_continues_the_sequence(m23, model, prefix):
    ids, cache = prefix
    step = m23(torch.tensor([[7]]), past_key_values=cache)
    full = model(torch.cat([ids, torch.tensor([[7]])], dim=1)).logits[:, -1:]
    assert torch.allclose(step.logits, full, atol=1e-5, rtol=0)


# -- position_ids ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("positions, message", [
    ([[64]], r"position_ids must be in \[0, 64\) \(the model's context\), got \[64, 64\]"),
    ([[-1]], r"position_ids must be in \[0, 64\) \(the model's context\), got \[-1, -1\]"),
    ([[3, 200]], r"position_ids must be in \[0, 64\) \(the model's context\), got \[3, 200\]"),
])
def test_positions_outside_the_position_table_are_named(m23, positions, message):
    positions = torch.tensor(positions)
    with pytest.raises(ValueError, match=message):
        m23(torch.full_like(positions, 7), position_ids=positions)


def test_position_ids_must_be_an_integer_tensor(m23):
    with pytest.raises(TypeError, match="position_ids must be an integer tensor"):
        m23(torch.tensor([[7]]), position_ids=torch.tensor([[2.0]]))
    with pytest.raises(TypeError, match="position_ids must be an integer tensor"):
        m23(torch.tensor([[7]]), position_ids=[[2]])


def test_the_last_position_of_the_table_still_runs(m23, model):
    ids, positions = torch.tensor([[7]]), torch.tensor([[63]])
    assert torch.allclose(m23(ids, position_ids=positions).logits, model(ids, position_ids=positions).logits,
                          atol=1e-5, rtol=0)


# -- generate: lengths as Hugging Face's generate ---------------------------------------------------------------


def _both(model, m23, prompt, config: GenerationConfig, **kw):
    """(lampc's, HF's) generate with the same generation config on both models; HF is given only the arguments
    that are not None (an explicit max_new_tokens=None makes HF ignore the config's max_new_tokens, while lampc
    reads every argument left None from the config, as HF does for an argument left out)."""
    saved = model.generation_config, m23.generation_config
    model.generation_config = m23.generation_config = config
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # HF: "Using the model-agnostic default `max_length`"
            theirs = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                                    **{k: v for k, v in kw.items() if v is not None})
            return m23.generate(prompt, **kw), theirs
    finally:
        model.generation_config, m23.generation_config = saved


def _no_eos_config(**fields) -> GenerationConfig:
    return GenerationConfig(bos_token_id=0, pad_token_id=1, **fields)  # no EOS: lengths are the limits alone


@pytest.mark.parametrize("fields, prompt_len, new", [
    ({}, 8, 20),                       # HF's default: 20 new tokens
    ({}, 50, 14),                      # ... cut at the position table (64)
    ({"max_length": 12}, 8, 4),        # the model's generation config: max_length counts the prompt
    ({"max_new_tokens": 5}, 8, 5),     # ... or max_new_tokens
    ({"max_new_tokens": 5, "max_length": 12}, 8, 5),  # max_new_tokens first
])
def test_max_new_tokens_none_takes_hf_defaults(model, m23, fields, prompt_len, new):
    prompt = torch.randint(2, 97, (1, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
    ours, theirs = _both(model, m23, prompt, _no_eos_config(**fields), max_new_tokens=None)
    assert torch.equal(ours, theirs)
    assert ours.shape == (1, prompt_len + new)
    ours_default, _ = _both(model, m23, prompt, _no_eos_config(**fields))  # the argument left out: the same
    assert torch.equal(ours_default, ours)


def test_a_prompt_at_the_configured_max_length_is_refused_like_hf(model, m23):
    prompt = torch.randint(2, 97, (1, 12), generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match=r"the prompt has 12 tokens and the model's generation config sets "
                                         r"max_length=12"):
        saved, m23.generation_config = m23.generation_config, _no_eos_config(max_length=12)
        try:
            m23.generate(prompt)
        finally:
            m23.generation_config = saved
    with pytest.raises(ValueError, match="Input length of input_ids is 12"):
        saved, model.generation_config = model.generation_config, _no_eos_config(max_length=12)
        try:
            model.generate(prompt, attention_mask=torch.ones_like(prompt))
        finally:
            model.generation_config = saved


# -- generate: arguments refused up front -----------------------------------------------------------------------


class Recorder:
    def __init__(self):
        self.puts = []

    def put(self, value):
        self.puts.append(value)

    def end(self):
        pass


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(do_sample=True, generator=42), TypeError, "generator must be a torch.Generator \\(or None for the global RNG\\), got int"),
    (dict(generator=42), TypeError, "generator must be a torch.Generator"),
    (dict(streamer=42), TypeError, r"streamer must have put\(tokens\) and end\(\) methods \(a transformers "
                                   r"BaseStreamer\), got int"),
    (dict(streamer=object()), TypeError, "streamer must have put"),
])
def test_generator_and_streamer_are_checked_before_any_step(m23, kwargs, error, message):
    ids = torch.tensor([[3, 4, 5]])
    m23.reset_stats()
    with pytest.raises(error, match=message):
        m23.generate(ids, max_new_tokens=3, **kwargs)
    assert all(site["calls"] == 0 for site in m23.stats("prefill")["sites"])  # refused before the prompt step


def test_a_streamer_is_not_fed_before_a_refusal(m23):
    recorder = Recorder()
    with pytest.raises(TypeError, match="generator must be"):
        m23.generate(torch.tensor([[3, 4, 5]]), max_new_tokens=3, do_sample=True, generator=42, streamer=recorder)
    assert recorder.puts == []


@pytest.mark.parametrize("ids, mask, error, message", [
    (torch.tensor([[3, 4, 97]]), None, ValueError, r"input_ids: token ids must be in \[0, 97\)"),
    (torch.tensor([[3.0, 4.0, 5.0]]), None, TypeError, "input_ids must be an integer tensor"),
    (torch.tensor([[3, 4, 5]]), torch.ones(1, 3), TypeError, "attention_mask must be an integer tensor"),
    (torch.tensor([[3, 4, 5]]), torch.ones(1, 3, dtype=torch.bool), TypeError, "attention_mask must be an integer"),
])
def test_bad_ids_or_mask_are_refused_before_the_streamer_is_fed(m23, ids, mask, error, message):
    recorder = Recorder()
    m23.reset_stats()
    with pytest.raises(error, match=message):
        m23.generate(ids, mask, max_new_tokens=3, streamer=recorder)
    assert recorder.puts == []
    assert all(site["calls"] == 0 for site in m23.stats("prefill")["sites"])


@pytest.mark.parametrize("value", [2, -1, 5])
def test_a_mask_value_other_than_0_or_1_is_named_not_blamed_on_padding(m23, value):
    ids = torch.tensor([[3, 4, 5], [6, 7, 8]])
    mask = torch.ones_like(ids)
    mask[1, 0] = value
    with pytest.raises(ValueError, match=f"attention_mask must contain only 0 \\(padding\\) and 1 \\(token\\), "
                                         f"got {value}"):
        m23.generate(ids, mask, max_new_tokens=2)


# -- generate: sampling flags ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-5, top_k=0), "temperature must be > 0"),
    (dict(temperature=0.0), "temperature must be > 0"),
    (dict(top_k=-1), "top_k must be >= 1"),
    (dict(top_k=0), "top_k must be >= 1"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
])
def test_invalid_sampling_values_are_refused_with_greedy_decoding_too(m23, kwargs, message):
    """Stricter than HF, which checks these only when sampling: a value no sampler could use is a mistake."""
    for do_sample in (False, True):
        with pytest.raises(ValueError, match=message):
            m23.generate(torch.tensor([[3, 4, 5]]), max_new_tokens=2, do_sample=do_sample, **kwargs)


def test_sampling_flags_without_do_sample_warn_once_naming_them(m23):
    ids = torch.tensor([[3, 4, 5]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = m23.generate(ids, max_new_tokens=4, temperature=0.7, top_k=5, top_p=0.9)
    messages = [str(w.message) for w in caught if "do_sample" in str(w.message)]
    assert len(messages) == 1
    assert "temperature=0.7, top_k=5, top_p=0.9" in messages[0] and "no effect" in messages[0]
    assert torch.equal(out, m23.generate(ids, max_new_tokens=4))  # greedy all the same


def test_neutral_sampling_values_do_not_warn(m23):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m23.generate(torch.tensor([[3, 4, 5]]), max_new_tokens=2, temperature=1.0, top_p=1.0)
    assert not [w for w in caught if "do_sample" in str(w.message)]


def test_unset_sampling_values_take_transformers_defaults(m23, model):
    """HF samples with top_k=50 when neither the call nor the generation config sets it: so does lampc (the
    vocabulary is 97 tokens, so the filter changes the draws)."""
    hf = GenerationConfig._get_default_generation_params()
    assert m23.generation_config.top_k is None and hf["top_k"] < model.config.vocab_size
    ids = torch.tensor([[3, 4, 5]])

    def sample(seed, **kw):
        return m23.generate(ids, max_new_tokens=24, do_sample=True, temperature=4.0,
                            generator=torch.Generator().manual_seed(seed), **kw)

    assert all(torch.equal(sample(s), sample(s, top_k=hf["top_k"])) for s in range(3))
    assert any(not torch.equal(sample(s), sample(s, top_k=model.config.vocab_size)) for s in range(3))


# -- the random baseline under threads -----------------------------------------------------------------------------


def test_random_baseline_in_threads_equals_the_sequential_run(model):
    """Each thread draws from its own streams: its outputs are those of the same calls made alone (in order)."""
    compiled = lampc.compile(model, format="m4", criterion="random", tau=0.05, seed=3)
    ids, mask = padded_batch(97, batch=2, seq=16)
    calls = 3

    def run():
        return [compiled(ids, attention_mask=mask).logits for _ in range(calls)]

    compiled.reset_random()
    sequential = run()
    assert not torch.equal(sequential[0], sequential[1])  # the stream advances from call to call
    compiled.reset_random()
    results, start = {}, threading.Barrier(4)

    def worker(index):
        start.wait()
        results[index] = run()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for index in range(4):
        assert all(torch.equal(a, b) for a, b in zip(results[index], sequential)), index
    assert all(torch.equal(a, b) for a, b in zip(run(), sequential))  # the main thread starts afresh too


def test_reset_random_restarts_every_thread(model):
    compiled = lampc.compile(model, format="m4", criterion="random", tau=0.05, seed=3)
    ids, mask = padded_batch(97, batch=2, seq=16)
    first = compiled(ids, attention_mask=mask).logits
    box = {}
    worker = threading.Thread(target=lambda: box.update(a=compiled(ids, attention_mask=mask).logits))
    worker.start()
    worker.join()
    assert torch.equal(box["a"], first)  # a new thread starts from the seed


# -- dtype and device changes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("change", [
    lambda c: c.half(), lambda c: c.bfloat16(), lambda c: c.double(), lambda c: c.to(torch.bfloat16),
    lambda c: c.to(dtype=torch.float16), lambda c: c.to("cpu", torch.float64), lambda c: c.type(torch.float16),
])
def test_a_dtype_change_is_refused_by_name_and_changes_nothing(model, change):
    compiled = lampc.compile(model, format="m4", criterion="strict", tau=0.1)
    ids = torch.tensor([[3, 4, 5]])
    before = compiled(ids).logits
    with pytest.raises(TypeError, match=r"a compiled model keeps its FP32 graph.*format=\"bf16\", backend=\"native\""):
        change(compiled)
    assert all(p.dtype == torch.float32 for p in compiled.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the user's model is untouched
    assert torch.equal(compiled(ids).logits, before)


@pytest.mark.parametrize("move", [
    lambda c: c.to("cpu"), lambda c: c.to(torch.device("cpu")), lambda c: c.cpu(), lambda c: c.float(),
    lambda c: c.to(torch.float32), lambda c: c.to("cpu", torch.float32),
])
def test_device_moves_and_fp32_keep_working(m23, move):
    ids = torch.tensor([[3, 4, 5]])
    before = m23(ids).logits
    assert move(m23) is m23
    assert torch.equal(m23(ids).logits, before)
