"""lampc.compile: capture, rewrite, check, wrap; a compile that lowers nothing it was asked to is an error.

The full-sequence graph is captured, rewritten and checked here. The cached-step graphs (the prefill and decode
steps that generate and use_cache run) are made when `steps` says (STEPS): with steps="eager" the compiled model
is finished when `compile` returns and keeps no reference to the Hugging Face model (the graphs share its
weights). By default they are built at the first call that needs them, and the first such build says so, since
capturing all three costs about three times the compile (measured in docs/RELIABILITY.md).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .capture import Captured, capture
from .capture_step import StepCapture
from .passes import run_passes
from .policy import Policy, SitePolicy
from .runtime.compiled import CompiledModel

STEPS = {
    "eager": "the cached-step graphs (prefill, decode, decode_1) are captured, rewritten and checked at compile, "
             "which takes about four times as long (three more torch.export captures); the compiled model keeps no "
             "reference to the Hugging Face model",
    "lazy": "each step graph is captured, rewritten and checked at the first generate / use_cache call that needs "
            "it (each about as long as a compile; a first generate builds two: prefill, then decode or decode_1 "
            "for one sequence), its site check raising there; the Hugging Face model is kept until all are built",
    "none": "no step graphs: the full-sequence forward alone; generate and use_cache raise",
}
"""compile(..., steps=...): when the graphs that decode with a KV cache are made. None (the default): "lazy", and
the first build tells the user so (one warning naming its cost and the choices)."""


class NoSitesError(ValueError):
    """A requested site kind found no site in the model: the compiled model would silently be FP32 there. The
    message lists why each candidate was skipped; `compile(..., allow_no_sites=True)` accepts it."""


def compile(model: nn.Module, policy: Policy | SitePolicy | None = None, *, allow_no_sites: bool = False,
            steps: str | None = None, **overrides) -> CompiledModel:
    """Compile a Hugging Face causal LM (FP32, eager or sdpa attention) into its LAMP form.

    policy:     a `Policy`, a `SitePolicy` (for attention), or None for the default (attention sites, m4,
                strict tau=0.1).
    overrides:  `SitePolicy` fields (format, block_k, backend, criterion, tau, ...) applied to every enabled
                site kind, or `Policy` fields (attention, layer_norm, logits, gelu, sites); `kinds=[...]` picks
                the site kinds (default: attention only, as in the paper).

    allow_no_sites: accept a requested site kind that finds no site (else NoSitesError, naming the reasons).
                Candidates skipped beside found sites give one warning with their count and the first reason.
    steps:      "eager", "lazy" or "none": when the cached-step graphs of generate / use_cache are made (STEPS
                says what each costs); default None: "lazy", with one warning at the first build. Their sites must
                be the full-sequence graph's one to one, else StepSitesError (lampc.runtime.steps; a CaptureError).

    >>> compiled = lampc.compile(model, format="m4", criterion="strict", tau=0.1)
    >>> compiled(input_ids).logits
    """
    if not isinstance(allow_no_sites, bool):
        raise TypeError(f"allow_no_sites must be True or False, got {allow_no_sites!r}")
    check_steps(steps)
    policy = Policy.from_overrides(policy, **overrides)  # a bad policy is refused before the (slow) capture
    captured = capture(model)
    source = None if steps == "none" else StepCapture(model, captured.max_len)
    return compile_captured(captured, policy, allow_no_sites=allow_no_sites, steps=source, when=steps)


def check_steps(steps) -> str | None:
    """`steps` if it is None or one of STEPS, else a ValueError naming them."""
    if steps is not None and (not isinstance(steps, str) or steps not in STEPS):
        raise ValueError(f"steps must be one of {', '.join(map(repr, STEPS))} (or None: 'lazy', saying so), got "
                         f"{steps!r}")
    return steps


def compile_captured(captured: Captured, policy: Policy, *, allow_no_sites: bool = False,
                     steps: StepCapture | None = None, when: str | None = None) -> CompiledModel:
    """The rewrite half of `compile`, on an already captured model (rewrites `captured.graph_module` in place).

    steps: the model's captured steps (None: no step graphs); when: compile's `steps` ("eager": built and checked
    here). A StepCapture keeps what it captured, so compiles that share one capture each step once
    (lampc.cells.CellCompiler)."""
    result = run_passes(captured.graph_module, policy)
    check_sites(result, policy, captured.model_type, allow_no_sites=allow_no_sites)
    warn_if_native_is_slow(policy, next(iter(captured.graph_module.parameters()), None))
    compiled = CompiledModel(
        result.graph_module,
        result,
        policy,
        model_type=captured.model_type,
        max_len=captured.max_len,
        vocab_size=captured.vocab_size,
        steps=steps,
        generation_config=captured.generation_config,
    )
    if compiled.step_graphs is not None and when == "eager":
        compiled.step_graphs.build_all()
    elif compiled.step_graphs is not None:
        compiled.step_graphs.announce = when is None  # lazy, not chosen: the first build says what it costs
    return compiled


def check_sites(result, policy: Policy, model_type: str, *, allow_no_sites: bool = False) -> None:
    """NoSitesError for a requested kind without sites (unless allowed); one warning for skipped candidates."""
    for kind in policy.enabled_kinds():
        found = [s for s in result.sites if s.kind == kind]
        skipped = [s for s in result.skips if s.kind == kind and s.reason != "already rewritten by lampc"]
        if not found and not allow_no_sites:
            reasons = "; ".join(f"{s.module or '(top level)'} ({s.node}): {s.reason}" for s in skipped[:5])
            more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
            raise NoSitesError(
                f"no {kind} site found in {model_type}: the compiled model would run {kind} in FP32 and report a "
                f"perfect result. " + (f"Candidates skipped: {reasons}{more}." if skipped else
                                       "The graph holds no candidate of this kind.")
                + " Pass allow_no_sites=True to accept it, or leave the kind out of `kinds`.")
        if found and skipped:
            first = skipped[0]
            warnings.warn(f"lampc: {len(skipped)} {kind} candidate(s) left in FP32 beside {len(found)} site(s); "
                          f"first: {first.module or '(top level)'}: {first.reason}", stacklevel=3)


def warn_if_native_is_slow(policy: Policy, parameter) -> None:
    """One warning when a site's producer would run its GEMMs in a dtype the hardware has no units for."""
    from .producers import implementation
    from .runtime.hardware import native_speed

    dtypes = {implementation(getattr(policy, kind).producer).hardware_dtype for kind in policy.enabled_kinds()}
    dtypes.discard(None)
    device = parameter.device if parameter is not None else "cpu"
    for dtype in sorted(dtypes - {torch.float32}, key=str):
        fast, why = native_speed(dtype, device)
        if not fast:
            warnings.warn(f"lampc: backend='native' runs real {dtype} GEMMs, but {why}: they will be slower than "
                          f"FP32 here (up to 100x). For accuracy studies use backend='emulate' (the same rounding, "
                          f"bit-exact); for speed, a CPU with bf16/fp16 matrix units or a GPU.", stacklevel=3)
