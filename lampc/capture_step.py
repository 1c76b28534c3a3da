"""Capture of cached steps: new tokens + a KV cache -> logits + the updated cache, as fx graphs.

Autoregressive decoding runs the model on a few new tokens while attending to the keys and values of every token
before them (the KV cache). lampc captures that step as a graph of its own, with the same `torch.export` route as
the full-sequence graph (lampc/capture.py), and the same passes rewrite it: the attention site of a step is the
same composition, new query rows x cached keys -> softmax (docs/DESIGN.md, "Decoding").

The captured module is `CacheStep` around the Hugging Face model: it builds a transformers `DynamicCache` from
plain per-layer tensors, calls the model with `use_cache=True`, and returns the grown tensors, so the graph's
inputs and outputs are tensors only (no cache object crosses the graph boundary):

    logits, keys, values = step(input_ids, attention_mask, position_ids, past_keys, past_values)
    # input_ids    i64[B, T]           the new tokens
    # attention_mask i64[B, P + T]     1 = token, 0 = padding, over past and new tokens
    # position_ids i64[B, T]           as Hugging Face's generate computes them (cumsum of the mask - 1)
    # past_keys    (f32[B, H_kv, P, D], ...) one per layer; past_values alike
    # keys, values (f32[B, H_kv, P + T, D], ...)

Why this route and not transformers' `StaticCache` exporters: a static cache fixes the batch and the maximum
length at capture time and attends over the whole buffer (masked) at every step, so the look-ahead and the
recompute-rate statistics would see max_len keys per row; a dynamic cache attends over exactly the P + T keys a
full-sequence model sees at that row, which is what makes a decode step's selection comparable to the prefill's.

torch.export specialises on sizes 0 and 1 (aten.matmul's decomposition asks whether a dimension is 1), so a step
is captured per shape class (`StepCapture` captures each once; `lampc.compile` asks for all of them, see its `steps`):

    prefill   B >= 1, T >= 2, P >= 0     the prompt (P = 0) or a chunk of it
    decode    B >= 2, T = 1,  P >= 1     one new token per sequence
    decode_1  B = 1,  T = 1,  P >= 1     one sequence (GPT-2's fused QKV makes B = 1 a different view)

A single new token with no past (a one-token prompt) runs as `decode_1`/`decode` over one masked placeholder
slot (runtime/steps.py): a masked key gets probability exactly 0, so the values equal those of an empty past.

Sliding-window attention (Mistral, Phi-3, Gemma2, Gemma3) decodes through the same graphs: every cache layer keeps
every position and the model's own window mask hides what lies beyond (`full_cache`). Bloom's ALiBi bias is built
from the attention mask, so a decode step's mask length is declared as past + 1, which it always is.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, fx, nn

from .capture import CAPTURE_LOCK, CaptureError, check_capturable, copy_sharing_weights, describe_failure, \
    exclusive_capture

STEP_KINDS = ("prefill", "decode", "decode_1")


class CacheStep(nn.Module):
    """The Hugging Face model as a function of plain cache tensors (see module docstring)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, past_keys, past_values):
        cache = full_cache(self.model.config, past_keys, past_values)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=True, **{cache_argument(self.model): cache})
        grown = returned_cache(out)
        return out.logits, tuple(layer.keys for layer in grown.layers), tuple(layer.values for layer in grown.layers)


def full_cache(config, past_keys, past_values):
    """A transformers DynamicCache holding these keys and values, every layer keeping every position.

    transformers' own cache for a sliding-window layer (DynamicSlidingWindowLayer, in transformers 5) keeps only
    the last `sliding_window - 1` positions between steps (its update slices `[-sliding_window + 1:]`; its class
    docstring's `min(seq_len, sliding_window)` is one more than it keeps), attends over those and the step's new
    tokens, and offsets the mask by what it dropped. A cache that keeps them all gives the same logits: the model's
    sliding-window mask compares cache indices (key > query - window) and hides every key beyond the window
    (probability exactly 0, so those keys are not visible entries in lampc's statistics either). Keeping every
    position makes a step's shapes depend on (past, new) alone, never on whether the window is full, so one
    captured graph serves sequences shorter and longer than the window, and lampc's KVCache stays the plain
    "every past position" tensor of full attention. Gemma2/Gemma3 mix sliding and full layers: only the sliding
    ones are replaced."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    cache = DynamicCache(config=config)
    for index, layer in enumerate(cache.layers):
        if type(layer) is DynamicSlidingWindowLayer:  # sliding and chunked attention: the layer that crops
            cache.layers[index] = DynamicLayer()
    for layer, (k, v) in enumerate(zip(past_keys, past_values)):
        cache.update(k, v, layer)
    return cache


def cache_argument(model: nn.Module) -> str:
    """The name the model's forward takes its cache by: `cache` (transformers >= 5.x) or `past_key_values`."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def returned_cache(out):
    """The cache a transformers output holds, under either name."""
    keys = out.keys() if hasattr(out, "keys") else ()
    return out["cache"] if "cache" in keys else out.get("past_key_values", None)


