"""Lower every remaining matmul (sites="all"): the deployment case, where no producer stays in FP32.

Producers that are no site (e.g. the QKV projection, attention-weights @ V) run in the given format with no
look-ahead:

    before                          after
    y = addmm(b, x, W)              y = lampc.lowp_matmul(x, W, b, policy)
    o = matmul(p, v)                o = lampc.lowp_matmul(p, v, None, policy)
    z = linear(x, W, b)             z = lampc.lowp_matmul(x, t(W), b, policy)
"""

from __future__ import annotations

import torch
from torch import fx

from ..policy import SitePolicy
from .graph import insert_call, module_path
from .result import PassResult

aten = torch.ops.aten
MATMUL_OPS = (aten.matmul.default, aten.mm.default, aten.bmm.default, aten.addmm.default, aten.linear.default)


def _operands(node: fx.Node):
    """(x, w, bias, transposed) of a matmul-like node."""
    if node.target == aten.addmm.default:
        bias, x, w = node.args[:3]
        return x, w, bias, False
    if node.target == aten.linear.default:
        return node.args[0], node.args[1], (node.args[2] if len(node.args) > 2 else None), True
    return node.args[0], node.args[1], None, False


def _is_float32(node: fx.Node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.dtype == torch.float32


def lower_all_matmuls(gm: fx.GraphModule, policy: SitePolicy) -> PassResult:
    """Replace every FP32 matmul-like node left in the graph by lampc.lowp_matmul in `policy`'s format."""
    spec, graph, lowered = policy.to_spec(), gm.graph, 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in MATMUL_OPS or not _is_float32(node):
            continue
        if node.target == aten.addmm.default and (node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1):
            continue
        x, w, bias, transposed = _operands(node)
        with graph.inserting_before(node):
            if transposed:
                w = insert_call(graph, aten.t.default, (w,), like=node)
            low = insert_call(graph, torch.ops.lampc.lowp_matmul.default, (x, w, bias, spec), like=node,
                              name=f"lowered_{node.name}")
        low.meta["lampc_lowered"] = module_path(node)
        node.replace_all_uses_with(low)
        graph.erase_node(node)
        lowered += 1
    if lowered:
        graph.lint()
        gm.recompile()
    return PassResult(gm, bool(lowered))
