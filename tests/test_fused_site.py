"""The fused softmax site (SitePolicy.fused): one op with the three unfused ops' values, and the CPU fast path
that selects from row statistics."""

import math

import pytest
import torch

import lampc
from lampc.lookahead import recompute, row_stats
from lampc.lookahead.softmax import masked_softmax, select, strict_sensitivity, visible_from_mask
from lampc.ops import reset_random
from lampc.policy import SitePolicy
from tiny_models import padded_batch, tiny_gpt2, tiny_llama

RULES = [("strict", {"tau": 0.1}), ("uniform", {}), ("budget", {"budget": 0.2}), ("random", {"tau": 0.1}),
         ("relaxed", {"tau": 0.3})]
CASES = [("gpt2", criterion, rule) for criterion, rule in RULES] + [("llama", "strict", {"tau": 0.01})]


@pytest.fixture(scope="module")
def compilers():
    """One capture per architecture; each case rewrites a fresh copy (CellCompiler, the same as lampc.compile)."""
    from lampc.cells import CellCompiler

    models = {"gpt2": tiny_gpt2(score_gain=6.0), "llama": tiny_llama()}
    return {arch: (model, CellCompiler(model)) for arch, model in models.items()}


def _run(compiler, ids, mask, **policy):
    compiled = compiler(kinds=["attention", "logits"], sites="all", **policy)
    compiled.keep_selections(True)
    reset_random()
    with torch.no_grad():
        logits = compiled(ids, mask).logits
    return compiled, logits, compiled.selections()


@pytest.mark.slow
@pytest.mark.parametrize("backend,fmt", [("emulate", "m4"), ("native", "bf16")])
@pytest.mark.parametrize("arch,criterion,rule", CASES, ids=[f"{a}-{c}" for a, c, _ in CASES])
def test_fused_site_equals_the_three_ops(compilers, arch, criterion, rule, backend, fmt):
    model, compiler = compilers[arch]
    ids, mask = padded_batch(model.config.vocab_size)
    common = dict(format=fmt, backend=backend, criterion=criterion, **rule)
    unfused, want, want_sel = _run(compiler, ids, mask, fused=False, **common)
    fused, got, got_sel = _run(compiler, ids, mask, fused=True, **common)
    ops = [n.target for n in fused.graph_module.graph.nodes if n.op == "call_function"]
    assert torch.ops.lampc.lamp_scores.default in ops and torch.ops.lampc.lamp_select.default not in ops
    assert torch.equal(got, want)
    assert want_sel.keys() == got_sel.keys() and all(torch.equal(got_sel[i], want_sel[i]) for i in want_sel)
    if criterion not in ("uniform",):
        assert any(s.any() for s in want_sel.values()), "nothing selected: the comparison would be vacuous"


