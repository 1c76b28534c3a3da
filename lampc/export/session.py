"""ONNX Runtime sessions for exported lampc models, and a checked way to run them.

    sess = make_session("model.onnx", optimization="all")          # CUDA if onnxruntime-gpu and a GPU, else CPU
    logits = sess(input_ids)["logits"]                             # checked inputs; attention_mask: ones if absent
    logits = run_session(sess, input_ids, attention_mask)["logits"]  # the same, for any InferenceSession
    sess.run(None, {"input_ids": ids, "attention_mask": mask})     # ONNX Runtime's own call, unchanged

An exported file has no KV cache: each call is one full-sequence forward (input_ids and attention_mask, both
int64 (batch, seq), seq at most the model's position table, `lampc.max_len` in the file's metadata). ONNX Runtime
itself requires attention_mask and answers a bad input with an error from deep inside the graph (a Gather past
the position table, a Reshape for a mask of another shape) or silently (a negative token id, a mask value 2);
`run_session` checks every input first and names it.
"""

from __future__ import annotations

import functools
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
) -> "LampcSession":
    """A `LampcSession` (an onnxruntime.InferenceSession, callable with checked inputs) on the model at `path`.

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
    return LampcSession(path, options, providers=providers or default_providers())


class LampcSession(ort.InferenceSession):
    """ONNX Runtime's InferenceSession on a lampc export, unchanged (`run`, `get_inputs`, ... are ORT's), and
    callable: `session(input_ids, attention_mask=None, outputs=None)` is `run_session(session, ...)`."""

    def __call__(self, input_ids, attention_mask=None, *, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        return run_session(self, input_ids, attention_mask, outputs=outputs)

    @functools.cached_property
    def max_len(self) -> int | None:
        """The model's position table (the longest sequence one call takes), from the file's metadata."""
        return _metadata_int(self._metadata, "lampc.max_len")

    @functools.cached_property
    def vocab_size(self) -> int | None:
        """Token ids must be in [0, vocab_size), from the file's metadata."""
        return _metadata_int(self._metadata, "lampc.vocab_size")

    @functools.cached_property
    def _metadata(self) -> dict[str, str]:
        """The file's metadata, read once: a session's model does not change."""
        return dict(self.get_modelmeta().custom_metadata_map)


def _limits(sess: ort.InferenceSession) -> tuple[int | None, int | None]:
    """(max_len, vocab_size) from the file's lampc metadata (a LampcSession's, read once)."""
    if isinstance(sess, LampcSession):
        return sess.max_len, sess.vocab_size
    metadata = sess.get_modelmeta().custom_metadata_map
    return _metadata_int(metadata, "lampc.max_len"), _metadata_int(metadata, "lampc.vocab_size")


def _metadata_int(metadata, key: str) -> int | None:
    value = metadata.get(key, "")
    return int(value) if value.isdigit() else None


def run_session(sess: ort.InferenceSession, input_ids, attention_mask=None, *, outputs: list[str] | None = None
                ) -> dict[str, np.ndarray]:
    """Run an exported lampc model once over whole sequences (the file has no KV cache): `input_ids` (batch, seq)
    int64 token ids, `attention_mask` (batch, seq) int64 0/1 (default: all ones, as the PyTorch model). Accepts
    numpy arrays or torch tensors; every input is checked first (shape, dtype, values, the position table and
    vocabulary read from the file's lampc metadata), and a bad one is a ValueError/TypeError naming it. Returns
    {output name: array}, all outputs unless `outputs` names some (an empty list is refused: ONNX Runtime would
    answer it with every output)."""
    max_len, vocab = _limits(sess)
    ids = check_input_ids(input_ids, max_len, vocab)
    mask = np.ones_like(ids) if attention_mask is None else check_attention_mask(attention_mask, ids.shape)
    available = [o.name for o in sess.get_outputs()]
    names = available if outputs is None else _check_outputs(outputs, available)
    feed = {"input_ids": ids, "attention_mask": mask}
    takes = {i.name for i in sess.get_inputs()}
    if not takes <= set(feed):
        raise ValueError(f"this ONNX model takes inputs {sorted(takes)}; run_session feeds input_ids and "
                         "attention_mask only (is it a lampc export?)")
    values = sess.run(names, {name: feed[name] for name in takes})
    return dict(zip(names, values))


def check_input_ids(input_ids, max_len: int | None, vocab_size: int | None) -> np.ndarray:
    """input_ids as int64 (batch, seq), 1 <= seq <= max_len, ids in [0, vocab_size) (limits None: unchecked)."""
    ids = _as_int64("input_ids", input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must have shape (batch, seq), got {ids.shape}")
    batch, seq = ids.shape
    if batch == 0:
        raise ValueError("input_ids: a batch of 0 sequences")
    if seq == 0:
        raise ValueError("input_ids: sequence length 0; a call needs at least 1 token per sequence")
    if max_len is not None and seq > max_len:
        raise ValueError(
            f"input_ids: sequence length {seq} is past the model's {max_len} positions (its position table, "
            f"lampc.max_len in the file); the ONNX file has no KV cache and runs the whole sequence in one call, "
            f"so at most {max_len} tokens: truncate or split the input")
    if vocab_size is not None and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"input_ids: token ids must be in [0, {vocab_size}), got [{ids.min()}, {ids.max()}]")
    return ids


def check_attention_mask(attention_mask, shape: tuple[int, ...]) -> np.ndarray:
    """attention_mask as int64 of `shape` (that of input_ids), holding 0 (padding) and 1 (token) only."""
    mask = _as_int64("attention_mask", attention_mask)
    if mask.shape != tuple(shape):
        raise ValueError(f"attention_mask must have the shape of input_ids {tuple(shape)}, got {mask.shape}")
    bad = mask[(mask != 0) & (mask != 1)]
    if bad.size:
        raise ValueError(f"attention_mask must contain only 0 (padding) and 1 (token), got {bad[0]}")
    return mask


def _check_outputs(outputs, available: list[str]) -> list[str]:
    if isinstance(outputs, str) or not all(isinstance(name, str) for name in outputs):
        raise TypeError(f"outputs must be a list of output names, got {outputs!r}")
    if len(outputs) == 0:
        raise ValueError(f"outputs: an empty list names no output; give the names wanted, or None for all (it has: "
                         f"{', '.join(available)})")
    for name in outputs:
        if name not in available:
            raise ValueError(f"outputs: {name!r} is not an output of this model (it has: {', '.join(available)})")
    return list(outputs)


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
