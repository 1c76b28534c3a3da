"""Change the rule at chosen sites of a rewritten graph, in place: each site op's rule (and producer) text is replaced.

    before                                              after respec_sites(gm, {3: strict tau=0.02})
    s_hat = lampc.lowp_scores(q, k_t, c, 'emulate m4')  s_hat = lampc.lowp_scores(q, k_t, c, 'emulate m4')
    sel   = lampc.lamp_select(…, 'strict tau=0.1', …, 3) sel   = lampc.lamp_select(…, 'strict tau=0.02', …, 3)
    node.meta["lampc"].config.rule: strict tau=0.1      strict tau=0.02

Calibration (lampc/eval/calibrate.py) uses it to try one rule per site without capturing the model again. Only the
rule may change (Policy's PER_SITE_FIELDS), and the producer's format: the site's ops stay the same ops. What the
passes found at a site (lampc/config/facts.py: soft cap, bias) is kept. The node tags are updated with the ops'
arguments, so `SitePolicy.from_config(tag.config)` is what the site runs. Users set per-site rules with
`Policy.per_site`, at compile time; `running_policy(gm, policy)` is the Policy that compiles to the rules a graph
runs (calibration sets it as the compiled model's policy, and writes it).
"""

from __future__ import annotations

import dataclasses

from torch import fx

from ..ops import SITE_OPS
from ..policy import PER_SITE_FIELDS, SET_BY_PASSES, Policy, SiteOverride, SitePolicy

CHANGEABLE = PER_SITE_FIELDS + ("format",)


def respec_sites(gm: fx.GraphModule, policies: dict[int, SitePolicy]) -> dict[int, SitePolicy]:
    """Give site i the rule of policies[i] (ValueError for a site the graph lacks or a structural change; the graph
    is then left as it was: every change is checked before any is made). Returns each changed site's SitePolicy as
    the graph now runs it (with the facts its matcher found)."""
    found, edits = {}, []
    for node in gm.graph.nodes:
        tag = node.meta.get("lampc")
        if node.op != "call_function" or node.target not in SITE_OPS or tag is None or tag.site not in policies:
            continue
        old = SitePolicy.from_config(tag.config)
        new = dataclasses.replace(policies[tag.site], softcap=old.softcap, biased=old.biased)
        changed = [f.name for f in dataclasses.fields(SitePolicy)
                   if getattr(old, f.name) != getattr(new, f.name) and f.name not in CHANGEABLE]
        if old.rule.draws != new.rule.draws:  # the random baseline's draws are a node of their own (lampc_draws_<i>)
            changed.append(f"criterion ({old.criterion} -> {new.criterion}: the draws)")
        if changed:
            raise ValueError(f"respec_sites: site {tag.site} would change {changed}, which changes its ops; only "
                             f"{', '.join(CHANGEABLE)} can change in place")
        names = [argument.name for argument in node.target._schema.arguments]
        texts = new.config.texts
        args = tuple(getattr(texts, name) if name in ("producer", "rule") else value
                     for name, value in zip(names, node.args))
        edits.append((node, args, dataclasses.replace(tag, config=new.config)))
        found[tag.site] = new
    missing = sorted(set(policies) - set(found))
    if missing:
        raise ValueError(f"respec_sites: no site {missing} in this graph")
    for node, args, tag in edits:
        node.args = args
        node.meta["lampc"] = tag
    for node in gm.graph.nodes:  # the site's other nodes (operands, tap) carry its configuration too
        tag = node.meta.get("lampc")
        if tag is not None and tag.site in found and tag.config != found[tag.site].config:
            node.meta["lampc"] = dataclasses.replace(tag, config=found[tag.site].config)
    gm.recompile()
    return found


def site_tags(gm: fx.GraphModule) -> dict:
    """{site: the SiteTag of its first site op} over `gm`, in site order (lowered matmuls, which are no site, left
    out)."""
    tags = {}
    for node in gm.graph.nodes:
        tag = node.meta.get("lampc")
        if node.op == "call_function" and node.target in SITE_OPS and tag is not None and tag.site is not None:
            tags.setdefault(tag.site, tag)
    return dict(sorted(tags.items()))


def running_policy(gm: fx.GraphModule, policy: Policy) -> Policy:
    """The Policy that compiles to the rules `gm` runs: `policy`'s site kinds, with one SiteOverride (the site's
    kind and module) for each site whose rule differs from its kind's, read from the node tags; `policy`'s own
    per-site rules are replaced. ValueError naming a site that differs from its kind in more than its rule (a
    format changed in place): no Policy compiles to that."""
    overrides = []
    for site, tag in site_tags(gm).items():
        base, runs = getattr(policy, tag.kind), SitePolicy.from_config(tag.config)
        differ = [f.name for f in dataclasses.fields(SitePolicy)
                  if f.name not in SET_BY_PASSES and getattr(runs, f.name) != getattr(base, f.name)]
        other = [name for name in differ if name not in PER_SITE_FIELDS]
        if other:
            raise ValueError(f"running_policy: site {site} ({tag.kind}) runs {other} other than its kind's policy; a "
                             f"per-site rule sets {', '.join(PER_SITE_FIELDS)} only")
        if differ:
            overrides.append(SiteOverride(site, tag.kind, {name: getattr(runs, name) for name in differ},
                                          module=tag.module or None))
    return dataclasses.replace(policy, per_site=tuple(overrides))
