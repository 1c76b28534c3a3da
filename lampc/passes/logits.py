"""The logits site: softmax ∘ lm_head, the next-token distribution.

The logits leave the graph, so no softmax node is there to match: the policy states that one follows (that is
what a language model's logits are for). The rules are the attention rules over the vocabulary, with no mask:

    before                          after
    logits = linear(h, W)           W_t = t(W)
    return logits                   s_hat = lampc.lowp_scores(h, W_t, 1.0, producer)
                                    sel   = lampc.lamp_select(s_hat, h, W_t, 1.0, None, False, ..., site)
                                    logits = lampc.recompute_scores(s_hat, sel, h, W_t, 1.0, execution)

Under a native producer the lm_head weight is cast once, by a module of the graph (emit_softmax_ops prepares it):
`lowp_scores(h, W_t, 1.0, 'native bf16', k_low=lampc_cast_bf16_lm_head_weight(W_t))`.
"""

from __future__ import annotations

import torch
from torch import fx

from ..graph_view import module_path
from ..policy import SitePolicy
from ..site_kinds import LOGITS
from .driver import Emission, Emitted, SiteKind
from .linear_sites import LinearProducer, through_transparent, linear_producer
from .result import Skip
from .softmax_site import emit_softmax_ops

aten = torch.ops.aten


def find_logits(gm: fx.GraphModule) -> tuple[list[LinearProducer], list[Skip]]:
    """The linear producer of the first graph output (the logits), or a skip."""
    found = _logits_producer(gm)
    return ([], [found]) if isinstance(found, Skip) else ([found], [])


def _logits_producer(gm: fx.GraphModule) -> LinearProducer | Skip:
    output = next(n for n in gm.graph.nodes if n.op == "output")
    flat = output.args[0]
    first = flat[0] if isinstance(flat, (list, tuple)) and flat else flat
    if not isinstance(first, fx.Node):
        return Skip("logits", "", "output", "the model's first output is not a graph value")
    source = through_transparent(first)
    producer = linear_producer(source)
    if producer is None:
        return Skip("logits", module_path(source), source.name,
                    f"the logits come from {source.target if source.op == 'call_function' else source.op}, not a linear layer")
    if producer.bias is not None:
        return Skip("logits", module_path(source), source.name, "lm_head with a bias is not supported")
    return producer


def logits_site(policy: SitePolicy) -> SiteKind:
    """The logits site kind under `policy`."""
    return SiteKind(LOGITS, find_logits, lambda em, producer: _emit(em, producer, policy),
                    anchor=lambda producer: producer.node)


def _emit(em: Emission, producer: LinearProducer, policy: SitePolicy) -> Emitted:
    policy = em.site_policy(LOGITS, policy)
    em.configure(policy)  # the transposed weight below carries the site's configuration too
    with em.graph.inserting_before(producer.node):
        w_t = producer.weight
        if producer.transposed:
            w_t = em.call(aten.t.default, (producer.weight,), role="operand", name=f"lm_head_t_{em.index}")
        new = emit_softmax_ops(em, producer.x, w_t, 1.0, None, policy)
    return Emitted({producer.node: new.scores}, (new.first, new.selection, new.scores), new.selection, None,
                   tap_after=new.last, erase=(producer.node,), producer="linear", consumer="softmax (next token)",
                   rule=policy.summary)
