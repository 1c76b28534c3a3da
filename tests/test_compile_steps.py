"""When the cached-step graphs (prefill, decode) are made: `compile(steps="eager")` captures, rewrites and checks
them at compile and lets the Hugging Face model go; by default (and with steps="lazy") each is built and checked
at the first call that needs it, the default saying so once; steps="none" makes none. In every mode a step graph's
sites are the full-sequence graph's one to one, or StepSitesError.

Oracles: the full-sequence graph's own sites (what every step graph must carry), transformers' generate on the
uncompiled model (at m23 every lampc op computes what the model computes), and the garbage collector (a weakref to
the model dies once the user drops it).
"""

import gc
import io
import warnings
import weakref

import pytest
import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutput
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention

import lampc
from lampc.cells import CellCompiler
from lampc.runtime.steps import StepSitesError
from tiny_models import padded_batch, tiny_gpt2

pytestmark = pytest.mark.slow  # every test but the argument check captures a (tiny) model

STEP_KINDS = {"prefill", "decode", "decode_1"}


class ReorderedWhenCached(GPT2Attention):
    """GPT-2 attention that, given a cache, takes transformers' own `reorder_and_upcast_attn` path (baddbmm, then
    softmax): the same attention, but in the prefill step a pattern lampc does not rewrite (a baddbmm whose bias is
    not ALiBi's), so that step would run this layer in FP32 while the forward runs it in low precision."""

    def forward(self, hidden_states, cache=None, **kwargs):
        self.reorder_and_upcast_attn = cache is not None
        return super().forward(hidden_states, cache=cache, **kwargs)


def _sites(sites):
    return [(s.kind, s.module) for s in sites]


def test_eager_steps_are_all_built_and_checked_at_compile():
    compiled = lampc.compile(tiny_gpt2(score_gain=3.0), format="m4", criterion="strict", tau=0.1,
                             kinds=["attention", "logits"], steps="eager")
    steps = compiled.step_graphs
    assert set(steps.graphs) == STEP_KINDS and steps.pending == []
    for kind, result in steps.results.items():
        assert _sites(result.sites) == _sites(compiled.sites), kind
    assert set(compiled.report()["steps"]) == STEP_KINDS
    assert {"prefill", "decode"}.isdisjoint(compiled.stats())  # no step has run: no step statistics yet
    assert len(compiled.stats("decode")["sites"]) == len(compiled.sites)  # but their sites are listed


def test_a_step_graph_with_other_sites_is_refused_at_compile_by_name():
    model = tiny_gpt2(score_gain=3.0)
    model.transformer.h[1].attn.__class__ = ReorderedWhenCached
    with pytest.raises(StepSitesError, match=r"prefill step graph .* 1 site\(s\) where the full-sequence graph has "
                                             r"2: missing attention @ transformer\.h\.1\.attn \(skipped: baddbmm"):
        lampc.compile(model, steps="eager")
    assert issubclass(StepSitesError, lampc.CaptureError)


def test_lazy_steps_are_checked_at_the_first_call_that_builds_them():
    model = tiny_gpt2(score_gain=3.0)
    model.transformer.h[1].attn.__class__ = ReorderedWhenCached
    compiled = lampc.compile(model, steps="lazy")  # nothing is captured yet
    assert compiled.step_graphs.pending == ["prefill", "decode", "decode_1"]
    ids, mask = padded_batch(97)
    with pytest.raises(StepSitesError, match="prefill step graph"):
        compiled.generate(ids, mask, max_new_tokens=2)


def test_default_steps_are_built_on_use_and_the_first_build_says_what_it_costs():
    model = tiny_gpt2(score_gain=3.0)
    ids, mask = padded_batch(97)
    theirs = model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    compiled = lampc.compile(model, format="m23", criterion="uniform")
    assert compiled.step_graphs.pending == ["prefill", "decode", "decode_1"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = compiled.generate(ids, mask, max_new_tokens=3)  # builds prefill and decode
        compiled.generate(ids[:1], mask[:1], max_new_tokens=2)  # and decode_1
    notes = [str(w.message) for w in caught if "step graph now" in str(w.message)]
    assert len(notes) == 1 and "prefill" in notes[0] and 'steps="eager"' in notes[0] and 'steps="lazy"' in notes[0]
    assert torch.equal(ours, theirs)
    with warnings.catch_warnings(record=True) as caught:  # chosen explicitly: nothing to say
        warnings.simplefilter("always")
        lampc.compile(model, steps="lazy").generate(ids, mask, max_new_tokens=2)
    assert not [w for w in caught if "step graph now" in str(w.message)]


def _without_the_users_reference(steps: str, new_tokens: int):
    """A GPT-2 compiled at m23 with `steps`, the user's reference to it dropped: the compiled model, a weakref to the
    model, HF's greedy tokens for (ids, mask), ids and mask."""
    model = tiny_gpt2(score_gain=3.0)
    ids, mask = padded_batch(97)
    theirs = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False)
    compiled = lampc.compile(model, format="m23", criterion="uniform", steps=steps)
    source = weakref.ref(model)
    del model
    gc.collect()
    return compiled, source, theirs, ids, mask


