"""WeightCasts: one compiled model's weight casts, one per weight and dtype across all its graphs.

A rewritten graph reads each weight of a native site through a CastWeight module (lampc/producers/cast_weight.py),
one per weight and dtype in that graph. A compiled model has several graphs over the same weights (the
full-sequence graph and the prefill/decode step graphs); each would keep its own copy. `WeightCasts(gm)` remembers
the casts of the graphs it adopts, and a graph adopted later calls the module already kept for the same weight and
dtype, so the model holds one low-precision copy of each weight, whichever graphs run:

    casts = WeightCasts(full_graph)      # the compiled model's
    casts.adopt(decode_graph)            # decode's lampc_cast_bf16_model_lm_head_weight -> full's module

Two compiled models over the same weights keep a copy each: what a model holds is in the model (dropping it frees
its copies), with no state shared outside it. A graph pickled with its model keeps the sharing (pickle keeps one
object for one module); the copies themselves are not saved.
"""

from __future__ import annotations

from torch import Tensor, fx

from ..passes.weights import parameter_behind
from ..producers.cast_weight import CastWeight


class WeightCasts:
    def __init__(self, *graphs: fx.GraphModule):
        self._kept: dict[tuple, tuple[Tensor, CastWeight]] = {}  # (id(weight), dtype) -> (weight, its cast)
        for gm in graphs:
            self.adopt(gm)

    def adopt(self, gm: fx.GraphModule) -> None:
        """Make gm's cast calls use the casts kept for their weights (keeping gm's own for weights new here)."""
        for node in gm.graph.nodes:
            if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), CastWeight):
                continue
            name = parameter_behind(gm, node.args[0])
            if name is None:
                continue
            weight, module = _attribute(gm, name), gm.get_submodule(node.target)
            key = (id(weight), module.dtype)
            kept = self._kept.get(key)
            if kept is None or kept[0] is not weight:  # the identity check: an id is only a key while alive
                self._kept[key] = (weight, module)
            elif kept[1] is not module:
                gm.add_submodule(node.target, kept[1])


def _attribute(gm: fx.GraphModule, name: str) -> Tensor:
    try:
        return gm.get_parameter(name)
    except AttributeError:
        return gm.get_buffer(name)
