"""The logits site: softmax ∘ lm_head, the next-token distribution.

The logits leave the graph, so no softmax node is there to match: the policy states that one follows (that is
what a language model's logits are for). The rules are the attention rules over the vocabulary, with no mask:

    before                          after
    logits = linear(h, W)           W_t = t(W)
    return logits                   s_hat = lampc.lowp_scores(h, W_t, 1.0, policy)
                                    sel   = lampc.lamp_select(s_hat, h, W_t, 1.0, None, False, policy, site)
                                    logits = lampc.recompute_scores(s_hat, sel, h, W_t, 1.0, policy)
"""

from __future__ import annotations

import torch
from torch import fx

from ..policy import SitePolicy
from .attention import insert_softmax_lookahead
from .graph import insert_call, module_path
from .linear_sites import _through_transparent, linear_producer
from .result import PassResult, Site, Skip

aten = torch.ops.aten


def find_logits(gm: fx.GraphModule):
    """The linear producer of the first graph output (the logits), or a skip."""
    output = next(n for n in gm.graph.nodes if n.op == "output")
    flat = output.args[0]
    first = flat[0] if isinstance(flat, (list, tuple)) and flat else flat
    if not isinstance(first, fx.Node):
        return Skip("logits", "", "output", "the model's first output is not a graph value")
    source = _through_transparent(first)
    producer = linear_producer(source)
    if producer is None:
        return Skip("logits", module_path(source), source.name,
                    f"the logits come from {source.target if source.op == 'call_function' else source.op}, not a linear layer")
    if producer.bias is not None:
        return Skip("logits", module_path(source), source.name, "lm_head with a bias is not supported")
    return producer


def rewrite_logits(gm: fx.GraphModule, policy: SitePolicy, index: int) -> PassResult:
    found = find_logits(gm)
    if isinstance(found, Skip):
        return PassResult(gm, False, [], [found])
    producer, graph = found, gm.graph
    with graph.inserting_before(producer.node):
        w_t = producer.weight
        if producer.transposed:
            w_t = insert_call(graph, aten.t.default, (producer.weight,), like=producer.node, name=f"lm_head_t_{index}")
            w_t.meta["lampc_site"] = index
        nodes = insert_softmax_lookahead(gm, producer.x, w_t, 1.0, None, policy.to_spec(), index,
                                         like=producer.node, per_head=False)
    producer.node.replace_all_uses_with(nodes[2])
    graph.erase_node(producer.node)
    graph.lint()
    gm.recompile()
    site = Site(index, "logits", module_path(nodes[0]), "linear", "softmax (next token)", policy.summary,
                tuple(n.name for n in nodes))
    return PassResult(gm, True, [site], [])
