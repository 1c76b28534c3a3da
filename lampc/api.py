"""lampc.compile: capture, rewrite, wrap."""

from __future__ import annotations

from torch import nn

from .capture import Captured, capture
from .passes import run_passes
from .policy import Policy, SitePolicy
from .runtime.compiled import CompiledModel
from .runtime.native import register_static_weights


def compile(model: nn.Module, policy: Policy | SitePolicy | None = None, **overrides) -> CompiledModel:
    """Compile a Hugging Face causal LM (FP32, eager or sdpa attention) into its LAMP form.

    policy:     a `Policy`, a `SitePolicy` (for attention), or None for the default (attention sites, m4,
                strict tau=0.1).
    overrides:  `SitePolicy` fields (format, block_k, backend, criterion, tau, ...) applied to every enabled
                site kind, or `Policy` fields (attention, layer_norm, logits, gelu, sites); `kinds=[...]` picks
                the site kinds (default: attention only, as in the paper).

    >>> compiled = lampc.compile(model, format="m4", criterion="strict", tau=0.1)
    >>> compiled(input_ids).logits
    """
    return compile_captured(capture(model), Policy.from_overrides(policy, **overrides))


def compile_captured(captured: Captured, policy: Policy) -> CompiledModel:
    """The rewrite half of `compile`, on an already captured model (rewrites `captured.graph_module` in place)."""
    result = run_passes(captured.graph_module, policy)
    register_static_weights(result.graph_module.parameters())  # native backend: cast weights once
    return CompiledModel(
        result.graph_module,
        result,
        policy,
        model_type=captured.model_type,
        max_len=captured.max_len,
        vocab_size=captured.vocab_size,
        steps=captured.steps,
        generation_config=captured.generation_config,
    )