def test_the_compiled_model_lets_the_source_model_go_and_still_decodes_as_it_did():
    compiled, source, theirs, ids, mask = _without_the_users_reference("eager", 4)
    assert source() is None
    assert torch.equal(compiled.generate(ids, mask, max_new_tokens=4), theirs)


def test_lazy_steps_keep_the_source_model_until_every_kind_is_built():
    compiled, source, theirs, ids, mask = _without_the_users_reference("lazy", 3)
    assert source() is not None  # the steps not built yet are captured from it
    assert torch.equal(compiled.generate(ids, mask, max_new_tokens=3), theirs)  # builds prefill and decode
    assert compiled.step_graphs.pending == ["decode_1"]
    compiled.generate(ids[:1], mask[:1], max_new_tokens=2)  # batch 1: decode_1, the last kind
    gc.collect()
    assert compiled.step_graphs.pending == [] and source() is None


def test_steps_none_compiles_the_forward_alone_and_refuses_decoding_by_name():
    model = tiny_gpt2()
    ids, mask = padded_batch(97)
    compiled = lampc.compile(model, steps="none")
    assert compiled.step_graphs is None
    assert torch.equal(compiled(ids, attention_mask=mask).logits, lampc.compile(model)(ids, attention_mask=mask).logits)
    with pytest.raises(RuntimeError, match=r'no cached-step graphs \(compiled with steps="none"\)'):
        compiled.generate(ids, mask, max_new_tokens=2)
    with pytest.raises(RuntimeError, match="steps=\"none\""):
        compiled(ids, attention_mask=mask, use_cache=True)


@pytest.mark.parametrize("steps", ["later", "", True])
def test_a_bad_steps_argument_is_refused_before_any_capture(steps):
    with pytest.raises(ValueError, match=r"steps must be one of 'eager', 'lazy', 'none' \(or None: 'lazy', saying "
                                         r"so\), got"):
        lampc.compile(object(), steps=steps)  # not even a model: the argument is checked first
    with pytest.raises(ValueError, match=r"steps must be one of"):
        CellCompiler(object(), steps=steps)


def test_a_cell_compiler_captures_each_step_once_and_checks_every_cell():
    model = tiny_gpt2(score_gain=3.0)
    compiler = CellCompiler(model, steps="eager")
    captured = dict(compiler.step_capture._graphs)
    assert set(captured) == STEP_KINDS  # captured with the full-sequence graph
    cells = [compiler(format="m4", criterion="strict", tau=tau) for tau in (0.01, 0.5)]
    assert all(compiler.step_capture._graphs[k] is captured[k] for k in STEP_KINDS)  # not captured again
    for compiled in cells:
        assert set(compiled.step_graphs.graphs) == STEP_KINDS and compiled.step_graphs.source is None
    assert CellCompiler(model, steps="none").step_capture is None
    assert CellCompiler(model, steps="none")(format="m4").step_graphs is None


class CachelessLM(nn.Module):
    """A GPT-2 behind a forward that never returns a cache: its full-sequence graph compiles, its steps cannot be
    captured. `generates` is what its can_generate() says (a decoder that should decode, or a model that never
    does)."""

    def __init__(self, generates: bool):
        super().__init__()
        self.inner, self.generates = tiny_gpt2(), generates
        self.config = self.inner.config

    def can_generate(self) -> bool:
        return self.generates

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return CausalLMOutput(logits=self.inner(input_ids=input_ids, attention_mask=attention_mask,
                                                use_cache=False).logits)


def test_a_model_whose_steps_cannot_be_captured_compiles_its_forward_and_says_so_once():
    ids, mask = padded_batch(97)
    model = CachelessLM(generates=True)
    with pytest.warns(UserWarning, match=r"cached steps cannot be captured.*no per-layer cache"):
        compiled = lampc.compile(model, steps="eager")
    assert torch.equal(compiled(ids, attention_mask=mask).logits, lampc.compile(model, steps="none")(
        ids, attention_mask=mask).logits)
    loaded = torch.load(_saved(compiled), weights_only=False)
    for m in (compiled, loaded):
        with pytest.raises(lampc.CaptureError, match="no per-layer cache"):
            m.generate(ids, mask, max_new_tokens=2)
    with warnings.catch_warnings(record=True) as caught:  # a model that never decodes: nothing to warn about
        warnings.simplefilter("always")
        lampc.compile(CachelessLM(generates=False), steps="eager")
        CellCompiler(CachelessLM(generates=False), steps="eager")(format="m4")
    assert not [w for w in caught if "cached steps" in str(w.message)]


def _saved(compiled) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(compiled, buffer)
    buffer.seek(0)
    return buffer
