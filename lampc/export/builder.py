"""Builder: the onnxscript opset a translation emits into, plus cached typed constants.

Inside `torch.onnx.export`, calls like `g.Add(x, y)` are recorded by the exporter's tracer as ONNX nodes; the
builder only adds `g.const(value, dtype)` (one Constant node per distinct value and dtype within one
translation) and a few shape helpers. The opset object is `Opset("", version)` so ops newer than onnxscript's
bundled opsets (BitCast, opset 26) resolve from the installed onnx's schemas.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.values import Opset

INT64, BOOL = 7, 9  # onnx.TensorProto data types


class Builder:
    def __init__(self, opset_version: int):
        self.op = Opset("", opset_version)
        self.opset_version = opset_version
        self._constants: dict[tuple, object] = {}

    def __getattr__(self, name: str):
        return getattr(self.op, name)

    def const(self, value, dtype=np.float32):
        """A Constant node holding `value` (scalar or array) as numpy dtype `dtype`; cached per value."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            self._constants[key] = self.op.Constant(value=ir.tensor(array))
        return self._constants[key]

    def axes(self, *axes: int):
        return self.const(list(axes), np.int64)

    def last_dim(self, x):
        """The size of x's last axis as an int64 tensor of shape [1] (dynamic-shape safe)."""
        return self.op.Shape(x, start=-1)