@dataclass(frozen=True)
class CacheLayout:
    """The shape of one token's cache entry per layer: (kv heads, head dim), as the model itself writes it."""

    heads: tuple[tuple[int, int], ...]

    @property
    def n_layers(self) -> int:
        return len(self.heads)

    def empty(self, batch: int, length: int, device) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        """Zero keys and values of `length` positions per layer."""
        keys = tuple(torch.zeros(batch, h, length, d, device=device) for h, d in self.heads)
        values = tuple(torch.zeros(batch, h, length, d, device=device) for h, d in self.heads)
        return keys, values


def cache_layout(model: nn.Module) -> CacheLayout:
    """Run the model once on one token and read what its cache holds per layer."""
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), use_cache=True)
    layers = getattr(returned_cache(out), "layers", None)
    if not layers:
        raise CaptureError(f"{type(model).__name__}: use_cache=True returned no per-layer cache; lampc decodes "
                           "models whose forward fills a transformers Cache with keys and values")
    heads = []
    for index, layer in enumerate(layers):
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not isinstance(keys, Tensor) or keys.dim() != 4 or not isinstance(values, Tensor) \
                or values.shape[:3] != keys.shape[:3]:
            raise CaptureError(f"{type(model).__name__}: cache layer {index} holds no (batch, heads, seq, dim) "
                               "keys and values; lampc decodes models with a plain per-layer KV cache")
        heads.append((keys.shape[1], keys.shape[3]))
    return CacheLayout(tuple(heads))


class StepCapture:
    """The captured (not yet rewritten) step graphs of one model, each captured when first asked for and kept.

    `graph(kind)` returns a fresh copy that a compile may rewrite; the copies share the model's weights. One
    StepCapture serves every compile of the same model (lampc.cells.CellCompiler captures each step once, like the
    full-sequence graph). It holds the model: a compiled model keeps it only while it has step graphs to build
    (`lampc.compile(..., steps="lazy")`).
    """

    def __init__(self, model: nn.Module, max_len: int):
        self.model = model
        self.max_len = max_len
        self._layout: CacheLayout | None = None
        self._graphs: dict[str, fx.GraphModule] = {}

    @property
    def layout(self) -> CacheLayout:
        if self._layout is None:
            with CAPTURE_LOCK:  # runs the model: never while another thread's capture holds its fake tensors
                if self._layout is None:
                    self._layout = cache_layout(self.model)
        return self._layout

    def capture_all(self) -> None:
        """Capture every step kind not captured yet (each once: `graph` then only copies)."""
        with CAPTURE_LOCK:
            for kind in STEP_KINDS:
                if kind not in self._graphs:
                    self._graphs[kind] = self._capture(kind)

    def graph(self, kind: str) -> fx.GraphModule:
        if kind not in STEP_KINDS:
            raise ValueError(f"step kind must be one of {', '.join(STEP_KINDS)}, got {kind!r}")
        with CAPTURE_LOCK:  # concurrent first calls: one captures, the others wait and take its graph
            if kind not in self._graphs:
                self._graphs[kind] = self._capture(kind)
            return copy_sharing_weights(self._graphs[kind])

    def _capture(self, kind: str) -> fx.GraphModule:
        check_capturable(self.model)
        if self.max_len < 3:
            raise CaptureError(f"the model's context ({self.max_len}) is too short to decode")
        example, dynamic = _example(kind, self.layout, self.max_len, next(self.model.parameters()).device,
                                    self.model.config.vocab_size)
        with exclusive_capture(self.model):
            try:
                with torch.no_grad(), _size_oblivious():
                    program = torch.export.export(CacheStep(self.model), example, dynamic_shapes=dynamic,
                                                  strict=False)
            except Exception as err:  # torch.export raises many types; all mean "cannot capture"
                raise CaptureError(f"{kind} step: " + describe_failure(self.model, err)) from err
        gm = program.module()
        _strip_wrapper_paths(gm)
        return gm


