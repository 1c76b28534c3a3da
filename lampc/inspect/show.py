"""show: the rewritten graph as readable code, grouped by site, with dtypes, shapes and module provenance.

    site 1/4  attention: softmax <- matmul  @ transformer.h.1.attn
        m4/bk1/emulate strict tau=0.1
        scores_lp_1: f32[s0, 4, s1, s1] = lampc.lowp_scores(transpose_7, transpose_8, 0.125, 'emulate m4')
        ...
        softmax_1: f32[s0, 4, s1, s1] = softmax(add_10, -1)
        recompute rate 2.7% (143/5296 visible entries, 3 calls)
    skipped: attention @ classifier: softmax input comes from aten.linear, not matmul [* scale] [+ mask]

torch.fx (and lampc.graph_view, which loads torch and networkx) is imported where a graph is read, not when this
module loads: `lampc show --help` imports the lampc.inspect package without torch.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import fx

PASSTHROUGH_STOP = ("softmax", "_softmax", "layer_norm", "gelu")


def format_node(node: fx.Node) -> str:
    """One node as `name: f32[...] = op(args)` (a site's configuration parts as their texts: 'emulate m4')."""
    from ..graph_view import describe_value, op_name

    args = ", ".join(_format_arg(a) for a in node.args)
    if node.kwargs:
        args += ", " + ", ".join(f"{k}={_format_arg(v)}" for k, v in node.kwargs.items())
    value = describe_value(node)
    lhs = f"{node.name}: {value}" if value else node.name
    return f"{lhs} = {op_name(node)}({args})"


def _format_arg(arg) -> str:
    from torch import fx

    if isinstance(arg, fx.Node):
        return arg.name
    if isinstance(arg, float):
        return f"{arg:.6g}"
    if isinstance(arg, (list, tuple)):
        return "[" + ", ".join(_format_arg(a) for a in arg) + "]"
    return repr(arg)


def site_nodes(gm: fx.GraphModule, index: int) -> list[fx.Node]:
    """The nodes a rewrite inserted for site `index`, then the original nodes down to the consumer."""
    from ..graph_view import op_name, site_index

    inserted = [n for n in gm.graph.nodes if site_index(n) == index]
    if not inserted:
        return []
    tail, node = [], [n for n in inserted if n.meta["lampc"].role in ("recompute", "output")][-1]
    while node is not None:
        users = [u for u in node.users if u.op != "call_module"]
        node = users[0] if len(users) == 1 else None
        if node is None:
            break
        tail.append(node)
        if op_name(node) in PASSTHROUGH_STOP:
            break
    return inserted + tail


def render(compiled, *, full: bool = False, phase: str | None = None) -> str:
    """The listing `show` prints (see module docstring); full=True lists the whole graph; phase="decode" (or
    "prefill") adds the listing of that cached-step graph, once a generation has built it."""
    text = _render_graph(compiled.graph_module, compiled.sites, compiled.skips, compiled.stats(), compiled.model_type,
                         full=full)
    if phase is None:
        return text
    steps = compiled.step_graphs
    built = [kind for kind in (steps.graphs if steps is not None else {}) if kind.startswith(phase)]
    if not built:
        return text + f"\n{phase} step: not built yet (run compiled.generate or a cached forward first)"
    kind = built[-1]
    result = steps.results[kind]
    header = f"\n{phase} step graph ({kind}: new tokens x cached keys), statistics over every {phase} step"
    return text + header + "\n" + _render_graph(steps.graphs[kind], result.sites, result.skips,
                                                compiled.stats(phase), compiled.model_type, full=full)


def _render_graph(gm, sites, skips, stats, model_type: str, *, full: bool) -> str:
    from ..graph_view import module_path, site_index

    stats = {s["site"]: s for s in stats["sites"]}
    kinds = sorted({s.kind for s in sites})
    lines = [f"lampc: {model_type}, {len(sites)} site(s) ({', '.join(kinds) or 'none'}), {len(skips)} skipped"]
    if full:
        for node in gm.graph.nodes:
            if node.op in ("call_function", "call_module"):
                mark = f"  # site {site_index(node)}" if site_index(node) >= 0 else ""
                lines.append(f"    {format_node(node)}    # {module_path(node)}{mark}")
    total = len(sites)
    for site in sites:
        lines.append(f"site {site.index}/{total}  {site.kind}: {site.consumer} <- {site.producer}  @ {site.module}")
        lines.append(f"    {site.rule}")
        for node in site_nodes(gm, site.index):
            lines.append(f"    {format_node(node)}")
        lines.append(f"    {_rate_line(stats.get(site.index))}")
    for skip in skips:
        where = f" @ {skip.module}" if skip.module else ""
        lines.append(f"skipped: {skip.kind}{where} ({skip.node}): {skip.reason}")
    if not sites:
        lines.append("no sites: the model runs entirely in FP32")
    return "\n".join(lines)


def _rate_line(stat) -> str:
    if not stat or not stat["calls"]:
        return "recompute rate: not measured yet (run the model)"
    return (f"recompute rate {100 * stat['rate']:.2f}% ({stat['selected']}/{stat['visible']} visible entries, "
            f"{stat['calls']} call(s))")


def show(compiled, *, full: bool = False, phase: str | None = None, file=None) -> None:
    """Print the rewritten graph of a compiled model, grouped by site (full=True: the whole graph; phase="decode":
    the decode-step graph too)."""
    print(render(compiled, full=full, phase=phase), file=file or sys.stdout)
