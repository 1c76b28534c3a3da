"""Sites whose producer is a linear layer: layer_norm / RMSNorm after a residual add, and activations.

Patterns (the chain between producer and consumer may hold views, reshapes and eval-mode dropouts):

    layer_norm site                                  activation site ("gelu" kind: gelu, gelu_new, silu)
    y = addmm(b, x, W)    # or linear(x, W, b)       y = addmm(b, x, W)
    y = view(y); y = dropout(y)                      y = view(y)
    h = add(residual, y)                             g = gelu_new(y)   # pow/tanh/mul inside mlp.act
    o = layer_norm(h, [n], gamma, beta, eps)

Rewrite (the producer is replaced; everything after it is kept):

    before                      after
    y = addmm(b, x, W)          y_hat = lampc.lowp_matmul(x, W, b, producer, execution)   # native: w_low=cast(W)
                                sel   = lampc.component_select(y_hat, x, W, b, residual, gamma, eps, consumer, ...)
                                y     = lampc.recompute_linear(y_hat, sel, x, W, b, execution)
                                lampc_tap_<site>(sel, None)

`linear_sites({"layer_norm": policy, "gelu": policy})` is the site kind `rewrite_sites` runs: both consumers'
matches in one graph-ordered list, so site indices follow the producers' order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from ..graph_view import module_path
from ..ops import SITE_OPS
from ..policy import SitePolicy
from ..site_kinds import GELU, LAYER_NORM, LINEAR
from .driver import Emission, Emitted, SiteKind
from .result import Skip

aten = torch.ops.aten

TRANSPARENT = (aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.dropout.default,
               aten.clone.default, aten.contiguous.default, aten.alias.default, aten.to.dtype)
"""Ops a value passes through unchanged (graphs are FP32, so `to(float32)` is one; eval dropout is one)."""
NORM_OPS = {aten.layer_norm.default: "layer_norm"}
ACTIVATION_OPS = {aten.silu.default: "silu"}
TANH_GELU_MODULES = ("NewGELUActivation", "GELUTanh", "FastGELUActivation", "GELUPytorchTanh", "gelu_new")
RMS_NORM_MODULES = ("RMSNorm",)
CHECKS = (aten._assert_tensor_metadata.default,)
"""torch.export's metadata assertions: users of a value that read nothing of it."""


@dataclass
class LinearProducer:
    node: fx.Node  # addmm / linear / mm / matmul with a weight
    x: fx.Node
    weight: fx.Node  # as stored
    bias: fx.Node | None
    transposed: bool  # True for aten.linear: y = x @ weight.T


def linear_producer(node) -> LinearProducer | None:
    """node as y = x·W (+ b) with a 2-D weight, or None."""
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return None
    if node.target == aten.addmm.default:
        bias, x, w = node.args[:3]
        if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
            return None
        return LinearProducer(node, x, w, bias, False)
    if node.target == aten.linear.default:
        x, w = node.args[:2]
        bias = node.args[2] if len(node.args) > 2 else None
        return LinearProducer(node, x, w, bias, True)
    if node.target in (aten.mm.default, aten.matmul.default):
        x, w = node.args[:2]
        if w.op == "get_attr" or _is_weight(w):
            return LinearProducer(node, x, w, None, False)
    return None


def _is_weight(node: fx.Node) -> bool:
    val = node.meta.get("val")
    return node.op in ("get_attr", "placeholder") and isinstance(val, torch.Tensor) and val.dim() == 2


def through_transparent(node: fx.Node) -> fx.Node:
    """Walk back from `node` through views/dropouts (single-user chain) to the op that made the value."""
    while node.op == "call_function" and node.target in TRANSPARENT:
        if node.target == aten.dropout.default and len(node.args) > 2 and node.args[2]:
            break  # training-mode dropout is not transparent
        node = node.args[0]
    return node


