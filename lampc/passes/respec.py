"""Change the rule at chosen sites of a rewritten graph, in place: each site op's policy spec is replaced.

    before                                              after respec_sites(gm, {3: strict tau=0.02})
    s_hat = lampc.lowp_scores(q, k_t, c, "… tau=0.1 …")  s_hat = lampc.lowp_scores(q, k_t, c, "… tau=0.02 …")
    sel   = lampc.lamp_select(…, "… tau=0.1 …", 3)       sel   = lampc.lamp_select(…, "… tau=0.02 …", 3)

Calibration (lampc/eval/calibrate.py) uses it to try one rule per site without capturing the model again. Only the
rule may change (Policy's PER_SITE_FIELDS, and the format: the site's ops stay the same ops); what the passes set
at a site (soft cap, bias) is kept. Users set per-site rules with `Policy.per_site`, at compile time.
"""

from __future__ import annotations

import dataclasses

from torch import fx

from ..ops import SITE_OPS
from ..policy import PER_SITE_FIELDS, SET_BY_PASSES, SitePolicy

CHANGEABLE = PER_SITE_FIELDS + ("format",)


def respec_sites(gm: fx.GraphModule, policies: dict[int, SitePolicy]) -> None:
    """Give site i the rule of policies[i] (ValueError for a site the graph lacks or a structural change; the graph
    is then left as it was: every change is checked before any is made)."""
    found, edits = set(), []
    for node in gm.graph.nodes:
        tag = node.meta.get("lampc")
        if node.op != "call_function" or node.target not in SITE_OPS or tag is None or tag.site not in policies:
            continue
        names = [argument.name for argument in node.target._schema.arguments]
        at = names.index("policy")
        old = SitePolicy.from_spec(node.args[at])
        new = dataclasses.replace(policies[tag.site], **{name: getattr(old, name) for name in SET_BY_PASSES})
        changed = [f.name for f in dataclasses.fields(SitePolicy)
                   if getattr(old, f.name) != getattr(new, f.name) and f.name not in CHANGEABLE]
        if changed:
            raise ValueError(f"respec_sites: site {tag.site} would change {changed}, which changes its ops; only "
                             f"{', '.join(CHANGEABLE)} can change in place")
        edits.append((node, (*node.args[:at], new.to_spec(), *node.args[at + 1:])))
        found.add(tag.site)
    missing = sorted(set(policies) - found)
    if missing:
        raise ValueError(f"respec_sites: no site {missing} in this graph")
    for node, args in edits:
        node.args = args
    gm.recompile()
