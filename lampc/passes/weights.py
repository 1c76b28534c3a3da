"""Which graph values are the model's weights: a parameter (or buffer), directly or through views of it.

A producer may prepare its weight operand once at rewrite time (ProducerImpl.prepare_weight: the native cast);
that is only right for a value that is the same at every call, a tensor the graph module holds:

    w_t = t(lm_head_weight)          parameter_behind(gm, w_t)   -> "lm_head.weight"
    k_t = transpose(k, -1, -2)       parameter_behind(gm, k_t)   -> None   (an activation)
"""

from __future__ import annotations

import torch
from torch import fx

aten = torch.ops.aten

VIEWS = (aten.t.default, aten.transpose.int, aten.permute.default, aten.view.default, aten.alias.default,
         aten.unsqueeze.default, aten.squeeze.dim, aten.expand.default)
"""Ops whose result is a view of their first argument (in eager mode too: `_base` is set), so a copy of the
viewed tensor serves every view of it."""


def parameter_behind(gm: fx.GraphModule, node) -> str | None:
    """The qualified name of the tensor attribute (parameter, buffer, constant) `node` is, or is a view of; None
    for anything computed."""
    while isinstance(node, fx.Node) and node.op == "call_function" and node.target in VIEWS:
        node = node.args[0]
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    try:
        value = gm.get_parameter(node.target)
    except AttributeError:
        try:
            value = gm.get_buffer(node.target)
        except AttributeError:
            return None
    return node.target if isinstance(value, torch.Tensor) else None
