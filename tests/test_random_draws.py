"""The random baseline's draws as graph values (lampc/ops/random.py): a `lampc_draws_<site>` module draws each call's
uniforms from the compiled model's streams and the selection op takes them as its `draws` argument, so an op's
result depends only on its arguments. The oracle is a plain re-implementation: one `torch.Generator` per
(seed, site), seeded `(seed * 1_000_003 + site) % 2**63`, drawing `torch.rand(shape)` once per call, each thread
from the seed; the selection is, per row, the entries with the largest draws, as many as the rule counts from."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import pytest
import torch

import lampc
from lampc.ops import component_select, lamp_select, lowp_matmul, lowp_scores, reset_random
from lampc.ops.random import RandomDraws
from lampc.policy import SitePolicy
from tiny_models import tiny_gpt2

SEED = 7
RANDOM = dict(format="m4", criterion="random", tau=0.02, seed=SEED)


def plain_stream(seed: int, site: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + site) % 2**63)


def top_of(draws: torch.Tensor, visible: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per row, the `counts` visible entries with the largest draws (a threshold at the count-th largest)."""
    masked = draws.masked_fill(~visible, float("-inf"))
    kth = masked.sort(dim=-1, descending=True).values.gather(-1, (counts - 1).clamp(min=0))
    return (masked >= kth) & visible & (counts > 0)


# --- through a compiled model: full graph, prefill step, threads --------------------------------------------------


@pytest.fixture(scope="module")
def compiled():
    return lampc.compile(tiny_gpt2(score_gain=4.0), kinds=["attention", "layer_norm"], **RANDOM)


def _visible(kind: str, selection: torch.Tensor) -> torch.Tensor:
    if kind == "attention":  # no padding: causal visibility
        return torch.ones(selection.shape[-2:], dtype=torch.bool).tril().expand(selection.shape)
    return torch.ones_like(selection)


def _check_calls(compiled, ids, streams: dict) -> int:
    """Run a full forward, a prefill step and a full forward; each site's selection must be the top-count of the
    next draws of that site's plain stream. Returns the number of entries selected (the test must select some)."""
    picked = 0
    for phase in ("forward", "prefill", "forward"):
        compiled(ids, use_cache=phase == "prefill")
        selections = compiled.selections(phase)
        assert set(selections) == {site.index for site in compiled.sites}
        for site in compiled.sites:
            got = selections[site.index]
            draws = torch.rand(got.shape, generator=streams[site.index])
            want = top_of(draws, _visible(site.kind, got), got.sum(-1, keepdim=True))
            assert torch.equal(got, want), (phase, site.index)
            picked += int(got.sum())
    return picked


@pytest.mark.slow
def test_the_random_baseline_is_a_plain_generator_per_seed_and_site(compiled):
    """One stream per (seed, site), shared by the full graph and the step graphs, restarted by reset_random, and
    started from the seed in each new thread."""
    compiled.keep_selections(True)
    ids = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(3))
    fresh = lambda: {site.index: plain_stream(SEED, site.index) for site in compiled.sites}  # noqa: E731
    compiled.reset_random()
    assert _check_calls(compiled, ids, fresh()) > 0
    compiled.reset_random()
    assert _check_calls(compiled, ids, fresh()) > 0
    picked = {}
    for name in ("a", "b"):  # one thread after the other: the selections of each can be read back safely
        worker = threading.Thread(target=lambda n=name: picked.update({n: _check_calls(compiled, ids, fresh())}))
        worker.start()
        worker.join()
    assert picked["a"] > 0 and picked["b"] > 0  # each thread started from the seed (no assertion failed in it)


