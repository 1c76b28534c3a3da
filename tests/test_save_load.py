"""Saving a compiled model and loading it back without recompiling: torch.save / torch.load and pickle.

The oracle is the model that was saved: the loaded one must give bit-identical logits (full sequence, cached
steps, generation), carry its statistics on from where they were, and keep its graphs' node names (the sites
point at them) and torch.export's input guards.
"""

import io
import pickle

import pytest
import torch

import lampc
from lampc.inspect.show import render
from lampc.runtime.portable_graph import check_saved_with, saved_with
from tiny_models import padded_batch, tiny_gpt2, tiny_llama

pytestmark = pytest.mark.slow  # every test compiles a (tiny) model

MODELS = {"gpt2": lambda: tiny_gpt2(score_gain=3.0), "llama": tiny_llama}


def torch_round_trip(compiled):
    buffer = io.BytesIO()
    torch.save(compiled, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def pickle_round_trip(compiled):
    return pickle.loads(pickle.dumps(compiled))


ROUND_TRIPS = {"torch.save": torch_round_trip, "pickle": pickle_round_trip}


@pytest.fixture(scope="module", params=sorted(MODELS))
def used(request):
    """A compiled model that has run a forward and a generation (so its step graphs exist), and its inputs."""
    model = MODELS[request.param]()
    compiled = lampc.compile(model, format="m4", criterion="strict", tau=0.1)
    ids, mask = padded_batch(model.config.vocab_size)
    compiled(ids, attention_mask=mask)
    compiled.generate(ids, mask, max_new_tokens=3)
    return compiled, ids, mask


@pytest.mark.parametrize("round_trip", sorted(ROUND_TRIPS))
def test_a_loaded_model_computes_what_the_saved_one_does(used, round_trip):
    compiled, ids, mask = used
    loaded = ROUND_TRIPS[round_trip](compiled)
    assert type(loaded) is type(compiled) and loaded is not compiled
    assert loaded.stats() == compiled.stats()  # the totals so far, every phase
    assert torch.equal(loaded(ids, attention_mask=mask).logits, compiled(ids, attention_mask=mask).logits)
    cached = [m(ids[:, :4], attention_mask=mask[:, :4], use_cache=True) for m in (loaded, compiled)]
    steps = [m(ids[:, 4:5], attention_mask=mask[:, :5], past_key_values=c.past_key_values)
             for m, c in zip((loaded, compiled), cached)]
    assert torch.equal(steps[0].logits, steps[1].logits)
    assert torch.equal(loaded.generate(ids, mask, max_new_tokens=5), compiled.generate(ids, mask, max_new_tokens=5))
    assert loaded.stats() == compiled.stats()  # both counted the same calls on top
    assert loaded.report()["sites"] == compiled.report()["sites"]


def test_an_eager_model_saved_before_decoding_decodes_after_load_without_its_source_model():
    """steps="eager": every step graph was built at compile and is saved, no part of the Hugging Face model is; at
    m23 the loaded model decodes as transformers does."""
    model = tiny_gpt2(score_gain=3.0)
    compiled = lampc.compile(model, format="m23", criterion="uniform", steps="eager")
    saved = compiled.__getstate__()["steps"]
    assert saved["model"] is None and set(saved["graphs"]) == {"prefill", "decode", "decode_1"}
    loaded = torch_round_trip(compiled)
    assert loaded.step_graphs.source is None and loaded.step_graphs.pending == []
    ids, mask = padded_batch(97)
    assert torch.equal(loaded.generate(ids, mask, max_new_tokens=3),
                       model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False))
    assert set(loaded.stats()) >= {"prefill", "decode"} and "prefill" not in compiled.stats()


def test_a_model_saved_before_decoding_builds_its_step_graphs_after_load():
    """The saved source model captures the step on first use; at m23 it decodes as transformers does."""
    model = tiny_gpt2(score_gain=3.0)
    loaded = torch_round_trip(lampc.compile(model, format="m23", criterion="uniform"))
    assert not loaded.step_graphs.graphs  # nothing was built before saving
    ids, mask = padded_batch(97)
    ours = loaded.generate(ids, mask, max_new_tokens=1)  # the prefill step alone
    assert torch.equal(ours, model.generate(ids, attention_mask=mask, max_new_tokens=1, do_sample=False))
    assert set(loaded.step_graphs.graphs) == {"prefill"}


