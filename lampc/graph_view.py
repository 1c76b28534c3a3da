"""Reading fx graphs: module provenance, value descriptions, and the networkx / DOT view of the dataflow.

The bottom of lampc's layers: it knows torch.fx and networkx, nothing of lampc, so the passes (module provenance),
the runtime (`CompiledModel.to_networkx`) and `inspect` (listings) all read graphs through it.
"""

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
            site=site_index(node),
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


def site_index(node: fx.Node) -> int:
    """The index of the site whose rewrite inserted `node`, or -1 (the passes tag `node.meta["lampc"]`)."""
    tag = node.meta.get("lampc")
    return -1 if tag is None or tag.site is None else tag.site


def argument(node: fx.Node, name: str):
    """The argument `name` of a call of an op with a schema (a lampc op), given by position or by keyword."""
    names = [a.name for a in node.target._schema.arguments]
    at = names.index(name)
    return node.args[at] if at < len(node.args) else node.kwargs[name]
