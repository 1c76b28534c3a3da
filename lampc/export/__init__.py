"""ONNX export of lampc-compiled models (standard ONNX ops only) and ONNX Runtime sessions.

    from lampc.export import export_onnx, make_session, run_session, describe_onnx
    export_onnx(compiled, "model.onnx")                     # opset 26, bit-exact rounding via BitCast
    logits = run_session(make_session("model.onnx"), input_ids, attention_mask)["logits"]
"""

from .describe import describe_onnx
from .onnx import OnnxExport, OnnxExportError, export_onnx
from .session import OPTIMIZATION_LEVELS, default_providers, make_session, run_session

__all__ = ["OPTIMIZATION_LEVELS", "OnnxExport", "OnnxExportError", "default_providers", "describe_onnx", "export_onnx",
           "make_session", "run_session"]
