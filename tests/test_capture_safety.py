"""Capturing never harms the user's model, works from several threads at once, and names what it cannot capture.

torch.export (non-strict) swaps a module's parameters and buffers for fake tensors while it traces and swaps them
back afterwards; two traces of one model at once put each other's fakes back, and the user's model was left holding
FakeTensors. These tests run real threads against a freshly compiled model (its step graphs are captured on first
use, so the first calls race to capture), force capture failures with a forward hook that torch.export cannot trace,
and check the model afterwards: every parameter and buffer a real tensor with its old value. The oracles are the
model's own generate and its state before compiling.
"""

import threading

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor
from transformers import AutoConfig, AutoModelForSeq2SeqLM

import lampc
from lampc.capture import describe_failure, exclusive_capture
from tiny_models import padded_batch, tiny_gpt2, tiny_llama

MODELS = {"gpt2": tiny_gpt2, "llama": tiny_llama}


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in [*model.named_parameters(), *model.named_buffers()]}


def assert_intact(model, before: dict[str, torch.Tensor]) -> None:
    """Every parameter and buffer is a real tensor (not a FakeTensor) holding its value from `before`."""
    now = dict([*model.named_parameters(), *model.named_buffers()])
    fake = [name for name, t in now.items() if isinstance(t, FakeTensor)]
    assert not fake, f"{len(fake)} of the model's tensors are FakeTensors: {fake[:3]}"
    assert now.keys() == before.keys()
    changed = [name for name, t in now.items() if not torch.equal(t, before[name])]
    assert not changed, changed


def run_in_threads(work, count: int = 4) -> list:
    """work(i) in `count` threads released together; each result, or the exception it raised."""
    start, results = threading.Barrier(count), [None] * count

    def body(i):
        start.wait()
        try:
            results[i] = work(i)
        except Exception as err:  # noqa: BLE001 - the test inspects it
            results[i] = err

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(MODELS))
def test_concurrent_first_generate_calls_all_equal_hf_and_leave_the_model_intact(arch):
    """Four threads generate at once on a fresh compile: two batches of 2 (prefill, decode) and two of 1 (prefill,
    decode_1), so different step graphs are captured at the same time."""
    model = MODELS[arch]()
    before = snapshot(model)
    compiled = lampc.compile(model, format="m23", criterion="strict", tau=0.01)
    ids, mask = padded_batch(97, batch=2, seq=6, pad=2)
    inputs = [(ids, mask), (ids, mask), (ids[:1], mask[:1]), (ids[:1], mask[:1])]
    results = run_in_threads(lambda i: compiled.generate(*inputs[i], max_new_tokens=4))
    assert_intact(model, before)
    for (i_ids, i_mask), got in zip(inputs, results):
        assert not isinstance(got, Exception), f"{type(got).__name__}: {got}"
        want = model.generate(i_ids, attention_mask=i_mask, max_new_tokens=4, do_sample=False)
        assert torch.equal(got, want)


@pytest.mark.slow
def test_concurrent_compiles_of_one_model_all_work():
    model = tiny_gpt2()
    before = snapshot(model)
    ids, mask = padded_batch(97)
    results = run_in_threads(lambda i: lampc.compile(model, format="m23", criterion="uniform"), count=3)
    assert_intact(model, before)
    want = model(ids, attention_mask=mask).logits
    for compiled in results:
        assert not isinstance(compiled, Exception), f"{type(compiled).__name__}: {compiled}"
        assert (compiled(ids, attention_mask=mask).logits - want)[mask.bool()].abs().max() < 1e-5


def data_dependent_hook(module, args, output):
    """A forward hook torch.export cannot trace: Python control flow on a tensor's value."""
    hidden = output[0] if isinstance(output, tuple) else output
    if hidden.sum() > 0:
        return output
    return output


