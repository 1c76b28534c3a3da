"""Expand scaled_dot_product_attention into its math form, so its softmax becomes an attention site.

    before                                          after
    o = sdpa(q, k, v, mask, scale=c)                k_t = transpose(k, -2, -1)
                                                    s = matmul(q, k_t) * c
                                                    s = s + where(mask, 0, finfo.min)   # bool mask; float: + mask
                                                    p = softmax(s, -1) * any(mask, -1)  # 0 in empty rows
                                                    o = matmul(p, v)

GQA (`enable_gqa=True`) repeats K and V heads as repeat_kv does; `is_causal=True` builds the causal mask from
the scores' shape (top-left aligned, as torch's SDPA). A dropout probability other than 0 is left alone (skip).
"""

from __future__ import annotations

import math

import torch
from torch import fx

from ..graph_view import module_path
from .graph import insert_call
from .result import PassResult, Skip

aten = torch.ops.aten
SDPA_OPS = (aten.scaled_dot_product_attention.default,)
MASKED_VALUE = torch.finfo(torch.float32).min


def expand_sdpa(gm: fx.GraphModule) -> PassResult:
    skips, changed = [], False
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in SDPA_OPS:
            reason = _expand(gm.graph, node)
            if reason:
                skips.append(Skip("attention", module_path(node), node.name, reason))
            else:
                changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()
    return PassResult(gm, changed, [], skips)


def _sdpa_arguments(node: fx.Node) -> dict:
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    defaults = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}
    found = dict(defaults)
    found.update(zip(names, node.args))
    found.update(node.kwargs)
    return found


def _expand(graph: fx.Graph, node: fx.Node) -> str | None:
    a = _sdpa_arguments(node)
    q, k, v, mask = a["query"], a["key"], a["value"], a["attn_mask"]
    if a["dropout_p"] not in (0, 0.0):
        return f"scaled_dot_product_attention with dropout_p={a['dropout_p']} (lampc compiles inference graphs)"
    q_val, k_val = q.meta.get("val"), k.meta.get("val")
    if q_val is None or k_val is None or q_val.dtype != torch.float32:
        return "scaled_dot_product_attention without float32 shape information"
    scale = a["scale"] if a["scale"] is not None else 1.0 / math.sqrt(q_val.shape[-1])
    with graph.inserting_before(node):
        if a["enable_gqa"]:
            groups = q_val.shape[-3] // k_val.shape[-3]
            k = insert_call(graph, aten.repeat_interleave.self_int, (k, groups, -3), like=node)
            v = insert_call(graph, aten.repeat_interleave.self_int, (v, groups, -3), like=node)
        k_t = insert_call(graph, aten.transpose.int, (k, -2, -1), like=node)
        scores = insert_call(graph, aten.matmul.default, (q, k_t), like=node)
        scores = insert_call(graph, aten.mul.Tensor, (scores, float(scale)), like=node)
        additive, allowed = _additive_mask(graph, node, mask, scores, a["is_causal"])
        if additive is not None:
            scores = insert_call(graph, aten.add.Tensor, (scores, additive), like=node)
        probs = insert_call(graph, aten.softmax.int, (scores, -1), like=node)
        if allowed is not None:  # SDPA gives 0 (not a uniform row) where a boolean mask allows no key
            any_key = insert_call(graph, aten.any.dim, (allowed, -1, True), like=node)
            probs = insert_call(graph, aten.mul.Tensor, (probs, any_key), like=node)
        out = insert_call(graph, aten.matmul.default, (probs, v), like=node)
    node.replace_all_uses_with(out)
    graph.erase_node(node)
    return None


def _additive_mask(graph, node, mask, scores, is_causal):
    """(additive mask, boolean allowed-mask or None): 0 where attention is allowed, finfo(float32).min where not."""
    allowed = None
    if is_causal:
        ones = insert_call(graph, aten.ones_like.default, (scores,), {"dtype": torch.bool}, like=node)
        allowed = insert_call(graph, aten.tril.default, (ones,), like=node)
    if mask is not None and mask.meta.get("val") is not None and mask.meta["val"].dtype == torch.bool:
        allowed = mask if allowed is None else insert_call(graph, aten.logical_and.default, (allowed, mask), like=node)
    elif mask is not None:
        if allowed is None:
            return mask, None
        masked = _bool_to_additive(graph, node, allowed)
        return insert_call(graph, aten.add.Tensor, (masked, mask), like=node), allowed
    return (None, None) if allowed is None else (_bool_to_additive(graph, node, allowed), allowed)


def _bool_to_additive(graph, node, allowed):
    blocked = insert_call(graph, aten.logical_not.default, (allowed,), like=node)
    return insert_call(graph, aten.mul.Tensor, (blocked, MASKED_VALUE), like=node)
