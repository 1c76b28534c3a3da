"""The LAMP ops of a softmax site (attention, logits), and the export-time unfusing of the fused form.

Unfused, one named op per LAMP step; fused (`SitePolicy.fused`), one op over one score buffer:

    unfused                                                      fused
    s_hat = lampc.lowp_scores(q, k_t, scale, producer)           both = lampc.lamp_scores(q, k_t, scale, mask,
    sel   = lampc.lamp_select(s_hat, q, k_t, scale, mask,            False, producer, rule, facts, execution, site)
              False, producer, rule, facts, execution, site)     s    = both[0]
    s     = lampc.recompute_scores(s_hat, sel, q, k_t, scale,    sel  = both[1]
                                   execution)

(producer, rule, facts, execution: the texts of the site's configuration parts, lampc/config/.)

`unfuse_sites` (a site kind that creates no site: it keeps each site's index) turns the fused form back into the
unfused one, which has the same values and an ONNX translation.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import fx

from .. import ops
from ..policy import SitePolicy
from ..site_kinds import UNFUSE
from .driver import Emission, Emitted, SiteKind, rewrite_sites


@dataclass(frozen=True)
class SoftmaxOps:
    first: fx.Node  # lowp_scores, or the fused op
    selection: fx.Node
    scores: fx.Node  # the recomputed scores

    @property
    def last(self) -> fx.Node:
        """The last op inserted (the statistics tap goes after it)."""
        return self.selection if self.first.target is torch.ops.lampc.lamp_scores.default else self.scores


def emit_softmax_ops(em: Emission, q, k_t, scale: float, mask, policy: SitePolicy, *,
                     fused: bool | None = None, is_causal: bool = False, draws: tuple = (),
                     prepared: dict | None = None) -> SoftmaxOps:
    """Insert a softmax site's ops at the insertion point: fused or not as the policy says, unless `fused` is given
    (the unfusing keeps the policy, whose `fused` also tells lamp_select how to compute the same selection).
    draws: the selection's draws node (the unfusing keeps the fused op's); by default a new one where the rule draws.
    prepared: the producer's form of k_t, {"k_low": node} (the unfusing keeps the fused op's); by default prepared
    here when k_t is a weight (the logits site's lm_head; Emission.prepare_weight)."""
    (producer, rule, facts, execution), index, lampc = em.configure(policy), em.index, torch.ops.lampc
    draws = draws or em.draws(policy, q, k_t)  # (lampc_draws_<index>(q, k_t),) at a random-baseline site, else ()
    prepared = em.prepare_weight(k_t, "k_low") if prepared is None else prepared  # {} for attention's keys
    if policy.fused if fused is None else fused:
        both = em.call(lampc.lamp_scores.default, (q, k_t, scale, mask, is_causal, producer, rule, facts, execution,
                                                   index, *draws), prepared, role="fused", name=f"site_{index}")
        scores = em.call(operator.getitem, (both, 0), role="recompute", name=f"scores_{index}")
        selection = em.call(operator.getitem, (both, 1), role="selection", name=f"selection_{index}")
        return SoftmaxOps(both, selection, scores)
    s_hat = em.call(lampc.lowp_scores.default, (q, k_t, scale, producer), prepared, role="producer",
                    name=f"scores_lp_{index}")
    selection = em.call(lampc.lamp_select.default,
                        (s_hat, q, k_t, scale, mask, is_causal, producer, rule, facts, execution, index, *draws),
                        role="selection", name=f"selection_{index}")
    scores = em.call(lampc.recompute_scores.default, (s_hat, selection, q, k_t, scale, execution),
                     role="recompute", name=f"scores_{index}")
    return SoftmaxOps(s_hat, selection, scores)


def _find_fused(gm: fx.GraphModule):
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in ops.FUSED_SITE_OPS], []


def _draws_of(node: fx.Node) -> tuple:
    """The draws node a site op was given (its `draws` argument, by position or keyword), as a 0- or 1-tuple."""
    at = [argument.name for argument in node.target._schema.arguments].index("draws")
    value = node.args[at] if len(node.args) > at else node.kwargs.get("draws")
    return () if value is None else (value,)


def _emit_unfused(em: Emission, fused: fx.Node) -> Emitted:
    q, k_t, scale, mask, is_causal = fused.args[:5]
    em.kind = fused.meta["lampc"].kind  # the site's own kind (attention, logits), not the unfusing's
    getitems = {user.args[1]: user for user in fused.users}
    with em.graph.inserting_before(fused):
        new = emit_softmax_ops(em, q, k_t, scale, mask, SitePolicy.from_config(fused.meta["lampc"].config),
                               fused=False, is_causal=is_causal, draws=_draws_of(fused),
                               prepared={k: v for k, v in fused.kwargs.items() if k == "k_low"})
    replacements = {getitems[0]: new.scores} if 0 in getitems else {}
    if 1 in getitems:
        replacements[getitems[1]] = new.selection
    return Emitted(replacements, (new.first, new.selection, new.scores), erase=(*getitems.values(), fused))


UNFUSE_SITES = SiteKind(UNFUSE, _find_fused, _emit_unfused, anchor=lambda fused: fused,
                  index_of=lambda fused: fused.meta["lampc"].site)
"""The fused softmax sites back in their three-op form: same values (tests/test_fused_site.py), and ONNX has a
translation for each op. It creates no site: the ops keep the fused op's index."""


def unfuse_sites(gm: fx.GraphModule) -> int:
    """Replace every fused site op by the three unfused ops; returns the number of sites unfused."""
    count = len(_find_fused(gm)[0])
    rewrite_sites(gm, [UNFUSE_SITES])
    return count
