"""Capture: a Hugging Face causal LM -> one fx.GraphModule at the ATen level, before decompositions.

The route that works with transformers 5.x: `torch.export.export(model, (), kwargs=..., strict=False)` with
dynamic batch and sequence dimensions, an `attention_mask` input, `use_cache=False`. The graph is taken
before `run_decompositions()`, so `aten.matmul`, `aten.softmax` and `aten.scaled_dot_product_attention`
are still whole nodes and the site patterns stay readable. Every node keeps `meta["nn_module_stack"]`, from
which lampc names sites by module path (`transformer.h.3.attn`).

What cannot be captured raises `CaptureError`, naming the module whose forward failed, the cause, and the model's
forward hooks if it has any (they run inside the traced forward). Encoder-decoders are refused up front.

A capture never harms the model it was given: torch.export swaps the model's parameters and buffers for fake
tensors while it traces, so one capture runs at a time (`exclusive_capture`: threads that compile, or that capture
step graphs (lampc/capture_step.py, which builds on this module), wait for each other), and whatever the trace did,
every parameter and buffer is put back afterwards.
"""

from __future__ import annotations

import copy
import inspect
import threading
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import fx, nn

EXAMPLE_BATCH = 2
EXAMPLE_LEN = 16

CAPTURE_LOCK = threading.RLock()
"""Held by every capture (torch.export of a model or of its cached step, and torch.onnx.export's, which runs
torch.export), by run_passes, by every first build of a step graph, and while the step capture reads the model's
cache layout (it runs the model)."""


class CaptureError(RuntimeError):
    """lampc could not capture a model as a graph; the message names the module and the cause."""


@dataclass
class Captured:
    """A captured model: the full-sequence graph module and what was learnt about the model while capturing it
    (no reference to the model itself). Its cached-step graphs are captured apart (lampc/capture_step.py)."""

    graph_module: fx.GraphModule
    model_type: str
    max_len: int
    vocab_size: int
    generation_config: object = None  # the model's transformers GenerationConfig (generate's defaults)


def capture(model: nn.Module, *, max_len: int | None = None) -> Captured:
    """Export `model` (a transformers causal LM in FP32) to an fx.GraphModule of its inference (eval-mode) forward;
    the model's own train/eval mode is restored afterwards."""
    config = check_capturable(model)
    max_len = max_len or _max_positions(config)
    ids, mask = _example_inputs(config.vocab_size, next(model.parameters()).device)
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("seq", min=2, max=max_len)
    kwargs = {"input_ids": ids, "attention_mask": mask}
    dynamic = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    if takes_use_cache(model.forward):  # decoders: no cache in the full-sequence graph (encoders and task heads take none)
        kwargs["use_cache"], dynamic["use_cache"] = False, None
    with exclusive_capture(model):  # the graph is the inference forward (dropout off); the model is left as it was
        try:
            with torch.no_grad():
                program = torch.export.export(model, (), kwargs=kwargs, dynamic_shapes=dynamic, strict=False)
        except Exception as err:  # torch.export raises many types; all mean "cannot capture"
            raise CaptureError(describe_failure(model, err)) from err
    return Captured(program.module(), getattr(config, "model_type", type(model).__name__), max_len, config.vocab_size,
                    getattr(model, "generation_config", None))


@contextmanager
def exclusive_capture(model: nn.Module):
    """One capture at a time, in eval mode; afterwards (success or failure) the model's own mode, parameters and
    buffers, whatever the trace left in their place (see module docstring)."""
    with CAPTURE_LOCK:
        own = [(store, name, tensor) for module in model.modules()
               for store in (module._parameters, module._buffers) for name, tensor in store.items()]
        was_training = model.training
        model.eval()
        try:
            yield
        finally:
            for store, name, tensor in own:
                if store.get(name) is not tensor:
                    store[name] = tensor
            model.train(was_training)


def takes_use_cache(forward) -> bool:
    """Whether a forward (a model's, or the graph captured from it) names a `use_cache` argument: decoders do;
    BERT-style encoders and task heads take **kwargs, which torch.export cannot be given a dynamic-shape spec for."""
    return "use_cache" in inspect.signature(forward).parameters


