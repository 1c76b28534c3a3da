"""Calibration's recording pass: while the block runs, the graph records what each threshold site's rule sees.

    with recording(compiled.graph_module) as recorder:
        compiled(input_ids)
    recorder.sites[3].count_above(0.5)      # entries site 3 selects with tau x 0.5 (lampc/lookahead/record.py)

On entry, after each unfused selection whose rule has a threshold (strict, relaxed), the pass adds the ν op on the
selection's own arguments and a `WeightTap` that adds ν to the recorder (lampc/ops/recording.py):

    before                                      inside the block
    sel_3 = lampc.lamp_select(s_hat, ..., 3)    sel_3 = lampc.lamp_select(s_hat, ..., 3)
                                                nu_3  = lampc.normalised_weights(s_hat, ..., execution)
                                                lampc_record_3(nu_3)

On exit it takes them out again: the graph is the one compiled. Nothing records outside the block, and nothing but
this graph's calls feeds the recorder (a fused site records nothing: calibration compiles its sites unfused). The
recording calls the look-ahead a second time per site: one forward of calibration's, not the model's forwards.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import fx

from ..lookahead.record import WeightRecorder
from ..ops.recording import NORMALISED_WEIGHTS, WeightTap
from ..policy import SitePolicy
from .graph import insert_call

RECORD_PREFIX = "lampc_record_"


@contextlib.contextmanager
def recording(gm: fx.GraphModule) -> Iterator[WeightRecorder]:
    """Record every threshold site's ν while the block runs; yields the WeightRecorder (see module docstring)."""
    recorder = WeightRecorder()
    added = add_recorders(gm, recorder)
    try:
        yield recorder
    finally:
        remove_recorders(gm, added)


def add_recorders(gm: fx.GraphModule, recorder: WeightRecorder) -> list[fx.Node]:
    """Insert each recorded site's ν op and WeightTap (after its selection); returns the nodes inserted."""
    added = []
    for node in list(gm.graph.nodes):
        tag = node.meta.get("lampc")
        if node.op != "call_function" or node.target not in NORMALISED_WEIGHTS or tag is None or tag.config is None:
            continue
        site = SitePolicy.from_config(tag.config)
        if site.rule.terms is None or site.fused:  # no threshold to scale; a fused site's look-ahead records nothing
            continue
        op, n_args = NORMALISED_WEIGHTS[node.target]
        name = f"{RECORD_PREFIX}{tag.site}"
        gm.add_submodule(name, WeightTap(tag.site, recorder))
        with gm.graph.inserting_after(node):
            nu = insert_call(gm.graph, op, node.args[:n_args], like=node, name=f"nu_{tag.site}")
        with gm.graph.inserting_after(nu):
            tap = gm.graph.call_module(name, (nu,))
        added += [tap, nu]
    if added:
        gm.recompile()
    return added


def remove_recorders(gm: fx.GraphModule, added: list[fx.Node]) -> None:
    """Take out what `add_recorders` inserted (each tap before the ν it reads)."""
    for node in added:
        if node.op == "call_module":
            gm.delete_submodule(node.target)
        gm.graph.erase_node(node)
    if added:
        gm.recompile()
