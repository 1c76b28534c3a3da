"""A calibrated model's policy is the one that compiles to its graph: calibration changes the rule of each site in
place (respec_sites), and the compiled model's `policy` (and the file `lampc calibrate` writes) then holds one
per-site rule for each, so that `lampc.compile(model, compiled.policy)` rebuilds the same graph, op arguments and
node tags site by site, with the same logits; the step graphs of that compile run the calibrated rules too."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import fx

import lampc
from lampc.cli_policy import load_policy_file
from lampc.ops import SITE_OPS
from lampc.passes.respec import respec_sites, running_policy, site_tags
from lampc.policy import Policy, SitePolicy
from tests.tiny_models import tiny_gpt2

SEQ_LEN, N_SEQ = 32, 2


def _site_ops(gm: fx.GraphModule) -> list[tuple]:
    """Every site op of `gm`, in graph order: (site, op, its arguments that are no graph value, its tag)."""
    return [(n.meta["lampc"].site, n.target, tuple(a for a in n.args if not isinstance(a, fx.Node)), n.meta["lampc"])
            for n in gm.graph.nodes if n.op == "call_function" and n.target in SITE_OPS and "lampc" in n.meta]


@pytest.fixture(scope="module")
def calibrated():
    from lampc.eval.calibrate import Calibrator

    model = tiny_gpt2(n_layer=3, score_gain=4.0)
    token_ids = torch.randint(0, 97, (SEQ_LEN * N_SEQ * 4,), generator=torch.Generator().manual_seed(0))
    calibrator = Calibrator(model, token_ids=token_ids, seq_len=SEQ_LEN, n_seq=N_SEQ, progress=False,
                            kinds=["attention", "logits"])
    return model, calibrator, calibrator.for_rate(0.1)


@pytest.mark.slow
def test_the_calibrated_models_policy_rebuilds_its_graph(calibrated):
    model, calibrator, result = calibrated
    compiled = calibrator.compiled
    assert compiled.policy.per_site and compiled.policy == result.policy  # unfused: the policy written is its own
    taus = {o.site: dict(o.fields)["tau"] for o in compiled.policy.per_site}
    assert taus == {s["site"]: s["tau"] for s in result.sites}
    rebuilt = lampc.compile(model, compiled.policy, steps="none")
    assert _site_ops(rebuilt.graph_module) == _site_ops(compiled.graph_module)
    assert [s.rule for s in rebuilt.sites] == [s.rule for s in compiled.sites]
    ids = torch.randint(0, 97, (2, SEQ_LEN), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(rebuilt(ids).logits, compiled(ids).logits)


@pytest.mark.slow
def test_the_written_policy_is_the_models_and_its_step_graphs_run_it(calibrated, tmp_path):
    model, calibrator, result = calibrated
    assert load_policy_file(result.write(tmp_path / "calibrated.json")) == calibrator.compiled.policy
    full = {site: tag.config for site, tag in site_tags(calibrator.compiled.graph_module).items()}
    compiled = lampc.compile(model, result.policy)  # the step graphs (generate, use_cache) are built here too
    compiled.step_graphs.build_all()  # built already unless compile left them lazy
    assert set(compiled.step_graphs.graphs) >= {"prefill", "decode"}
    for kind, graph in compiled.step_graphs.graphs.items():
        assert {site: tag.config for site, tag in site_tags(graph).items()} == full, kind


def test_running_policy_reads_the_rules_from_the_tags_and_refuses_what_no_policy_compiles_to():
    model = tiny_gpt2()
    base = Policy.from_overrides(None, kinds=["attention", "logits"])
    compiled = lampc.compile(model, base, steps="none")
    assert running_policy(compiled.graph_module, base) == base  # nothing changed: no per-site rule
    low = dataclasses.replace(base.attention, tau=0.02)
    respec_sites(compiled.graph_module, {1: low, 2: dataclasses.replace(base.logits, criterion="uniform", tau=None)})
    policy = running_policy(compiled.graph_module, base)
    assert [(o.site, o.kind, o.module, dict(o.fields)) for o in policy.per_site] == [
        (1, "attention", "transformer.h.1.attn", {"tau": 0.02}), (2, "logits", "lm_head", {"criterion": "uniform",
                                                                                            "tau": None})]
    assert _site_ops(lampc.compile(model, policy, steps="none").graph_module) == _site_ops(compiled.graph_module)
    respec_sites(compiled.graph_module, {0: SitePolicy(format="fp32")})
    with pytest.raises(ValueError, match=r"running_policy: site 0 \(attention\) runs \['format'\] other than its "
                                         r"kind's policy"):
        running_policy(compiled.graph_module, base)