@pytest.mark.slow
def test_a_failed_step_capture_names_the_hook_and_leaves_the_model_intact():
    model = tiny_gpt2()
    before = snapshot(model)
    compiled = lampc.compile(model, format="m23", criterion="strict", tau=0.01)
    handle = model.transformer.h[1].attn.register_forward_hook(data_dependent_hook)
    ids, mask = padded_batch(97, batch=2, seq=6, pad=2)
    with pytest.raises(lampc.CaptureError, match=r"1 forward hook .*transformer\.h\.1\.attn.*data_dependent_hook"):
        compiled.generate(ids, mask, max_new_tokens=3)
    assert_intact(model, before)
    handle.remove()
    want = model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    assert torch.equal(compiled.generate(ids, mask, max_new_tokens=3), want)  # the failure poisoned nothing


@pytest.mark.slow
def test_a_hook_that_breaks_the_full_capture_is_named_at_compile():
    model = tiny_llama()
    before = snapshot(model)
    model.model.layers[0].mlp.register_forward_hook(data_dependent_hook)
    with pytest.raises(lampc.CaptureError) as info:
        lampc.compile(model)
    message = str(info.value)
    assert "1 forward hook" in message and "model.layers.0.mlp" in message and "remove" in message
    assert_intact(model, before)


def test_a_failure_without_hooks_does_not_blame_hooks():
    """The negative twin: the hook sentence appears only when the model has hooks."""
    model = tiny_gpt2()
    try:
        raise RuntimeError("some tracing failure")
    except RuntimeError as err:
        message = describe_failure(model, err)
    assert "hook" not in message and "some tracing failure" in message
    model.transformer.ln_f.register_forward_pre_hook(lambda module, args: None)
    try:
        raise RuntimeError("some tracing failure")
    except RuntimeError as err:
        message = describe_failure(model, err)
    assert "1 forward pre-hook" in message and "transformer.ln_f" in message


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_encoder_decoders_are_refused_by_name_before_any_export(kind):
    config = AutoConfig.for_model(kind, vocab_size=64, d_model=16, d_ff=32, num_layers=1, num_heads=2,
                                  encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                                  decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32)
    model = AutoModelForSeq2SeqLM.from_config(config).eval()
    with pytest.raises(lampc.CaptureError, match="encoder-decoder") as info:
        lampc.compile(model)
    assert "decoder-only causal LMs and encoders" in str(info.value)
    assert info.value.__cause__ is None  # refused up front, not a translated torch.export failure


def test_whatever_a_capture_swaps_in_is_put_back():
    """exclusive_capture itself: a parameter and a buffer replaced inside (as torch.export's tracing does with fake
    tensors) and an error raised; afterwards the model holds its own tensors, in its own mode."""
    model = tiny_llama().train()
    weight, inv_freq = model.lm_head.weight, model.model.rotary_emb.inv_freq
    with pytest.raises(RuntimeError, match="trace failed"):
        with exclusive_capture(model):
            assert not model.training
            model.lm_head.weight = torch.nn.Parameter(torch.zeros_like(weight))
            model.model.rotary_emb.register_buffer("inv_freq", torch.zeros_like(inv_freq), persistent=False)
            raise RuntimeError("trace failed")
    assert model.lm_head.weight is weight and model.model.rotary_emb.inv_freq is inv_freq
    assert model.training


def test_a_tap_run_by_many_threads_counts_every_call():
    """Threads running one compiled model share its taps: each call's counts land in the totals exactly once,
    including the first calls, which create the totals (the race a 4-thread generate once hit: one thread set
    `selected` and another added to `visible` before it existed)."""
    from lampc.ops.tap import SelectionTap

    selected = torch.zeros(2, 3, 4, 4, dtype=torch.bool)
    selected[:, :, :, 0] = True  # 8 selected per head per call, all visible (no mask, not causal)
    threads, calls = 8, 20
    for _ in range(10):  # fresh taps: the first calls race to create the totals
        tap = SelectionTap(site=0)
        run_in_threads(lambda i: [tap(selected, None) for _ in range(calls)], count=threads)
        assert tap.calls == threads * calls
        assert tap.selected.tolist() == [8 * threads * calls] * 3
        assert tap.visible.tolist() == [32 * threads * calls] * 3
