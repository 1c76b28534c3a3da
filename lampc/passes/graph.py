"""Reading fx graphs: module provenance, value descriptions, and the networkx view of the dataflow."""

from __future__ import annotations

import networkx as nx
import torch
from torch import fx


def module_path(node: fx.Node) -> str:
    """The module whose forward produced `node` (e.g. "transformer.h.0.attn"), or "" at the top level."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return path if isinstance(path, str) else ""


def op_name(node: fx.Node) -> str:
    """A short name for the node's operation: "matmul", "softmax", "lampc.lowp_scores", "getitem"."""
    if node.op == "call_function":
        target = node.target
        if isinstance(target, torch._ops.OpOverload):
            namespace, name = target.namespace, target._opname
            return name if namespace == "aten" else f"{namespace}.{name}"
        return getattr(target, "__name__", str(target))
    if node.op == "call_module":
        return str(node.target)
    return node.op


def describe_value(node: fx.Node) -> str:
    """dtype and shape of the node's value, as torch.export prints them: f32[1, 12, 128, 128]."""
    value = node.meta.get("val")
    if isinstance(value, torch.Tensor):
        return f"{_short_dtype(value.dtype)}[{', '.join(str(d) for d in value.shape)}]"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_describe_any(v) for v in value) + ")"
    return _describe_any(value) if value is not None else ""


def _describe_any(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"{_short_dtype(value.dtype)}[{', '.join(str(d) for d in value.shape)}]"
    return type(value).__name__


_DTYPES = {
    torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64",
    torch.int64: "i64", torch.int32: "i32", torch.bool: "b8",
}


def _short_dtype(dtype: torch.dtype) -> str:
    return _DTYPES.get(dtype, str(dtype).replace("torch.", ""))


def to_networkx(gm: fx.GraphModule) -> nx.DiGraph:
    """The dataflow of `gm` as a DiGraph: one vertex per node (op, target, value, module), edges producer->user."""
    graph = nx.DiGraph()
    for node in gm.graph.nodes:
        graph.add_node(
            node.name,
            op=node.op,
            target=op_name(node),
            value=describe_value(node),
            module=module_path(node),
            site=node.meta.get("lampc_site", -1),
        )
        for user in node.users:
            graph.add_edge(node.name, user.name)
    return graph


def write_graph(gm: fx.GraphModule, path: str) -> None:
    """Write the dataflow as GraphML (.graphml) or Graphviz DOT (.dot, .gv)."""
    graph = to_networkx(gm)
    if path.endswith(".graphml"):
        nx.write_graphml(graph, path)
    elif path.endswith((".dot", ".gv")):
        with open(path, "w", encoding="utf-8") as out:
            out.write(to_dot(graph))
    else:
        raise ValueError(f"path {path!r}: expected a .graphml, .dot or .gv file name")


def to_dot(graph: nx.DiGraph) -> str:
    """Graphviz DOT text (no pygraphviz needed); lampc's nodes are filled by site."""
    lines = ["digraph lampc {", "  node [shape=box, fontname=monospace, fontsize=10];"]
    for name, data in graph.nodes(data=True):
        label = f"{name}\\n{data['target']} {data['value']}".replace('"', "'")
        style = ', style=filled, fillcolor="#ffd27f"' if data["site"] >= 0 else ""
        lines.append(f'  "{name}" [label="{label}"{style}];')
    lines += [f'  "{a}" -> "{b}";' for a, b in graph.edges()]
    lines.append("}")
    return "\n".join(lines) + "\n"


def insert_call(graph: fx.Graph, target, args: tuple, kwargs: dict | None = None, *, like: fx.Node,
                name: str | None = None) -> fx.Node:
    """Insert `target(*args, **kwargs)` at the graph's insertion point, with the provenance of `like`
    and a fake value (meta["val"]) computed from the arguments' fake values."""
    kwargs = kwargs or {}
    node = graph.create_node("call_function", target, tuple(args), kwargs, name=name)
    for key in ("nn_module_stack", "stack_trace", "source_fn_stack"):
        if key in like.meta:
            node.meta[key] = like.meta[key]
    node.meta["val"] = _fake_value(target, args, kwargs)
    return node


def _fake_value(target, args, kwargs):
    def value(arg):
        if isinstance(arg, fx.Node):
            return arg.meta.get("val")
        if isinstance(arg, (list, tuple)):
            return type(arg)(value(a) for a in arg)
        return arg

    fake_args, fake_kwargs = value(args), {k: value(v) for k, v in kwargs.items()}
    fake_mode = next((v.fake_mode for v in _tensors(fake_args) if hasattr(v, "fake_mode")), None)
    if fake_mode is None:
        return None
    with fake_mode:
        return target(*fake_args, **fake_kwargs)


def _tensors(values):
    for v in values:
        if isinstance(v, torch.Tensor):
            yield v
        elif isinstance(v, (list, tuple)):
            yield from _tensors(v)