@pytest.mark.slow
def test_a_random_site_draws_in_a_node_of_its_own(compiled):
    graph = compiled.graph_module.graph
    draws = [n for n in graph.nodes if n.op == "call_module" and str(n.target).startswith("lampc_draws_")]
    assert len(draws) == len(compiled.sites)
    for node in draws:
        module = compiled.graph_module.get_submodule(node.target)
        assert isinstance(module, RandomDraws) and module.streams is compiled._random_streams
        assert node.meta["lampc"].role == "draws" and node.meta["lampc"].site == module.site
        (user,) = node.users
        assert user.target in (torch.ops.lampc.lamp_select.default, torch.ops.lampc.component_select.default)
    steps = compiled.step_graphs.graphs
    assert steps and all(m.streams is compiled._random_streams for gm in steps.values() for m in gm.modules()
                         if isinstance(m, RandomDraws))
    strict = lampc.compile(tiny_gpt2(), format="m4", criterion="strict", steps="none")
    assert not any(isinstance(m, RandomDraws) for m in strict.graph_module.modules())


@pytest.mark.slow
def test_a_loaded_model_draws_from_its_own_streams_across_its_graphs(compiled):
    import io

    buffer = io.BytesIO()
    torch.save(compiled, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    loaded.keep_selections(True)
    ids = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(4))
    assert _check_calls(loaded, ids, {site.index: plain_stream(SEED, site.index) for site in loaded.sites}) > 0


# --- the ops: a function of their arguments -----------------------------------------------------------------------


def _softmax_inputs():
    g = torch.Generator().manual_seed(0)
    q, k_t = torch.randn(2, 3, 12, 8, generator=g) * 2, torch.randn(2, 3, 8, 12, generator=g) * 2
    return q, k_t, 8 ** -0.5


def _select(q, k_t, scale, site: SitePolicy, draws=None, index=0):
    producer, rule, facts, execution = site.config.texts
    s_hat = lowp_scores(q, k_t, scale, producer)
    extra = () if draws is None else (draws,)
    return lamp_select(s_hat, q, k_t, scale, None, True, producer, rule, facts, execution, index, *extra)


def test_lamp_select_is_a_function_of_its_arguments_inside_and_outside_a_compiled_model():
    q, k_t, scale = _softmax_inputs()
    site = SitePolicy(**RANDOM)
    draws = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(11))
    first, again = _select(q, k_t, scale, site, draws), _select(q, k_t, scale, site, draws)
    counts = _select(q, k_t, scale, SitePolicy(format="m4", criterion="strict", tau=0.02)).sum(-1, keepdim=True)
    causal = torch.ones(12, 12, dtype=torch.bool).tril().expand(first.shape)
    assert torch.equal(first, again) and torch.equal(first, top_of(draws, causal, counts)) and first.any()
    model = lampc.compile(tiny_gpt2(), **RANDOM, steps="none")
    inside = {}
    hook = model.graph_module.register_forward_pre_hook(
        lambda *_: inside.update(selection=_select(q, k_t, scale, site, draws)))
    model(torch.tensor([[1, 2, 3, 4]]))
    hook.remove()
    assert torch.equal(inside["selection"], first)


def test_an_op_without_draws_falls_back_to_the_outside_streams():
    """draws=None on a drawing rule: the op draws from lampc.ops.random's own streams (reset_random restarts them)."""
    q, k_t, scale = _softmax_inputs()
    site = SitePolicy(**RANDOM)
    stream = plain_stream(SEED, 5)
    reset_random()
    for _ in range(2):  # the fallback stream advances from call to call
        want = _select(q, k_t, scale, site, torch.rand(2, 3, 12, 12, generator=stream), index=5)
        assert torch.equal(_select(q, k_t, scale, site, index=5), want)


def test_component_select_takes_its_draws():
    g = torch.Generator().manual_seed(2)
    x, w, b = torch.randn(6, 16, generator=g), torch.randn(16, 24, generator=g), torch.randn(24, generator=g)
    site = SitePolicy(**RANDOM)
    producer, rule, _, execution = site.config.texts
    y_hat = lowp_matmul(x, w, b, producer, execution)
    args = (y_hat, x, w, b, None, None, 1e-5, "layer_norm", producer, rule, execution, 3)
    draws = torch.rand(y_hat.shape, generator=torch.Generator().manual_seed(9))
    first, again = component_select(*args, draws), component_select(*args, draws)
    strict = SitePolicy(format="m4", criterion="strict", tau=0.02).config.texts
    counts = component_select(*args[:9], strict.rule, *args[10:]).sum(-1, keepdim=True)
    assert torch.equal(first, again) and first.any()
    assert torch.equal(first, top_of(draws, torch.ones_like(first), counts))


