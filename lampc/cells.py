"""CellCompiler: `lampc.compile` for many policies of one model, capturing each graph once.

Capturing (torch.export) is most of compile's cost; the rewrite itself is cheap. CellCompiler captures the
full-sequence graph once, and each cached-step graph (prefill, decode) once, and rewrites a fresh copy of them for
every policy (a sweep's cells, a task comparison's policies, calibration's). Each call returns the same
`CompiledModel` that `lampc.compile(model, policy, steps=steps, **overrides)` returns (tests/test_sweep.py checks
it is identical):

    compiler = CellCompiler(model, steps="eager")    # steps captured here; each compiled model is finished
    compiled = compiler(format="m4", criterion="strict", tau=0.1)
    CellCompiler(model, steps="none")                # cells that never generate: no step capture at all
    CellCompiler(model)                              # steps="lazy": each step captured once, when a cell needs it
"""

from __future__ import annotations

import dataclasses

from torch import nn

from .api import check_steps, compile_captured
from .capture import CaptureError, capture, copy_sharing_weights
from .capture_step import StepCapture, uncapturable
from .policy import Policy


class CellCompiler:
    """Compiles `model` under one policy per call, from one capture (see module docstring).

    steps: as lampc.compile takes it: "eager" captures the step graphs here, with the full-sequence graph, and
    builds each cell's at its compile; "lazy" (the default: a caller that compiles many cells knows whether they
    decode) captures each at the first cached call of any cell that needs it and builds each cell's on use;
    "none" captures none. The compiler holds the model (its step capture does); compiled models built eagerly do
    not."""

    def __init__(self, model: nn.Module, *, steps: str = "lazy"):
        self.steps = check_steps(steps)
        self.captured = capture(model)
        self.step_capture = None if steps == "none" else StepCapture(model, self.captured.max_len)
        if steps == "eager":
            try:
                self.step_capture.capture_all()
            except CaptureError as err:  # a model that cannot decode: its cells compile the forward alone
                self.step_capture = uncapturable(model, self.step_capture, err)

    def __call__(self, policy=None, *, allow_no_sites: bool = False, **overrides):
        copy_ = dataclasses.replace(self.captured, graph_module=copy_sharing_weights(self.captured.graph_module))
        return compile_captured(copy_, Policy.from_overrides(policy, **overrides), allow_no_sites=allow_no_sites,
                                steps=self.step_capture, when=self.steps)
