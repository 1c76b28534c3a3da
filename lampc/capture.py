"""Capture: a Hugging Face causal LM -> one fx.GraphModule at the ATen level, before decompositions.

The route that works with transformers 5.x: `torch.export.export(model, (), kwargs=..., strict=False)` with
dynamic batch and sequence dimensions, an `attention_mask` input, `use_cache=False`. The graph is taken
before `run_decompositions()`, so `aten.matmul`, `aten.softmax` and `aten.scaled_dot_product_attention`
are still whole nodes and the site patterns stay readable. Every node keeps `meta["nn_module_stack"]`, from
which lampc names sites by module path (`transformer.h.3.attn`).

What cannot be captured raises `CaptureError`, naming the module whose forward failed and the cause.
"""

from __future__ import annotations

import copy
import inspect
import traceback
import warnings
from dataclasses import dataclass

from typing import TYPE_CHECKING

import torch
from torch import fx, nn

if TYPE_CHECKING:
    from .capture_step import StepCapture

EXAMPLE_BATCH = 2
EXAMPLE_LEN = 16


class CaptureError(RuntimeError):
    """lampc could not capture a model as a graph; the message names the module and the cause."""


@dataclass
class Captured:
    """A captured model: the graph module and what was learnt about the model while capturing it."""

    graph_module: fx.GraphModule
    model_type: str
    max_len: int
    vocab_size: int
    steps: StepCapture | None = None  # the cached-step graphs for decoding, captured on first use
    generation_config: object = None  # the model's transformers GenerationConfig (generate's defaults)


def capture(model: nn.Module, *, max_len: int | None = None) -> Captured:
    """Export `model` (a transformers causal LM in FP32) to an fx.GraphModule of its inference (eval-mode) forward;
    the model's own train/eval mode is restored afterwards."""
    from .capture_step import StepCapture

    config = check_capturable(model)
    max_len = max_len or _max_positions(config)
    ids, mask = _example_inputs(config.vocab_size, next(model.parameters()).device)
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("seq", min=2, max=max_len)
    kwargs = {"input_ids": ids, "attention_mask": mask}
    dynamic = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    if takes_use_cache(model.forward):  # decoders: no cache in the full-sequence graph (encoders and task heads take none)
        kwargs["use_cache"], dynamic["use_cache"] = False, None
    was_training = model.training
    model.eval()  # the graph is the inference forward (dropout off); the user's model is left as it was
    try:
        with torch.no_grad():
            program = torch.export.export(
                model,
                (),
                kwargs=kwargs,
                dynamic_shapes=dynamic,
                strict=False,
            )
    except Exception as err:  # torch.export raises many types; all mean "cannot capture"
        raise CaptureError(describe_failure(model, err)) from err
    finally:
        model.train(was_training)
    return Captured(program.module(), getattr(config, "model_type", type(model).__name__), max_len, config.vocab_size,
                    StepCapture(model, max_len), getattr(model, "generation_config", None))


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
    return f"cannot capture {where}: {type(err).__name__}: {cause}"


def _get(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name) if name and name != type(model).__name__ else model
    except AttributeError:
        return model
