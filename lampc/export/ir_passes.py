"""Passes over the exported ONNX IR model: site tags, debug outputs, opset conversion, optimisation.

torch.export renames the fx nodes and drops lampc's node meta, so sites are found again from the data flow of the
exported program (`find_fx_sites`) and matched to ONNX nodes through the exporter's record of each node's fx
origin. Tags are node names first (`lampc_site_<i>/<op>/<name>`), because the ONNX C API's version converter keeps
names but drops node metadata; `tag_metadata` derives `lampc.site`, `lampc.op`, `lampc.module` from the names
after the last conversion.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import onnx_ir as ir
import torch
from torch import fx

from ..graph_view import argument

PENDING_DOMAIN = "lampc.pending"  # BitCast nodes hide here while the opset-18 graph is converted


@contextlib.contextmanager
def quiet():
    """Silence the exporter's progress prints and known-harmless warnings."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


_BULKY_METADATA = ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node", "pkg.torch.onnx.class_hierarchy")


def find_fx_sites(graph: fx.Graph) -> dict[str, tuple[int, str]]:
    """fx node name -> (site, op name) for the lampc ops of the exported program's graph.

    torch.export renames nodes and drops lampc's node meta, so the site comes from the data flow: lamp_select
    carries it as its `site` argument; lowp_scores feeds that lamp_select; recompute_scores consumes it.
    """
    sites = {}
    for node in graph.nodes:
        if node.op == "call_function" and node.target == torch.ops.lampc.lamp_select.default:
            index = int(argument(node, "site"))
            sites[node.name] = (index, "lamp_select")
            s_hat = node.args[0]
            if isinstance(s_hat, fx.Node) and s_hat.target == torch.ops.lampc.lowp_scores.default:
                sites[s_hat.name] = (index, "lowp_scores")
            for user in node.users:
                if user.target == torch.ops.lampc.recompute_scores.default:
                    sites[user.name] = (index, "recompute_scores")
    return sites


def _fx_name(node: ir.Node) -> str | None:
    fx_node = node.meta.get("node")
    if fx_node is not None:
        return fx_node.name
    text = node.metadata_props.get("pkg.torch.onnx.fx_node", "")
    return text[1:].split(" ", 1)[0] if text.startswith("%") else None


def tag_sites(model: ir.Model, fx_sites: dict[str, tuple[int, str]]) -> None:
    """Name every node a translation emitted `lampc_site_<i>/<op>/<name>` (names survive opset conversion)."""
    for node in model.graph:
        found = fx_sites.get(_fx_name(node) or "")
        if found is not None:
            index, op_name = found
            node.name = f"lampc_site_{index}/{op_name}/{node.name or node.op_type}"


def tag_metadata(model: ir.Model, modules: dict[int, str]) -> None:
    """metadata_props lampc.site, lampc.op, lampc.module from the site names (after the last conversion: the
    ONNX C API's version converter drops node metadata)."""
    for node in model.graph:
        if not (node.name or "").startswith("lampc_site_"):
            continue
        head, op_name = node.name.split("/", 2)[:2]
        index = int(head.removeprefix("lampc_site_"))
        for key in _BULKY_METADATA:  # the same stack trace on each of thousands of unrolled nodes
            node.metadata_props.pop(key, None)
        node.metadata_props["lampc.site"] = str(index)
        node.metadata_props["lampc.op"] = op_name
        node.metadata_props["lampc.module"] = modules.get(index, "")


def add_debug_outputs(model: ir.Model, fx_sites: dict[str, tuple[int, str]]) -> list[str]:
    """Expose each site's selection (`selection_<i>`) and low-precision scores (`scores_lp_<i>`) as outputs."""
    wanted = {"lamp_select": "selection", "lowp_scores": "scores_lp"}
    found = {}
    for node in model.graph:
        for value in node.outputs:
            if value.name in fx_sites and fx_sites[value.name][1] in wanted:
                index, op_name = fx_sites[value.name]
                found[f"{wanted[op_name]}_{index}"] = value
    names = sorted(found, key=lambda n: (int(n.rsplit("_", 1)[1]), n))
    for name in names:
        value = found[name]
        identity = ir.node("Identity", [value], name=f"debug/{name}")
        identity.outputs[0].name = name
        identity.outputs[0].dtype = value.dtype
        identity.outputs[0].shape = value.shape
        model.graph.append(identity)
        model.graph.outputs.append(identity.outputs[0])
    return names


def convert_opset(model: ir.Model, opset: int) -> ir.Model:
    """Convert the graph to `opset` (check model.opset_imports[""] afterwards: a failed conversion leaves the
    model as it was); BitCast (new in 26) is set aside while the ONNX C API's converter runs, which has no
    adapter for it."""
    from onnxscript import version_converter

    held = [node for node in model.graph if node.domain == "" and node.op_type == "BitCast"]
    for node in held:
        node.domain = PENDING_DOMAIN
    if held:
        model.opset_imports[PENDING_DOMAIN] = 1
    with quiet():
        version_converter.convert_version(model, opset, fallback=True)
    for node in model.graph:
        if node.domain == PENDING_DOMAIN:
            node.domain = ""
            node.version = None
    model.opset_imports.pop(PENDING_DOMAIN, None)
    return model


def optimize_model(model: ir.Model) -> None:
    """Constant folding, dead-node removal and common-subexpression elimination, in place.

    Not onnxscript's rewrite rules: their pattern matching is slow on graphs with thousands of unrolled
    accumulation steps, and algebraic rules such as Add(x, 0) -> x would change the sign of a zero.
    """
    import onnx_ir.passes.common as passes
    from onnxscript.optimizer import fold_constants

    with quiet():
        fold_constants(model)
    ir.passes.Sequential(
        passes.RemoveUnusedNodesPass(),
        passes.RemoveUnusedFunctionsPass(),
        passes.RemoveUnusedOpsetsPass(),
        passes.CommonSubexpressionEliminationPass(),
        passes.RemoveUnusedNodesPass(),
        passes.DeduplicateInitializersPass(),
    )(model)