def _scores(seed, shape=(2, 3, 40, 40), spread=4.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * spread


def _masks(shape):
    b, _, t, l = shape
    causal = visible_from_mask(None, shape, True, "cpu")
    padding = torch.zeros(b, 1, t, l)
    padding[0, ..., :7] = torch.finfo(torch.float32).min  # left padding of the first sequence
    padding[1, ..., 5, :] = torch.finfo(torch.float32).min  # a query row that sees nothing
    return {"none": None, "causal": causal, "padding": visible_from_mask(padding, shape, True, "cpu")}


@pytest.mark.parametrize("tau", [3.0, 1.0, 0.1, 0.01, 0.001])
@pytest.mark.parametrize("mask_name", ["none", "causal", "padding"])
@pytest.mark.parametrize("seed,spread", [(0, 4.0), (1, 0.3), (2, 12.0)])
@pytest.mark.parametrize("path", ["rows", "whole", "dense"])
def test_row_stats_selection_is_the_strict_rule(tau, mask_name, seed, spread, path, monkeypatch):
    """Oracle: `select` (softmax, sensitivity, threshold). Entries may differ only where the sensitivity is within
    FP32 rounding of tau (the two compute a_i in different orders). Each of the three code paths is forced:
    gathered rows, candidates over the whole tensor, the dense exact pass."""
    monkeypatch.setattr(row_stats, "GATHER_ROWS_BELOW", 1.0 if path == "rows" else -1.0)
    monkeypatch.setattr(row_stats, "DENSE_ABOVE", 0.0 if path == "dense" else 1.0)
    s = _scores(seed, spread=spread)
    visible = _masks(s.shape)[mask_name]
    site = SitePolicy(criterion="strict", tau=tau)
    every = torch.ones(s.shape, dtype=torch.bool) if visible is None else visible.expand(s.shape)
    want = select(s, every, site)
    got, flat = row_stats.select_from_row_stats(s, visible, site)
    if flat is not None:
        assert torch.equal(flat, got.view(-1).nonzero().squeeze(1))
    sens = strict_sensitivity(s, masked_softmax(s, every))
    differ = got != want
    assert not differ.any() or (sens[differ] - tau).abs().max() <= 1e-5 * tau
    if visible is not None:
        assert not (got & ~visible.expand(s.shape)).any()


def test_row_stats_takes_the_general_rule_with_non_finite_scores():
    s = _scores(3)
    s[0, 0, 4, 2], s[1, 2, 9, 9], s[1, 1, 0, 30] = float("inf"), float("nan"), float("-inf")
    visible = _masks(s.shape)["causal"]
    for criterion, rule in (("strict", {"tau": 0.1}), ("uniform", {})):
        site = SitePolicy(criterion=criterion, **rule)
        got, flat = row_stats.select_from_row_stats(s, visible, site)
        assert flat is None and torch.equal(got, select(s, visible, site))
        # (0, 30) is not causally visible, but non-finite: selected, so its FP32 value replaces the inf before the
        # additive mask (an inf there would survive the mask and turn the softmax row into NaN: tests/test_overflow.py)
        assert got[0, 0, 4, 2] and got[1, 2, 9, 9] and got[1, 1, 0, 30]


def test_row_stats_uniform_selects_nothing_on_finite_scores():
    got, flat = row_stats.select_from_row_stats(_scores(4), None, SitePolicy(criterion="uniform"))
    assert got.dtype == torch.bool and not got.any() and flat.numel() == 0


@pytest.mark.parametrize("c", [0.0, 0.3, 1.0, 5.0, 10.8, 30.0])
@pytest.mark.parametrize("tau", [3.0, 1.0, 0.2, 0.01, 0.001])
def test_band_width_bounds_the_strict_rule_tightly(c, tau):
    """Oracle: the largest d on a fine grid with 2·(c + d)·e^(−d) > tau (0 if none)."""
    d = row_stats.band_width(torch.tensor([[c]]), tau).item()
    grid = torch.linspace(0.0, 60.0, 600_001, dtype=torch.float64)
    passing = grid[2.0 * (c + grid) * torch.exp(-grid) > tau]
    largest = passing.max().item() if passing.numel() else 0.0
    assert d >= largest - 1e-4  # no entry that can pass is left out
    assert d <= max(largest, 1.0 - c) + 1e-3  # and the band is not wider than needed (where h decreases)


def test_recompute_into_writes_in_place_and_matches_recompute():
    g = torch.Generator().manual_seed(5)
    q, k_t = torch.randn(2, 3, 9, 8, generator=g), torch.randn(2, 3, 8, 11, generator=g)
    s_hat = (q @ k_t).bfloat16().float()
    selected = torch.rand(s_hat.shape, generator=g) < 0.1
    want = recompute.recompute(s_hat, selected, q, k_t, 0.5, 0.25)
    buffer = s_hat.clone()
    assert recompute.recompute_into(buffer, selected, q, k_t, 0.5, 0.25) is buffer
    assert torch.equal(buffer, want)
    assert torch.allclose(want[selected], (q @ k_t * 0.5)[selected], rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_fused_site_graph_unfuses_to_the_three_ops():
    from lampc.passes import unfuse_sites

    model = tiny_gpt2(score_gain=6.0)
    compiled = lampc.compile(model, format="m4", criterion="strict", tau=0.1, fused=True)
    ids, mask = padded_batch(97)
    with torch.no_grad():
        want = compiled(ids, mask).logits
    assert unfuse_sites(compiled.graph_module) == len(compiled.sites)
    targets = {n.target for n in compiled.graph_module.graph.nodes if n.op == "call_function"}
    assert torch.ops.lampc.lamp_scores.default not in targets and torch.ops.lampc.lamp_select.default in targets
    with torch.no_grad():
        assert torch.equal(compiled(ids, mask).logits, want)


def test_power_of_two_scale_folding_gives_the_same_bits():
    from lampc.numerics.native import native_scores

    g = torch.Generator().manual_seed(6)
    q, k_t = torch.randn(3, 17, 64, generator=g) * 3, torch.randn(3, 64, 29, generator=g) * 3
    for scale in (0.125, 2.0 ** -0.5, 1.0, 3.0):
        want = ((q.bfloat16() @ k_t.bfloat16()) * scale).float()
        assert torch.equal(native_scores(q, k_t, scale, torch.bfloat16), want), scale
    assert math.frexp(2.0 ** -0.5)[0] != 0.5  # the non-power-of-two case takes the unfolded path