def test_the_loaded_graphs_keep_node_names_code_and_guards(used):
    compiled, ids, mask = used
    loaded = torch_round_trip(compiled)
    graphs = [(compiled.graph_module, loaded.graph_module)]
    graphs += [(compiled.step_graphs.graphs[k], loaded.step_graphs.graphs[k]) for k in compiled.step_graphs.graphs]
    assert len(graphs) >= 3  # the full sequence, prefill, decode
    for before, after in graphs:
        assert [(n.name, n.op, str(n.target)) for n in before.graph.nodes] == \
               [(n.name, n.op, str(n.target)) for n in after.graph.nodes]
        assert before.code == after.code
    names = {n.name for n in loaded.graph_module.graph.nodes}
    assert all(set(site.nodes) <= names for site in loaded.sites)
    assert render(loaded).splitlines()[0] == render(compiled).splitlines()[0]
    with pytest.raises(AssertionError, match="Guard failed"):  # torch.export's own input check, as before saving
        loaded.graph_module(input_ids=ids[:, :3], attention_mask=mask, use_cache=False)


def test_the_native_backend_and_the_random_baseline_load():
    model = tiny_gpt2(score_gain=3.0)
    ids, mask = padded_batch(97)
    native = lampc.compile(model, format="bf16", backend="native", criterion="strict", tau=0.1)
    assert torch.equal(torch_round_trip(native)(ids, attention_mask=mask).logits,
                       native(ids, attention_mask=mask).logits)
    random = lampc.compile(model, format="m4", criterion="random", tau=0.05, seed=4)
    first = random(ids, attention_mask=mask).logits
    loaded = torch_round_trip(random)  # the baseline restarts from its seed
    assert torch.equal(loaded(ids, attention_mask=mask).logits, first)


def test_torch_save_keeps_shared_weights_shared(used):
    compiled, ids, mask = used
    loaded = torch_round_trip(compiled)
    source = loaded.step_graphs.source.model
    pointers = {p.data_ptr() for p in source.parameters()}
    assert all(p.data_ptr() in pointers for p in loaded.graph_module.parameters())


def test_pickle_keeps_shared_weights_shared_too(used):
    compiled, ids, mask = used
    loaded = pickle_round_trip(compiled)
    pointers = {p.data_ptr() for p in loaded.step_graphs.source.model.parameters()}
    graphs = [loaded.graph_module, *loaded.step_graphs.graphs.values()]
    assert len(graphs) > 1 and all(p.data_ptr() in pointers for gm in graphs for p in gm.parameters())


def test_a_save_from_other_versions_is_refused_by_name():
    here = saved_with()
    assert check_saved_with(dict(here)) == here
    with pytest.raises(RuntimeError, match=rf"saved in lampc's format {here['format']} with Python 2.7 and torch 0.1; "
                                           r"load it with those"):
        check_saved_with({**here, "python": "2.7", "torch": "0.1"})
    with pytest.raises(RuntimeError, match=r"saved in lampc's format 1 with"):  # before the typed op arguments
        check_saved_with({**here, "format": 1})


class _Affine(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.linear(x)


CALLS = []


def _record_call(module, args, output):  # a module-level hook: pickle saves it by reference
    CALLS.append(output.shape)


def _exported_graph():
    return torch.export.export(_Affine(), (torch.ones(1, 3),)).module()


def test_a_users_lambda_hook_is_refused_at_save_by_name_not_loaded_as_torch_exports():
    """A one-name, one-cell lambda is not torch.export's module-types hook unless it calls one of those two."""
    from lampc.runtime.portable_graph import PortableGraph

    gm = _exported_graph()
    seen = []
    gm.register_forward_hook(lambda module, args, output: seen.append(output))
    with pytest.raises(TypeError, match=r"forward hook .*<lambda>.* does not pickle"):
        pickle.dumps(PortableGraph(gm))


def test_torch_exports_hooks_and_a_module_level_hook_survive_save_and_load():
    from lampc.runtime.portable_graph import PortableGraph

    gm = _exported_graph()
    gm.register_forward_hook(_record_call)
    loaded = pickle.loads(pickle.dumps(PortableGraph(gm)))
    x = torch.randn(1, 3)
    CALLS.clear()
    assert torch.equal(loaded(x), gm(x)) and CALLS == [torch.Size([1, 2])] * 2
