"""Sites whose producer is a linear layer: layer_norm / RMSNorm after a residual add, and activations.

Patterns (the chain between producer and consumer may hold views, reshapes and eval-mode dropouts):

    layer_norm site                                  activation site ("gelu" kind: gelu, gelu_new, silu)
    y = addmm(b, x, W)    # or linear(x, W, b)       y = addmm(b, x, W)
    y = view(y); y = dropout(y)                      y = view(y)
    h = add(residual, y)                             g = gelu_new(y)   # pow/tanh/mul inside mlp.act
    o = layer_norm(h, [n], gamma, beta, eps)

Rewrite (the producer is replaced; everything after it is kept):

    before                      after
    y = addmm(b, x, W)          y_hat = lampc.lowp_matmul(x, W, b, policy)
                                sel   = lampc.component_select(y_hat, x, W, b, residual, gamma, eps, consumer, ...)
                                y     = lampc.recompute_linear(y_hat, sel, x, W, b, policy)
                                lampc_tap_<site>(sel, None)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from ..ops import LAMPC_OPS
from ..ops_linear import LINEAR_OPS
from ..policy import SitePolicy
from ..runtime.tap import SelectionTap
from .graph import insert_call, module_path
from .result import PassResult, Site, Skip

aten = torch.ops.aten

TRANSPARENT = (aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.dropout.default,
               aten.clone.default, aten.contiguous.default, aten.alias.default, aten.to.dtype)
"""Ops a value passes through unchanged (graphs are FP32, so `to(float32)` is one; eval dropout is one)."""
NORM_OPS = {aten.layer_norm.default: "layer_norm"}
ACTIVATION_OPS = {aten.silu.default: "silu"}
TANH_GELU_MODULES = ("NewGELUActivation", "GELUTanh", "FastGELUActivation", "GELUPytorchTanh", "gelu_new")
RMS_NORM_MODULES = ("RMSNorm",)


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


def _through_transparent(node: fx.Node) -> fx.Node:
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


def _single_user_chain(start: fx.Node, end: fx.Node) -> bool:
    node = end
    while node is not start:
        if len(node.args[0].users) != 1:
            return False
        node = node.args[0]
    return True


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
    h = _through_transparent(h)
    candidates = [(h, None)]
    if h.op == "call_function" and h.target == aten.add.Tensor and all(isinstance(a, fx.Node) for a in h.args[:2]):
        a, b = h.args[:2]
        candidates = [(a, b), (b, a)]
    for value, residual in candidates:
        source = _through_transparent(value)
        if source.op == "call_function" and source.target in LAMPC_OPS + LINEAR_OPS:
            return "already rewritten by lampc"
        producer = linear_producer(source)
        if producer is None:
            continue
        if not _single_user_chain(source, value):
            return f"the linear output {source.name} is also used outside the {consumer}"
        split = _splits_features(source, consumer_input)
        if split:
            return split
        if residual is not None and _defined_after(residual, source):
            return f"residual {residual.name} is computed after the producer {source.name}"
        return LinearMatch(kind, consumer, producer, residual, gamma, eps, anchor)
    sources = _op(_through_transparent(h))
    if len(candidates) == 2:
        sources = "add(" + ", ".join(_op(_through_transparent(v)) for v in (h.args[0], h.args[1])) + ")"
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


def find_rms_norms(gm: fx.GraphModule) -> list[tuple[fx.Node, fx.Node | None, float, fx.Node]]:
    """(input, gamma, eps, first node) of each RMSNorm module (decomposed as pow/mean/add/rsqrt/mul)."""
    groups: dict[str, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_function" and _module_type(node).endswith(RMS_NORM_MODULES):
            groups.setdefault(module_path(node), []).append(node)
    found = []
    for path, nodes in groups.items():
        members = set(nodes)
        pow_node = next((n for n in nodes if n.target == aten.pow.Tensor_Scalar and n.args[1] == 2), None)
        if pow_node is None:
            continue
        x = pow_node.args[0]
        gamma = next((a for n in nodes for a in n.args if isinstance(a, fx.Node) and a not in members
                      and a.op == "get_attr"), None)
        eps = next((float(n.args[1]) for n in nodes if n.target == aten.add.Tensor
                    and isinstance(n.args[1], (int, float))), 1e-6)
        found.append((x, gamma, eps, pow_node))
    return found


def find_linear_sites(gm: fx.GraphModule, kinds: set[str]) -> tuple[list[LinearMatch], list[Skip]]:
    matches, skips = [], []
    if "layer_norm" in kinds:
        for x, gamma, eps, first in find_rms_norms(gm):
            _collect(_match_input(x, "layer_norm", "rms_norm", gamma, eps, first), first, "layer_norm", matches, skips)
    if "gelu" in kinds:
        for value, first in find_tanh_gelu_inputs(gm):
            found = _match_input(value, "gelu", "gelu_tanh", None, 0.0, first)
            _collect(found, first, "gelu", matches, skips, value_users_ok=True)
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if "layer_norm" in kinds and node.target in NORM_OPS:
            _collect(match_norm(node), node, "layer_norm", matches, skips)
        elif "gelu" in kinds:
            found = match_activation(node)
            if found is not None:
                _collect(found, node, "gelu", matches, skips)
    matches.sort(key=lambda m: _position(gm, m.producer.node))
    return matches, skips


def _collect(found, node, kind, matches, skips, value_users_ok=False) -> None:
    if isinstance(found, str):
        skips.append(Skip(kind, module_path(node), node.name, found))
    else:
        matches.append(found)


def _position(gm: fx.GraphModule, target: fx.Node) -> int:
    for i, node in enumerate(gm.graph.nodes):
        if node is target:
            return i
    return -1


def rewrite_linear_sites(gm: fx.GraphModule, policies: dict[str, SitePolicy], first_index: int = 0) -> PassResult:
    """Lower every linear producer of a layer_norm / activation site, guarded by its consumer's look-ahead."""
    matches, skips = find_linear_sites(gm, set(policies))
    sites = []
    for offset, match in enumerate(matches):
        sites.append(_rewrite_one(gm, match, policies[match.kind], first_index + offset))
    if sites:
        gm.graph.lint()
        gm.recompile()
    return PassResult(gm, bool(sites), sites, skips)


