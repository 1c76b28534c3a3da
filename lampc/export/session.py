"""ONNX Runtime sessions for exported lampc models, and a checked way to run them.

    sess = make_session("model.onnx", optimization="all")          # CUDA if onnxruntime-gpu and a GPU, else CPU
    logits = run_session(sess, input_ids, attention_mask)["logits"]  # numpy or torch int64 inputs, checked
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort

OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
"""Names of ONNX Runtime's graph optimisation levels; lampc's rounding survives every one (tests check it)."""


def default_providers() -> list[str]:
    """["CUDAExecutionProvider", "CPUExecutionProvider"] when onnxruntime-gpu and a GPU are present, else CPU."""
    if "CUDAExecutionProvider" in ort.get_available_providers() and _gpu_present():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _gpu_present() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # torch is a lampc dependency; without it, trust the provider list
        return True


def make_session(
    path: str | os.PathLike,
    *,
    optimization: str = "all",
    providers: list[str] | None = None,
    threads: int | None = None,
) -> ort.InferenceSession:
    """An onnxruntime.InferenceSession on the exported model at `path`.

    optimization: "disable", "basic", "extended" or "all" (ORT's graph optimisation levels).
    providers:    execution providers in priority order; default `default_providers()`.
    threads:      intra-op threads (default: ORT's choice).
    """
    path = os.fspath(path)
    if optimization not in OPTIMIZATION_LEVELS:
        raise ValueError(f"optimization must be one of {', '.join(OPTIMIZATION_LEVELS)}, got {optimization!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no ONNX model at {path!r}")
    options = ort.SessionOptions()
    options.graph_optimization_level = OPTIMIZATION_LEVELS[optimization]
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(path, options, providers=providers or default_providers())



def run_session(sess: ort.InferenceSession, input_ids, attention_mask=None, *, outputs: list[str] | None = None
                ) -> dict[str, np.ndarray]:
    """Run an exported lampc model: `input_ids` (batch, seq) int64 token ids, `attention_mask` (batch, seq) int64
    0/1 (default: all ones). Accepts numpy arrays or torch tensors. Returns {output name: array}."""
    ids = _as_int64("input_ids", input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must have shape (batch, seq), got {ids.shape}")
    mask = np.ones_like(ids) if attention_mask is None else _as_int64("attention_mask", attention_mask)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask must be shaped like input_ids {ids.shape}, got {mask.shape}")
    names = outputs or [o.name for o in sess.get_outputs()]
    values = sess.run(names, {"input_ids": ids, "attention_mask": mask})
    return dict(zip(names, values))


def _as_int64(name: str, value) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or torch tensor of int64 token ids, got {type(value).__name__}")
    if value.dtype != np.int64:
        if value.dtype.kind in "iu":
            return value.astype(np.int64)
        raise TypeError(f"{name} must be an integer array (int64), got dtype {value.dtype}")
    return value
