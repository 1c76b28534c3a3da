"""An emitter adds graph values: a submodule call (Emission.add_module) and a buffer (Emission.buffer), each tagged
like every inserted node, with a fake value, saved with the graph."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import fx, nn

from lampc.passes.driver import Emission
from lampc.policy import SitePolicy
from lampc.runtime.portable_graph import PortableGraph

aten = torch.ops.aten


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 3)

    def forward(self, x):
        return self.proj(x)


class Double(nn.Module):
    def forward(self, x):
        return 2.0 * x


def _captured():
    torch.manual_seed(0)
    x = torch.randn(2, 4)
    return torch.export.export(Linear().eval(), (x,), strict=False).module(), x


def _linear(gm: fx.GraphModule) -> fx.Node:
    return next(n for n in gm.graph.nodes if n.op == "call_function" and n.target == aten.linear.default)


def test_a_buffer_and_a_module_call_are_graph_values():
    gm, x = _captured()
    with torch.no_grad():
        want = 2.0 * gm(x) * 3.0
    node = _linear(gm)
    em = Emission(gm, "lowered", None, like=node)
    em.configure(SitePolicy())
    with gm.graph.inserting_after(node):
        scale = em.buffer("lampc_scale", torch.tensor(3.0), role="operand")
    with gm.graph.inserting_after(scale):
        doubled = em.add_module("lampc_double", Double(), (node,), role="operand")
    with gm.graph.inserting_after(doubled):
        out = em.call(aten.mul.Tensor, (doubled, scale), role="output")
    node.replace_all_uses_with(out, delete_user_cb=lambda user: user is not doubled)
    gm.graph.lint()
    gm.recompile()
    for value in (scale, doubled, out):
        tag = value.meta["lampc"]
        assert (tag.site, tag.kind, tag.config) == (None, "lowered", SitePolicy().config)
        assert type(value.meta["val"]).__name__ == "FakeTensor"
    assert scale.meta["val"].shape == () and doubled.meta["val"].shape == (2, 3)
    assert "lampc_scale" in gm.state_dict()
    loaded = pickle.loads(pickle.dumps(PortableGraph(gm)))
    with torch.no_grad():
        assert torch.equal(gm(x), want) and torch.equal(loaded(x), want)


def test_a_name_names_one_value():
    """A module of the same type under a taken name is reused (one cast for the sites reading one weight); another
    type, or another tensor under a buffer's name, is refused by name."""
    gm, _ = _captured()
    node = _linear(gm)
    em = Emission(gm, "lowered", None, like=node)
    with gm.graph.inserting_after(node):
        first = em.add_module("lampc_double", Double(), (node,), role="operand")
        second = em.add_module("lampc_double", Double(), (node,), role="operand")
        tensor = torch.ones(1)
        em.buffer("lampc_ones", tensor, role="operand")
        em.buffer("lampc_ones", tensor, role="operand")
    assert first.target == second.target == "lampc_double"
    assert sum(isinstance(m, Double) for m in gm.children()) == 1
    with pytest.raises(ValueError, match="'lampc_double' is already a Double in this graph module, not a Linear"):
        em.add_module("lampc_double", nn.Linear(1, 1), (node,), role="operand")
    with pytest.raises(ValueError, match="'lampc_ones' is already another value"):
        em.buffer("lampc_ones", torch.ones(1), role="operand")
    with pytest.raises(ValueError, match="role must be one of"):
        em.add_module("lampc_other", Double(), (node,), role="weight")