class UncapturableSteps:
    """Stands for the step capture of a model whose cached steps cannot be captured (an encoder, a model without a
    KV cache, a step torch.export fails on): every use raises the CaptureError that said why. Holds no model."""

    model = None

    def __init__(self, reason: str, max_len: int):
        self.reason = reason
        self.max_len = max_len

    @property
    def layout(self) -> CacheLayout:
        raise CaptureError(self.reason)

    def capture_all(self) -> None:
        raise CaptureError(self.reason)

    def graph(self, kind: str) -> fx.GraphModule:
        raise CaptureError(self.reason)


def uncapturable(model: nn.Module, source, err: CaptureError) -> UncapturableSteps:
    """What stands for `source` once capturing its steps failed with `err`; one warning if the model says it can
    generate (a decoder lampc cannot decode), none for models that never decode (encoders, task heads)."""
    if isinstance(source, UncapturableSteps):
        return source
    can_generate = getattr(model, "can_generate", None)
    if callable(can_generate) and can_generate():
        warnings.warn(f"lampc: {type(model).__name__}'s cached steps cannot be captured, so the compiled model cannot "
                      f"decode (generate and use_cache raise this): {err}. Its forward is compiled; "
                      "steps=\"none\" compiles the forward alone without this warning", stacklevel=4)
    return UncapturableSteps(str(err), source.max_len)


def _strip_wrapper_paths(gm: fx.GraphModule) -> None:
    """Module paths as in the model itself ("transformer.h.0.attn", not "model.transformer.h.0.attn"), so a step
    graph's sites carry the names of the full-sequence graph's."""
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if not stack:
            continue
        renamed = {}
        for key, (path, kind) in stack.items():
            if path == "model":
                continue  # the wrapped model itself: the top level, as in the full-sequence capture
            renamed[key] = (path[len("model."):] if isinstance(path, str) and path.startswith("model.") else path, kind)
        node.meta["nn_module_stack"] = renamed


def _example(kind: str, layout: CacheLayout, max_len: int, device, vocab: int):
    """Example inputs and dynamic shapes of one step kind (see the table in the module docstring)."""
    Dim = torch.export.Dim
    batch, new, past = {"prefill": (2, 3, 4), "decode": (2, 1, 5), "decode_1": (1, 1, 5)}[kind]
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, new), generator=generator).to(device)
    mask = torch.ones(batch, past + new, dtype=torch.long, device=device)
    mask[-1, 0] = 0  # a padded position keeps the general masking path
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, past:]
    keys, values = layout.empty(batch, past, device)
    if kind == "prefill":
        b, t, p = Dim("batch", min=1, max=4096), Dim("new", min=2, max=max_len), Dim("past", min=0, max=max_len - 2)
        total = Dim("total", min=2, max=max_len)
    else:
        b = Dim("batch", min=2, max=4096) if kind == "decode" else Dim.STATIC
        t, p = Dim.STATIC, Dim("past", min=1, max=max_len - 1)
        total = p + 1  # the mask covers the past and the one new token (ALiBi builds its bias from the mask)
    cache = tuple({0: b, 2: p} for _ in range(layout.n_layers))
    dynamic = {"input_ids": {0: b, 1: t}, "attention_mask": {0: b, 1: total}, "position_ids": {0: b, 1: t},
               "past_keys": cache, "past_values": cache}
    return (ids, mask, positions, keys, values), dynamic


def _size_oblivious():
    """Let sizes 0 and 1 stay symbolic where torch can (the empty cache of a prefill step)."""
    try:
        from torch.fx.experimental import _config

        return _config.patch(backed_size_oblivious=True)
    except (ImportError, AttributeError):  # older torch: the default specialisation
        import contextlib

        return contextlib.nullcontext()