def _splits_features(source: fx.Node, value: fx.Node) -> str | None:
    """A reason when the views between the linear and the consumer change the last dimension (e.g. a per-head
    q/k norm, Qwen3/OLMo2 style: rms_norm(view(q_proj(x), ..., heads, head_dim))): the consumer then normalises
    another dimension than the linear's output features, which the site's look-ahead and recompute assume."""
    before, after = source.meta.get("val"), value.meta.get("val")
    if not isinstance(before, torch.Tensor) or not isinstance(after, torch.Tensor):
        return None
    if str(before.shape[-1]) != str(after.shape[-1]):
        return (f"the view between {source.name} and the consumer splits the linear's {before.shape[-1]} output "
                f"features into groups of {after.shape[-1]} (a per-head norm): not a site")
    return None


def _private_chain(source: fx.Node, end: fx.Node, consumer: fx.Node, anchor: fx.Node) -> bool:
    """Whether the linear's output reaches nothing but the consumer: every node from `source` to `end` is used
    only by the next one, and `end` only by `consumer` (the residual add, or the consumer itself, or a node of the
    consumer's module when it is decomposed, as gelu_new and RMSNorm are)."""
    inside = module_path(anchor)

    def allowed(user: fx.Node) -> bool:
        return user is consumer or user is anchor or (consumer is anchor and inside and module_path(user) == inside)

    node, ok = end, allowed
    while True:
        if not all(ok(user) or user.target in CHECKS for user in node.users):
            return False
        if node is source:
            return True
        node, ok = node.args[0], (lambda user, nxt=node: user is nxt)


@dataclass
class LinearMatch:
    kind: str  # "layer_norm" or "gelu"
    consumer: str  # layer_norm, rms_norm, gelu_tanh, gelu, silu
    producer: LinearProducer
    residual: fx.Node | None
    gamma: fx.Node | None
    eps: float
    anchor: fx.Node  # the consumer node (for provenance and skips)


def match_norm(norm: fx.Node) -> LinearMatch | str:
    """layer_norm(h) with h = [residual +] chain(linear(x))."""
    h = norm.args[0]
    gamma = norm.args[2] if len(norm.args) > 2 else None
    eps = float(norm.args[4]) if len(norm.args) > 4 else 1e-5
    return _match_input(h, "layer_norm", "layer_norm", gamma, eps, norm)


def _match_input(h, kind, consumer, gamma, eps, anchor) -> LinearMatch | str:
    consumer_input = h
    h = through_transparent(h)
    candidates = [(h, None)]
    if h.op == "call_function" and h.target == aten.add.Tensor and all(isinstance(a, fx.Node) for a in h.args[:2]):
        a, b = h.args[:2]
        candidates = [(a, b), (b, a)]
    for value, residual in candidates:
        source = through_transparent(value)
        if source.op == "call_function" and source.target in SITE_OPS:
            return "already rewritten by lampc"
        producer = linear_producer(source)
        if producer is None:
            continue
        end, consumer_node = (consumer_input, anchor) if residual is None else (value, h)
        if not _private_chain(source, end, consumer_node, anchor):
            return f"the linear output {source.name} is also used outside the {consumer}"
        split = _splits_features(source, consumer_input)
        if split:
            return split
        if residual is not None and _defined_after(residual, source):
            return f"residual {residual.name} is computed after the producer {source.name}"
        return LinearMatch(kind, consumer, producer, residual, gamma, eps, anchor)
    sources = _op(through_transparent(h))
    if len(candidates) == 2:
        sources = "add(" + ", ".join(_op(through_transparent(v)) for v in (h.args[0], h.args[1])) + ")"
    return f"{consumer} input is {sources}, not a linear layer [+ residual]"


def _op(node: fx.Node) -> str:
    if node.op != "call_function":
        return node.op
    return getattr(node.target, "_opname", str(node.target))


def _defined_after(a: fx.Node, b: fx.Node) -> bool:
    for node in b.graph.nodes:
        if node is a:
            return False
        if node is b:
            return True
    return False


def _module_type(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    kind = list(stack.values())[-1][1]
    return kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))


def match_activation(node: fx.Node) -> LinearMatch | str | None:
    """A gelu/silu whose input is a linear layer's output; None if `node` is no activation entry point."""
    if node.op != "call_function":
        return None
    if node.target == aten.gelu.default:
        consumer = "gelu_tanh" if node.kwargs.get("approximate", "none") == "tanh" else "gelu"
        return _match_input(node.args[0], "gelu", consumer, None, 0.0, node)
    if node.target in ACTIVATION_OPS:
        return _match_input(node.args[0], "gelu", ACTIVATION_OPS[node.target], None, 0.0, node)
    return None


