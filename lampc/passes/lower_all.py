"""Lower every remaining matmul (sites="all"): the deployment case, where no producer stays in FP32.

Producers that are no site (e.g. the QKV projection, attention-weights @ V) run in the given format with no
look-ahead:

    before                          after
    y = addmm(b, x, W)              y = lampc.lowp_matmul(x, W, b, producer, execution)
    o = matmul(p, v)                o = lampc.lowp_matmul(p, v, None, producer, execution)
    z = linear(x, W, b)             z = lampc.lowp_matmul(x, t(W), b, producer, execution)

A native producer reads each weight through its cast (w_low=lampc_cast_bf16_<weight>(W), Emission.prepare_weight).
"""

from __future__ import annotations

import torch
from torch import fx

from .. import ops  # noqa: F401  (declares lampc::lowp_matmul)
from ..policy import SitePolicy
from ..site_kinds import LOWERED
from .driver import Emission, Emitted, SiteKind

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


def _find(gm: fx.GraphModule):
    """Every FP32 matmul-like node left in the graph (an addmm with beta or alpha other than 1 is left alone)."""
    found = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in MATMUL_OPS or not _is_float32(node):
            continue
        if node.target == aten.addmm.default and (node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1):
            continue
        found.append(node)
    return found, []


def lowered_matmuls(policy: SitePolicy) -> SiteKind:
    """Every matmul that is no site, in `policy`'s format with no look-ahead; it creates no site."""
    return SiteKind(LOWERED, _find, lambda em, node: _emit(em, node, policy), anchor=lambda node: node,
                    index_of=lambda node: None)


def _emit(em: Emission, node: fx.Node, policy: SitePolicy) -> Emitted:
    x, w, bias, transposed = _operands(node)
    producer, _, _, execution = em.configure(policy)
    with em.graph.inserting_before(node):
        if transposed:
            w = em.call(aten.t.default, (w,), role="operand")
        prepared = em.prepare_weight(w, "w_low")  # a weight's cast (native); {} for activations (p @ v)
        low = em.call(torch.ops.lampc.lowp_matmul.default, (x, w, bias, producer, execution), prepared,
                      role="producer", name=f"lowered_{node.name}")
    return Emitted({node: low}, (low,), erase=(node,))