def test_the_draws_module_draws_nothing_while_traced():
    module = RandomDraws(site=2, seed=SEED)
    reset_random()
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        q, k_t = torch.empty(2, 3, 5, 8), torch.empty(2, 3, 8, 7)
        fake = module(q, k_t)
        assert fake.shape == (2, 3, 5, 7) and mode is not None
    first = module(torch.empty(2, 3, 5, 8), torch.empty(2, 3, 8, 7))  # the stream was not advanced by the fake call
    assert torch.equal(first, torch.rand(2, 3, 5, 7, generator=plain_stream(SEED, 2)))
    assert module(torch.empty(4, 6)).shape == (4, 6)  # shaped like a linear site's output


# --- the rewrite: a draws node before the selection ----------------------------------------------------------------


class _Attention(torch.nn.Module):
    def forward(self, q, k, mask):
        return torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * 0.5 + mask, dim=-1)


def _rewritten(**policy):
    from lampc.passes import attention_sites, rewrite_sites

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, 4, 8, generator=g), torch.randn(1, 2, 4, 8, generator=g)
    gm = torch.export.export(_Attention(), (q, k, torch.zeros(1, 1, 4, 4)), strict=False).module()
    rewrite_sites(gm, [attention_sites(SitePolicy(**policy))])
    return gm


@pytest.mark.parametrize("fused", [False, True])
def test_the_rewrite_passes_the_draws_to_the_selection(fused):
    gm = _rewritten(**RANDOM, fused=fused)
    (draws,) = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == "lampc_draws_0"]
    assert draws.meta["val"].shape == (1, 2, 4, 4) and draws.meta["lampc"].role == "draws"
    (select,) = draws.users
    assert select.target is (torch.ops.lampc.lamp_scores.default if fused else torch.ops.lampc.lamp_select.default)
    assert select.args[-1] is draws and [a.name for a in draws.args] == ["q", "transpose"]
    assert not any(n.op == "call_module" and "draws" in str(n.target) for n in _rewritten(format="m4").graph.nodes)


def test_unfusing_keeps_the_fused_sites_draws():
    from lampc.passes import unfuse_sites

    gm = _rewritten(**RANDOM, fused=True)
    (draws,) = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == "lampc_draws_0"]
    assert unfuse_sites(gm) == 1
    (select,) = [n for n in gm.graph.nodes if n.target is torch.ops.lampc.lamp_select.default]
    assert select.args[-1] is draws
    assert [n.target for n in gm.graph.nodes if n.op == "call_module" and n.target.startswith("lampc_")] == [
        "lampc_draws_0", "lampc_tap_0"]  # no second draws node


def test_respec_refuses_a_change_to_or_from_the_random_baseline():
    import dataclasses

    from lampc.passes.respec import respec_sites

    strict = SitePolicy(format="m4", criterion="strict", tau=0.02, seed=SEED)
    random = dataclasses.replace(strict, criterion="random")
    for before, after in ((strict, random), (random, strict)):
        gm = _rewritten(**{f: getattr(before, f) for f in ("format", "criterion", "tau", "seed")})
        code = gm.code
        with pytest.raises(ValueError, match=r"site 0 would change \['criterion \((strict -> random|random -> "
                                             r"strict): the draws\)'\]"):
            respec_sites(gm, {0: after})
        assert gm.code == code


# --- no ambient state in an op ------------------------------------------------------------------------------------


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_op_or_look_ahead_module_imports_contextvars():
    root = Path(lampc.__file__).parent
    files = sorted([*(root / "ops").rglob("*.py"), *(root / "lookahead").rglob("*.py")])
    assert len(files) > 10
    assert [str(p.relative_to(root)) for p in files if "contextvars" in _imports(p)] == []


def test_the_import_check_sees_contextvars(tmp_path):
    """The negative twin: both import forms are found."""
    (tmp_path / "a.py").write_text("import contextvars\n")
    (tmp_path / "b.py").write_text("from contextvars import ContextVar\n")
    assert all("contextvars" in _imports(tmp_path / name) for name in ("a.py", "b.py"))
