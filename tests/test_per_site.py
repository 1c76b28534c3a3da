"""Policy.per_site (one rule per site, over its kind's): validation, the policy file, compile on the embedded model
(the overridden site selects exactly what a whole-model compile at its tau selects; the others are untouched),
respec_sites (the same rule change in place), and the cached step graphs of generate."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import lampc
from lampc.cli_policy import load_policy_file
from lampc.cli_support import CliError
from lampc.policy import PER_SITE_FIELDS, Policy, SiteOverride, SitePolicy

BASE = SitePolicy(format="m4", criterion="strict", tau=0.1)
LOW_TAU = 0.02
N_SITES = 4  # the embedded model: 4 layers, one attention site each
MODULES = [f"transformer.h.{i}.attn" for i in range(N_SITES)]


def _override(site: int, **fields) -> SiteOverride:
    return SiteOverride(site, "attention", fields)


# --- validation (no model) -----------------------------------------------------------------------------------------


def test_site_policy_is_the_kinds_with_the_sites_own_fields():
    policy = Policy(attention=BASE, layer_norm=SitePolicy(criterion="relaxed", tau=0.5),
                    per_site=(_override(1, tau=LOW_TAU), _override(2, criterion="relaxed"),
                              SiteOverride(5, "layer_norm", {"tau": 0.25, "error_scale": "mixed"})))
    assert policy.site_policy("attention", 0) == BASE
    assert policy.site_policy("attention", 1) == dataclasses.replace(BASE, tau=LOW_TAU)
    assert policy.site_policy("attention", 2) == dataclasses.replace(BASE, criterion="relaxed", tau=0.03)  # its default
    assert policy.site_policy("layer_norm", 5) == SitePolicy(criterion="relaxed", tau=0.25, error_scale="mixed")
    assert policy.site_policy("layer_norm", 6) == SitePolicy(criterion="relaxed", tau=0.5)
    assert policy.override_of(1).fields == (("tau", LOW_TAU),) and policy.override_of(3) is None
    assert set(PER_SITE_FIELDS) == {"tau", "criterion", "budget", "length_scaling", "l_ref", "error_scale"}


@pytest.mark.parametrize("field,value", [("format", "m7"), ("block_k", 4), ("backend", "native"), ("fused", True),
                                         ("seed", 3), ("softcap", 30.0)])
def test_fields_that_change_the_ops_cannot_differ_per_site(field, value):
    with pytest.raises(ValueError, match=rf"SiteOverride \(site 2\): field\(s\) \['{field}'\] cannot differ per site"):
        SiteOverride(2, "attention", {field: value, "tau": 0.2})


def test_bad_overrides_are_refused_by_name():
    with pytest.raises(ValueError, match="SiteOverride.site must be a site index >= 0, got -1"):
        _override(-1, tau=0.2)
    with pytest.raises(ValueError, match="SiteOverride.site must be a site index >= 0, got True"):
        _override(True, tau=0.2)
    with pytest.raises(ValueError, match="SiteOverride.kind must be one of"):
        SiteOverride(0, "mlp", {"tau": 0.2})
    with pytest.raises(ValueError, match="SiteOverride.module must be a module path or None"):
        SiteOverride(0, "attention", {"tau": 0.2}, module=3)
    with pytest.raises(ValueError, match="Policy.per_site: site 1 is overridden twice"):
        Policy(attention=BASE, per_site=(_override(1, tau=0.2), _override(1, tau=0.3)))
    with pytest.raises(ValueError, match="site 4 is a layer_norm site, but the policy does not enable layer_norm"):
        Policy(attention=BASE, per_site=(SiteOverride(4, "layer_norm", {"tau": 0.2}),))
    with pytest.raises(ValueError, match=r"Policy.per_site, site 2 \(attention\): SitePolicy.tau for criterion "
                                         r"'relaxed' must be in \(0, 1\]"):
        Policy(attention=BASE, per_site=(_override(2, criterion="relaxed", tau=2.0),))
    with pytest.raises(ValueError, match="Policy.per_site, site 5: criterion 'target' applies to softmax sites only"):
        Policy(attention=BASE, layer_norm=BASE, per_site=(SiteOverride(5, "layer_norm", {"criterion": "target"}),))
    with pytest.raises(ValueError, match="Policy.per_site must hold SiteOverride entries, got dict"):
        Policy(attention=BASE, per_site=({"site": 0, "kind": "attention", "tau": 0.2},))


@pytest.mark.parametrize("field,value", [("tau", 0.3), ("criterion", "relaxed"), ("error_scale", "mixed"),
                                         ("length_scaling", True)])
def test_a_per_site_field_for_every_site_clashes_with_per_site(field, value):
    with_per_site = Policy(attention=BASE, per_site=(_override(1, tau=LOW_TAU),))
    message = rf"{field} given for every site, but the policy has per-site rules"
    with pytest.raises(ValueError, match=message):
        Policy.from_overrides(with_per_site, **{field: value})
    with pytest.raises(ValueError, match=message):  # per_site given beside it, on a policy without
        Policy.from_overrides(Policy(attention=BASE), per_site=(_override(1, tau=LOW_TAU),), **{field: value})
    # fields that are no per-site rule apply to every kind and keep the overrides
    changed = Policy.from_overrides(with_per_site, format="m7", block_k=2)
    assert changed.per_site == with_per_site.per_site
    assert changed.site_policy("attention", 1) == SitePolicy(format="m7", block_k=2, criterion="strict", tau=LOW_TAU)
    assert changed.site_policy("attention", 0).tau == 0.1


def _round_trip_policy() -> Policy:
    return Policy(attention=SitePolicy(format="m7", criterion="strict", tau=0.1, block_k=4),
                  logits=SitePolicy(format="m7", criterion="budget", budget=0.05),
                  per_site=(SiteOverride(3, "attention", {"tau": 0.025}, module="transformer.h.3.attn"),
                            SiteOverride(0, "attention", {"criterion": "relaxed", "tau": 0.4,
                                                          "length_scaling": True, "l_ref": 64}),
                            SiteOverride(4, "logits", {"budget": 8})))


def test_the_policy_file_round_trips_per_site(tmp_path):
    policy = _round_trip_policy()
    data = policy.to_dict()
    assert data["per_site"][0] == {"site": 3, "kind": "attention", "module": "transformer.h.3.attn", "tau": 0.025}
    assert "module" not in data["per_site"][1]
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(data))
    assert load_policy_file(path) == policy
    # a calibration record beside it (as `lampc calibrate` writes) is ignored
    path.write_text(json.dumps({**data, "calibration": {"target": {"rate": 0.05}, "sites": [1, 2]}}))
    assert load_policy_file(path) == policy


@pytest.mark.parametrize("change,message", [
    (lambda d: d["attention"].update(m_bits=4), r"--policy: attention: m_bits 4 disagrees with format 'm7' \(7 bits\)"),
    (lambda d: d["per_site"][0].update(format="m4"), r"--policy: per_site: SiteOverride \(site 3\): field\(s\) "
                                                     r"\['format'\] cannot differ per site"),
    (lambda d: d["per_site"][1].pop("kind"), r"per_site entry .* needs at least site and kind"),
    (lambda d: d.update(per_site={"site": 1}), "per_site must be a list"),
    (lambda d: d["per_site"].append(dict(d["per_site"][0])), "site 3 is overridden twice"),
    (lambda d: d.update(extra=1), r"unknown key\(s\) \['extra'\]"),
])
def test_bad_policy_files_are_refused(tmp_path, change, message):
    data = _round_trip_policy().to_dict()
    change(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CliError, match=message):
        load_policy_file(path)


def test_m_bits_that_agree_with_the_format_load(tmp_path):
    data = _round_trip_policy().to_dict()
    assert data["attention"]["m_bits"] == 7  # to_dict writes it beside the format
    data["logits"].pop("m_bits")  # and it may be left out
    path = tmp_path / "ok.json"
    path.write_text(json.dumps(data))
    assert load_policy_file(path) == _round_trip_policy()


# --- on the embedded model ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded():
    from lampc.cells import CellCompiler
    from lampc.eval.sweep import load_sequences
    from lampc.models import load_model

    model, tokenizer = load_model("embedded")
    windows, _ = load_sequences(tokenizer, seq_len=64, n_seq=2, seed=1)
    return model, CellCompiler(model), windows


def _counts(compiled, windows) -> list[tuple[int, int]]:
    """(selected, visible) per site over the windows."""
    compiled.reset_stats()
    with torch.no_grad():
        compiled(windows)
    return [(s["selected"], s["visible"]) for s in compiled.stats()["sites"]]


@pytest.fixture(scope="module")
def whole(embedded):
    """The per-site counts of whole-model compiles at tau 0.1 and at LOW_TAU."""
    _, compiler, windows = embedded
    return {tau: _counts(compiler(Policy(attention=dataclasses.replace(BASE, tau=tau))), windows)
            for tau in (0.1, LOW_TAU)}


def _rules(sites) -> list[str]:
    return [s.rule for s in sites]


@pytest.mark.slow
def test_an_override_at_the_first_site_selects_what_the_whole_model_at_its_tau_does(embedded, whole):
    model, _, windows = embedded
    compiled = lampc.compile(model, Policy(attention=BASE, per_site=(_override(0, tau=LOW_TAU),)))
    assert _rules(compiled.sites) == [f"format m4 (block_k 1, emulate)  rule strict tau={t:g}"
                                      for t in (LOW_TAU, 0.1, 0.1, 0.1)]
    counts = _counts(compiled, windows)
    # site 0 sees the same inputs in both: exactly the same selection count
    assert counts[0] == whole[LOW_TAU][0] and counts[0] != whole[0.1][0]
    assert all(visible == 64 * 65 // 2 * 4 * 2 for _, visible in counts)  # causal, 4 heads, 2 windows


@pytest.mark.slow
def test_an_override_at_the_last_site_leaves_the_others_as_they_were(embedded, whole):
    _, compiler, windows = embedded
    compiled = compiler(Policy(attention=BASE, per_site=(
        SiteOverride(3, "attention", {"tau": LOW_TAU}, module=MODULES[3]),)))
    assert _rules(compiled.sites)[:3] == ["format m4 (block_k 1, emulate)  rule strict tau=0.1"] * 3
    assert _rules(compiled.sites)[3].endswith(f"rule strict tau={LOW_TAU:g}")
    counts = _counts(compiled, windows)
    assert counts[:3] == whole[0.1][:3]
    assert counts[3][0] > whole[0.1][3][0]  # a lower tau at site 3 selects more there


@pytest.mark.slow
def test_overrides_at_every_site_equal_the_whole_model_at_that_tau(embedded, whole):
    _, compiler, windows = embedded
    compiled = compiler(Policy(attention=BASE, per_site=tuple(
        SiteOverride(i, "attention", {"tau": LOW_TAU}, module=MODULES[i]) for i in range(N_SITES))))
    assert _counts(compiled, windows) == whole[LOW_TAU]


@pytest.mark.slow
def test_a_policy_file_with_per_site_compiles_to_the_same_selection(embedded, tmp_path):
    _, compiler, windows = embedded
    policy = Policy(attention=BASE, per_site=(_override(1, tau=LOW_TAU), _override(2, criterion="relaxed", tau=0.2)))
    path = tmp_path / "p.json"
    path.write_text(json.dumps(policy.to_dict()))
    loaded = load_policy_file(path)
    assert loaded == policy
    from_file, in_memory = compiler(loaded), compiler(policy)
    assert _rules(from_file.sites)[2].endswith("rule relaxed tau=0.2")
    assert _counts(from_file, windows) == _counts(in_memory, windows)


@pytest.mark.slow
@pytest.mark.parametrize("policy,message", [
    (Policy(attention=BASE, per_site=(_override(1, tau=0.2), _override(9, tau=0.2))),
     r"Policy.per_site names site\(s\) \[9\], but this model has 4 site\(s\) of the enabled kinds, numbered 0 to 3"),
    (Policy(attention=BASE, layer_norm=BASE, per_site=(SiteOverride(0, "layer_norm", {"tau": 0.2}),)),
     "site 0 is the attention site of transformer.h.0.attn in this model, but its override is for the layer_norm "
     "site of any module"),
    (Policy(attention=BASE, layer_norm=BASE, per_site=(SiteOverride(5, "attention", {"tau": 0.2}),)),
     "site 5 is the layer_norm site of transformer.h.0.mlp.c_proj in this model, but its override is for the "
     "attention site"),
    (Policy(attention=BASE, per_site=(SiteOverride(1, "attention", {"tau": 0.2}, module=MODULES[2]),)),
     "site 1 is the attention site of transformer.h.1.attn in this model, but its override is for the attention "
     "site of transformer.h.2.attn"),
], ids=["out-of-range", "kind", "kind-linear", "module"])
def test_compile_refuses_overrides_the_model_does_not_fit(embedded, policy, message):
    _, compiler, _ = embedded
    with pytest.raises(ValueError, match=message):
        compiler(policy)


@pytest.mark.slow
def test_compile_refuses_a_tau_for_every_site_beside_per_site(embedded):
    model, _, _ = embedded
    with pytest.raises(ValueError, match="tau given for every site, but the policy has per-site rules"):
        lampc.compile(model, Policy(attention=BASE, per_site=(_override(1, tau=LOW_TAU),)), tau=0.3)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:lampc. 1 layer_norm candidate")  # GPT-2's first ln_1 follows no linear layer
def test_a_layer_norm_site_takes_its_override(embedded):
    _, compiler, windows = embedded
    policy = Policy(attention=BASE, layer_norm=BASE, per_site=(
        SiteOverride(6, "layer_norm", {"tau": 0.004}, module="transformer.h.1.attn.c_proj"),))
    compiled = compiler(policy)
    rules = {s.index: s.rule for s in compiled.sites}
    assert rules[6].endswith("rule strict tau=0.004") and rules[5].endswith("rule strict tau=0.1")
    plain = compiler(Policy(attention=BASE, layer_norm=BASE))
    counts, before = _counts(compiled, windows), _counts(plain, windows)
    # numbered attention 0-3, then the layer_norm sites 4, 5, 6, ...; run in layer order: 0, 4, 5, 1, 6, 7, 2, ...
    assert [counts[i] for i in (0, 4, 5, 1)] == [before[i] for i in (0, 4, 5, 1)]  # upstream of site 6
    assert counts[6][0] > before[6][0]


# --- respec_sites ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_respec_changes_the_rule_in_place(embedded, whole):
    from lampc.passes.respec import respec_sites

    _, compiler, windows = embedded
    compiled = compiler(Policy(attention=BASE))
    assert _counts(compiled, windows) == whole[0.1]
    respec_sites(compiled.graph_module, {0: dataclasses.replace(BASE, tau=LOW_TAU)})
    per_site = compiler(Policy(attention=BASE, per_site=(_override(0, tau=LOW_TAU),)))
    assert _counts(compiled, windows) == _counts(per_site, windows)
    respec_sites(compiled.graph_module, {i: dataclasses.replace(BASE, tau=LOW_TAU) for i in range(N_SITES)})
    assert _counts(compiled, windows) == whole[LOW_TAU]
    respec_sites(compiled.graph_module, {i: BASE for i in range(N_SITES)})  # and back
    assert _counts(compiled, windows) == whole[0.1]


@pytest.mark.slow
def test_respec_refuses_structural_changes_and_missing_sites(embedded):
    from lampc.passes.respec import respec_sites

    _, compiler, _ = embedded
    compiled = compiler(Policy(attention=BASE))
    with pytest.raises(ValueError, match=r"respec_sites: site 1 would change \['fused'\], which changes its ops"):
        respec_sites(compiled.graph_module, {1: dataclasses.replace(BASE, fused=True)})
    with pytest.raises(ValueError, match=r"respec_sites: site 2 would change \['block_k'\]"):
        respec_sites(compiled.graph_module, {2: dataclasses.replace(BASE, block_k=8)})
    with pytest.raises(ValueError, match=r"respec_sites: no site \[4, 7\] in this graph"):
        respec_sites(compiled.graph_module, {0: BASE, 4: BASE, 7: BASE})


@pytest.mark.slow
def test_a_refused_respec_changes_nothing(embedded, whole):
    from lampc.passes.respec import respec_sites

    _, compiler, windows = embedded
    compiled = compiler(Policy(attention=BASE))
    specs = [tuple(n.args) for n in compiled.graph_module.graph.nodes]
    low = dataclasses.replace(BASE, tau=LOW_TAU)
    with pytest.raises(ValueError, match="would change"):  # site 0 is fine, site 1 is not: neither changes
        respec_sites(compiled.graph_module, {0: low, 1: dataclasses.replace(BASE, fused=True)})
    with pytest.raises(ValueError, match="no site"):
        respec_sites(compiled.graph_module, {0: low, 9: low})
    assert [tuple(n.args) for n in compiled.graph_module.graph.nodes] == specs
    respec_sites(compiled.graph_module, {3: BASE})  # a later call (no change at site 3) recompiles the graph
    assert _counts(compiled, windows) == whole[0.1]


# --- the cached step graphs of generate -----------------------------------------------------------------------------


def _step_specs(compiled) -> dict[str, dict[int, set[float]]]:
    """Per step graph: site -> the taus in the rule arguments of its site ops (and in their tags)."""
    from lampc.config import Rule
    from lampc.ops import SITE_OPS

    out = {}
    for kind, gm in compiled.step_graphs.graphs.items():
        taus: dict[int, set[float]] = {}
        for node in gm.graph.nodes:
            tag = node.meta.get("lampc")
            if node.op == "call_function" and node.target in SITE_OPS and tag is not None:
                names = [a.name for a in node.target._schema.arguments]
                taus.setdefault(tag.site, set()).add(tag.config.rule.tau)
                if "rule" in names:
                    taus[tag.site].add(Rule.from_text(node.args[names.index("rule")]).tau)
        out[kind] = taus
    return out


@pytest.mark.slow
def test_generate_runs_the_per_site_rules_in_prefill_and_decode(embedded):
    _, compiler, windows = embedded
    prompt = windows[:1, :12]
    per_site = compiler(Policy(attention=BASE, per_site=(
        SiteOverride(3, "attention", {"tau": LOW_TAU}, module=MODULES[3]),)))
    tokens = per_site.generate(prompt, max_new_tokens=3)
    assert tokens.shape == (1, 15)
    assert set(per_site.step_graphs.graphs) == {"prefill", "decode_1"}
    for kind, result in per_site.step_graphs.results.items():
        assert [s.rule.rsplit("tau=", 1)[1] for s in result.sites] == ["0.1", "0.1", "0.1", "0.02"], kind
    for kind, taus in _step_specs(per_site).items():
        assert taus == {0: {0.1}, 1: {0.1}, 2: {0.1}, 3: {LOW_TAU}}, kind
    # every site at LOW_TAU through per_site decodes exactly as the whole model at LOW_TAU
    every = compiler(Policy(attention=BASE, per_site=tuple(_override(i, tau=LOW_TAU) for i in range(N_SITES))))
    plain = compiler(Policy(attention=dataclasses.replace(BASE, tau=LOW_TAU)))
    runs = {}
    for name, compiled in (("per_site", every), ("whole", plain)):
        compiled.reset_stats()
        runs[name] = (compiled.generate(prompt, max_new_tokens=3),
                      [(s["selected"], s["visible"]) for s in compiled.stats("prefill")["sites"]],
                      [(s["selected"], s["visible"]) for s in compiled.stats("decode")["sites"]])
    assert torch.equal(runs["per_site"][0], runs["whole"][0])
    assert runs["per_site"][1:] == runs["whole"][1:]
    assert all(visible > 0 for _, visible in runs["whole"][2])  # the decode steps did run at every site
