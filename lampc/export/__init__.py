"""ONNX export of lampc-compiled models (standard ONNX ops only) and ONNX Runtime sessions.

    from lampc.export import export_onnx, make_session, run_session, describe_onnx
    export_onnx(compiled, "model.onnx")                     # opset 26, bit-exact rounding via BitCast
    logits = run_session(make_session("model.onnx"), input_ids, attention_mask)["logits"]
"""

import importlib

_LAZY = {"describe_onnx": "describe", "OnnxExport": "onnx", "OnnxExportError": "onnx", "export_onnx": "onnx",
         "OPTIMIZATION_LEVELS": "session", "default_providers": "session", "make_session": "session",
         "run_session": "session"}
"""name -> the submodule that defines it, loaded (with onnx, onnxscript, onnxruntime) when the name is first used:
`lampc export --help` imports this package without them."""


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'lampc.export' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


__all__ = ["OPTIMIZATION_LEVELS", "OnnxExport", "OnnxExportError", "default_providers", "describe_onnx", "export_onnx",
           "make_session", "run_session"]