def copy_sharing_weights(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of a captured graph that a pass may rewrite, its parameters and buffers the same tensors as gm's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # pytree deprecation noise from deepcopy
        shared = {id(t): t for t in (*gm.parameters(), *gm.buffers())}
        return copy.deepcopy(gm, memo=shared)


def check_capturable(model: nn.Module):
    """The model's config if lampc can capture `model` (an FP32 transformers LM, eager or sdpa), else CaptureError."""
    if not isinstance(model, nn.Module):
        raise CaptureError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "vocab_size"):
        raise CaptureError(
            f"model {type(model).__name__} has no Hugging Face config with a vocab_size; lampc captures "
            "transformers causal LMs (input_ids, attention_mask -> logits)"
        )
    if getattr(config, "is_encoder_decoder", False):
        raise CaptureError(
            f"{type(model).__name__} is an encoder-decoder ({getattr(config, 'model_type', 'unknown')}): lampc covers "
            "decoder-only causal LMs and encoders, not encoder-decoders (their decoder's cross-attention over the "
            "encoder's output is not captured)")
    _check_fp32(model)
    meta = [name for name, p in model.named_parameters() if p.device.type == "meta"]
    if meta:
        raise CaptureError(f"parameter {meta[0]} (and {len(meta) - 1} more) is on the meta device: the model has no "
                           "weights yet (load them, e.g. from_pretrained, or model.to_empty + load_state_dict)")
    impl = getattr(config, "_attn_implementation", "eager") or "eager"
    if impl not in ("eager", "sdpa"):
        raise CaptureError(
            f"{type(model).__name__}: attn_implementation={impl!r} is not supported; load the model with "
            "attn_implementation='eager' (or 'sdpa')"
        )
    return config


def _check_fp32(model: nn.Module) -> None:
    for name, param in model.named_parameters():
        if param.dtype != torch.float32:
            raise CaptureError(
                f"parameter {name} is {param.dtype}; lampc compiles the FP32 model (call model.float() first): "
                "the low precision is what lampc adds"
            )


def _max_positions(config) -> int:
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 2:
            return value
    return 2048


def _example_inputs(vocab_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Example ids and a mask with one padded position, so the capture keeps the general masking path."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (EXAMPLE_BATCH, EXAMPLE_LEN), generator=generator).to(device)
    mask = torch.ones(EXAMPLE_BATCH, EXAMPLE_LEN, dtype=torch.long, device=device)
    mask[1, 0] = 0  # left padding in the second sequence
    return ids, mask


def describe_failure(model: nn.Module, err: Exception) -> str:
    """Name the innermost module of `model` whose forward was running when the capture failed."""
    names = {id(module): name for name, module in model.named_modules()}
    culprit = None
    for frame, _ in traceback.walk_tb(err.__traceback__):
        owner = frame.f_locals.get("self")
        if owner is not None and id(owner) in names:
            culprit = names[id(owner)] or type(model).__name__
    where = f"module {culprit!r} ({type(_get(model, culprit)).__name__})" if culprit else type(model).__name__
    cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"cannot capture {where}: {type(err).__name__}: {cause}" + describe_hooks(model, err)


def describe_hooks(model: nn.Module, err: Exception) -> str:
    """'' for a model without forward hooks, else a sentence naming them (module path and function) and the one
    that was running when the capture failed: hooks run inside the traced forward, where torch.export may fail."""
    running = {frame.f_code for frame, _ in traceback.walk_tb(err.__traceback__)}
    found: dict[str, list[str]] = {}
    culprits = []
    for kind, place, hook in forward_hooks(model):
        label = f"{place} ({getattr(hook, '__qualname__', type(hook).__name__)})"
        found.setdefault(kind, []).append(label)
        if getattr(hook, "__code__", None) in running:
            culprits.append(f"{kind} {label}")
    if not found:
        return ""
    listed = "; ".join(f"{len(labels)} {kind}{'s' if len(labels) > 1 else ''} on {', '.join(labels[:5])}"
                       + (f" and {len(labels) - 5} more" if len(labels) > 5 else "") for kind, labels in found.items())
    failed = f"; the capture failed inside the {culprits[0]}" if culprits else ""
    return (f". The model has {listed}{failed}. Hooks run inside the captured forward: remove them "
            "(handle.remove()) before lampc.compile and the first generate, or make them traceable by torch.export")


def forward_hooks(model: nn.Module):
    """(kind, where, hook) of every forward (pre-)hook that runs in model's forward: its modules', then torch's
    global ones (torch.nn.modules.module.register_module_forward_hook)."""
    from torch.nn.modules import module as nn_module

    for name, module in model.named_modules():
        for kind, store in (("forward pre-hook", module._forward_pre_hooks), ("forward hook", module._forward_hooks)):
            for hook in store.values():
                yield kind, name or type(model).__name__, hook
    for kind, store in (("forward pre-hook", nn_module._global_forward_pre_hooks),
                        ("forward hook", nn_module._global_forward_hooks)):
        for hook in store.values():
            yield kind, "every module (a global hook)", hook


def _get(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name) if name and name != type(model).__name__ else model
    except AttributeError:
        return model