def find_tanh_gelu_inputs(gm: fx.GraphModule) -> list[tuple[fx.Node, fx.Node]]:
    """(input, first node) of each decomposed tanh-GELU module (gelu_new appears as pow/tanh/mul)."""
    found, seen = [], set()
    for node in gm.graph.nodes:
        if node.op != "call_function" or not _module_type(node).endswith(TANH_GELU_MODULES):
            continue
        path = module_path(node)
        key = (path, node.meta.get("nn_module_stack") and list(node.meta["nn_module_stack"])[-1])
        if key in seen:
            continue
        seen.add(key)
        outside = [a for a in node.args if isinstance(a, fx.Node) and module_path(a) != path]
        if outside:
            found.append((outside[0], node))
    return found


def find_rms_norms(gm: fx.GraphModule) -> list[tuple[fx.Node, fx.Node | str | None, float, fx.Node]]:
    """(input, scale, eps, first node) of each RMSNorm module (decomposed as pow/mean/add/rsqrt/mul).

    The scale is the graph value the normalised input is multiplied by, as the model computes it: the weight itself
    (Llama: w * x̃) or a value the model makes from it (Gemma, Gemma2, Gemma3: x̃ * (1 + w), an add of 1.0 to the
    weight before the mul); None for a norm without one, a reason (str) when there are several."""
    groups: dict[str, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_function" and _module_type(node).endswith(RMS_NORM_MODULES):
            groups.setdefault(module_path(node), []).append(node)
    found = []
    for nodes in groups.values():
        pow_node = next((n for n in nodes if n.target == aten.pow.Tensor_Scalar and n.args[1] == 2), None)
        if pow_node is None:
            continue
        x = pow_node.args[0]
        from_x = _depending_on(x, nodes)
        eps = next((float(n.args[1]) for n in nodes if n in from_x and n.target == aten.add.Tensor
                    and isinstance(n.args[1], (int, float))), 1e-6)
        found.append((x, _effective_scale(nodes, from_x), eps, pow_node))
    return found


def _depending_on(x: fx.Node, nodes: list[fx.Node]) -> set[fx.Node]:
    """The nodes of `nodes` (in graph order) whose value depends on x."""
    reached = {x}
    for node in nodes:
        if any(a in reached for a in node.all_input_nodes):
            reached.add(node)
    return reached


def _effective_scale(nodes: list[fx.Node], from_x: set[fx.Node]) -> fx.Node | str | None:
    """The parameter value a norm multiplies its normalised input by: the operand of a mul on the x side that is
    computed from parameters only (the weight, `to(weight)`, `weight + 1.0`)."""
    scales = [a for n in nodes if n in from_x and n.target == aten.mul.Tensor for a in n.args
              if isinstance(a, fx.Node) and a not in from_x and _from_parameters(a)]
    if len(scales) > 1:
        return f"the RMSNorm multiplies by {len(scales)} parameter values ({', '.join(a.name for a in scales)}), not one"
    return scales[0] if scales else None


def _from_parameters(node: fx.Node) -> bool:
    """Whether the value of `node` is computed from parameters and buffers (get_attr) and constants only."""
    if node.op == "get_attr":
        return True
    return node.op == "call_function" and all(_from_parameters(a) for a in node.all_input_nodes)


def hoist_before(value: fx.Node, anchor: fx.Node) -> None:
    """Move `value` and whatever it is computed from to before `anchor` where they come after it (a norm's scale,
    computed from parameters inside the norm, is needed by the look-ahead at the producer, before the norm runs).
    Only for values computed from parameters: nothing they read is moved past."""
    order = {node: i for i, node in enumerate(anchor.graph.nodes)}
    late, stack = set(), [value]
    while stack:
        node = stack.pop()
        if node.op in ("call_function", "get_attr") and order[node] > order[anchor] and node not in late:
            late.add(node)
            stack.extend(node.all_input_nodes)
    for node in sorted(late, key=order.__getitem__):
        anchor.prepend(node)


def find_linear_sites(gm: fx.GraphModule, kinds: set[str]) -> tuple[list[LinearMatch], list[Skip]]:
    matches, skips = [], []
    if LAYER_NORM in kinds:
        for x, gamma, eps, first in find_rms_norms(gm):
            found = gamma if isinstance(gamma, str) else _match_input(x, LAYER_NORM, "rms_norm", gamma, eps, first)
            _collect(found, first, LAYER_NORM, matches, skips)
    if GELU in kinds:
        for value, first in find_tanh_gelu_inputs(gm):
            found = _match_input(value, GELU, "gelu_tanh", None, 0.0, first)
            _collect(found, first, GELU, matches, skips)
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if LAYER_NORM in kinds and node.target in NORM_OPS:
            _collect(match_norm(node), node, LAYER_NORM, matches, skips)
        elif GELU in kinds:
            found = match_activation(node)
            if found is not None:
                _collect(found, node, GELU, matches, skips)
    matches.sort(key=lambda m: _position(gm, m.producer.node))
    return matches, skips


def _collect(found, node, kind, matches, skips) -> None:
    if isinstance(found, str):
        skips.append(Skip(kind, module_path(node), node.name, found))
    else:
        matches.append(found)


def _position(gm: fx.GraphModule, target: fx.Node) -> int:
    for i, node in enumerate(gm.graph.nodes):
        if node is target:
            return i
    return -1


def linear_sites(policies: dict[str, SitePolicy]) -> SiteKind:
    """The layer_norm and activation ("gelu") site kinds under their policies, as one graph-ordered kind."""
    return SiteKind(LINEAR, lambda gm: find_linear_sites(gm, set(policies)),
                    lambda em, match: _emit(em, match, policies[match.kind]), anchor=lambda match: match.producer.node)


def weight_as_matrix(em: Emission, producer: LinearProducer) -> fx.Node:
    """The weight in x·W orientation (inserts a transpose for aten.linear)."""
    if not producer.transposed:
        return producer.weight
    return em.call(aten.t.default, (producer.weight,), role="operand")


def _emit(em: Emission, match: LinearMatch, policy: SitePolicy) -> Emitted:
    policy = em.site_policy(match.kind, policy)
    graph, producer, index = em.graph, match.producer, em.index
    producer_text, rule, _, execution = em.configure(policy, kind=match.kind)
    lampc = torch.ops.lampc
    if match.gamma is not None and match.gamma.op == "call_function":  # a scale computed inside the norm (Gemma)
        hoist_before(match.gamma, producer.node)
    with graph.inserting_before(producer.node):  # the weight as x·W, and its form the producer prepares (if any)
        w = weight_as_matrix(em, producer)
        prepared = em.prepare_weight(w, "w_low")  # {"w_low": lampc_cast_bf16_<weight>(w)} for a native producer
    with graph.inserting_after(producer.node):
        x, b = producer.x, producer.bias
        y_hat = em.call(lampc.lowp_matmul.default, (x, w, b, producer_text, execution), prepared, role="producer",
                        name=f"y_lp_{index}")
    with graph.inserting_after(y_hat):
        draws = em.draws(policy, y_hat)  # (lampc_draws_<index>(y_hat),) at a random-baseline site, else ()
    with graph.inserting_after(draws[0] if draws else y_hat):
        args = (y_hat, x, w, b, match.residual, match.gamma, match.eps, match.consumer, producer_text, rule,
                execution, index, *draws)
        selected = em.call(lampc.component_select.default, args, role="selection", name=f"selection_{index}")
    with graph.inserting_after(selected):
        y = em.call(lampc.recompute_linear.default, (y_hat, selected, x, w, b, execution), role="recompute",
                    name=f"y_{index}")
    consumer = match.consumer if match.residual is None else f"{match.consumer}(residual + .)"
    return Emitted({producer.node: y}, (y_hat, selected, y), selected, None, erase=(producer.node,), kind=match.kind,
                   producer="linear", consumer=consumer, rule=policy.summary)