def weight_as_matrix(graph: fx.Graph, producer: LinearProducer) -> fx.Node:
    """The weight in x·W orientation (inserts a transpose for aten.linear)."""
    if not producer.transposed:
        return producer.weight
    return insert_call(graph, aten.t.default, (producer.weight,), like=producer.node)


def _rewrite_one(gm: fx.GraphModule, match: LinearMatch, policy: SitePolicy, index: int) -> Site:
    graph, producer = gm.graph, match.producer
    spec = policy.to_spec()
    tap_name = f"lampc_tap_{index}"
    gm.add_submodule(tap_name, SelectionTap(index, per_head=False))
    with graph.inserting_after(producer.node):
        w = weight_as_matrix(graph, producer)
    with graph.inserting_after(w if w is not producer.weight else producer.node):
        x, b = producer.x, producer.bias
        y_hat = insert_call(graph, torch.ops.lampc.lowp_matmul.default, (x, w, b, spec), like=producer.node,
                            name=f"y_lp_{index}")
    with graph.inserting_after(y_hat):
        args = (y_hat, x, w, b, match.residual, match.gamma, match.eps, match.consumer, spec, index)
        selected = insert_call(graph, torch.ops.lampc.component_select.default, args, like=producer.node,
                               name=f"selection_{index}")
    with graph.inserting_after(selected):
        y = insert_call(graph, torch.ops.lampc.recompute_linear.default, (y_hat, selected, x, w, b, spec),
                        like=producer.node, name=f"y_{index}")
    with graph.inserting_after(y):
        tap = graph.call_module(tap_name, (selected, None))
        tap.meta["nn_module_stack"] = producer.node.meta.get("nn_module_stack", {})
    producer.node.replace_all_uses_with(y)
    graph.erase_node(producer.node)
    for node in (y_hat, selected, y, tap) + ((w,) if w is not producer.weight else ()):
        node.meta["lampc_site"] = index
    consumer = match.consumer if match.residual is None else f"{match.consumer}(residual + .)"
    names = (y_hat.name, selected.name, y.name, tap.name)
    return Site(index, match.kind, module_path(y), "linear", consumer, policy.summary, names)
