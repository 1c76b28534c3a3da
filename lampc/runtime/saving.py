"""What torch.save / torch.load (weights_only=False) and pickle keep of a compiled model; nothing is recompiled.

`CompiledModel.__getstate__` returns `saved_form(compiled)`; `__setstate__` builds the model again from it with
`init_arguments` and `restore_step_graphs`:

    saved                                             on load
    the rewritten full-sequence graph                 the same graph (lampc/runtime/portable_graph.py)
    the cached-step graphs (all; steps="lazy": those  the same graphs
      built so far) and their cache layout
    steps="lazy", kinds not built yet: the source     its step capture, which builds them on first use
      Hugging Face model (otherwise no part of it)
    sites, skips, policy, generation config, mode     as they were
    statistics totals (the taps), recording switches  as they were: stats() goes on counting from there
    the random baseline's place in its streams        not saved: the baseline restarts from its seed
    the native sites' weight casts (CastWeight)       the same modules, shared as they were; not their copies:
                                                      cast again on first use
    FakeTensor values of graph nodes (shapes)         not saved: `lampc.show` lists the loaded graph without shapes

torch.save and pickle both keep the weights the graphs share with the source model as one tensor each (pickle's
memo saves a shared Parameter once), so a loaded model's graphs share one copy of the weights. A saved model loads
with the Python and torch versions it was saved with (a named error otherwise).
"""

from __future__ import annotations

from ..capture_step import StepCapture, UncapturableSteps
from ..ops import share_streams
from ..passes.result import PassResult
from .portable_graph import PortableGraph, VersionStamp


def saved_form(compiled) -> dict:
    """The compiled model as plain, picklable data (see module docstring)."""
    steps = compiled.step_graphs
    return {
        "saved_with": VersionStamp(),  # first: checked before anything else loads
        "graph_module": PortableGraph(compiled.graph_module),
        "sites": list(compiled.sites),
        "skips": list(compiled.skips),
        "policy": compiled.policy,
        "model_type": compiled.model_type,
        "max_len": compiled.max_len,
        "vocab_size": compiled.vocab_size,
        "generation_config": compiled.generation_config,
        "training": compiled.training,
        "steps": None if steps is None else {
            "model": None if steps.source is None else steps.source.model,
            "max_len": compiled.max_len if steps.source is None else steps.source.max_len,
            "uncapturable": steps.source.reason if isinstance(steps.source, UncapturableSteps) else None,
            "layout": steps.layout if steps.source is None else None,
            "graphs": {kind: (PortableGraph(gm), steps.results[kind].modified, list(steps.results[kind].sites),
                              list(steps.results[kind].skips)) for kind, gm in steps.graphs.items()},
            "tap_settings": dict(steps.tap_settings),
            "ran": dict(steps.ran),
        },
    }


def init_arguments(state: dict) -> tuple[tuple, dict]:
    """CompiledModel(*args, **kwargs) for a saved form."""
    gm, steps = state["graph_module"], state["steps"]
    source = None
    if steps is not None and steps["model"] is not None:
        source = StepCapture(steps["model"], steps["max_len"])
    elif steps is not None and steps.get("uncapturable"):
        source = UncapturableSteps(steps["uncapturable"], steps["max_len"])
    args = (gm, PassResult(gm, True, state["sites"], state["skips"]), state["policy"])
    kwargs = dict(model_type=state["model_type"], max_len=state["max_len"], vocab_size=state["vocab_size"],
                  steps=source, step_layout=None if steps is None else steps.get("layout"),
                  generation_config=state["generation_config"])
    return args, kwargs


def restore_step_graphs(compiled, state: dict) -> None:
    """Put the saved step graphs back in the rebuilt model, as `StepGraphs.graph` leaves a graph it built."""
    compiled.training = state["training"]
    steps = state["steps"]
    if steps is None:
        return
    step_graphs = compiled.step_graphs
    for kind, (gm, modified, sites, skips) in steps["graphs"].items():
        step_graphs.weights.adopt(gm)  # the full graph's casts (pickle kept them one object already)
        share_streams(gm, step_graphs.random_streams)  # the loaded model's streams (draws modules save none)
        step_graphs.graphs[kind] = gm
        step_graphs.results[kind] = PassResult(gm, modified, sites, skips)
    step_graphs.tap_settings.update(steps["tap_settings"])
    step_graphs.ran.update(steps["ran"])
