"""export_onnx: a lampc-compiled model as a standard ONNX model that stock ONNX Runtime runs.

    before (fx graph of a CompiledModel)                 after (ONNX, standard ops only)
    s_hat = lampc.lowp_scores(q, k_t, scale, policy)     lampc_site_0/lowp_scores/*:  unrolled RN(acc + q_k*k_k)
    sel   = lampc.lamp_select(s_hat, ..., policy, 0)     lampc_site_0/lamp_select/*:  softmax, rule, TopK, ...
    s     = lampc.recompute_scores(s_hat, sel, ...)      lampc_site_0/recompute_scores/*: Where(sel, MatMul*scale, s_hat)
    lampc_tap_0(sel, mask)                               (dropped: statistics only)

Steps: check the graph (every lampc op has a translation, every site's policy an ONNX form) -> copy the graph
without its statistics taps -> `torch.onnx.export(dynamo=True, custom_translation_table=...)` at opset 18 ->
tag every node a translation emitted with its site (node name `lampc_site_<i>/<op>/...`, metadata
`lampc.site`, `lampc.module`, `lampc.op`) -> convert to the target opset -> optimise -> write the policy and
versions into the model's metadata_props -> save -> `onnx.checker.check_model(full_check=True)`.

Inputs `input_ids` and `attention_mask` (int64, dynamic batch and sequence), output `logits`; with
`debug_outputs=True` also `selection_<i>` (bool) and `scores_lp_<i>` (the low-precision scores) per site. The file
has no KV cache (no past_key_values inputs, no present outputs): one call is one full-sequence forward, at most the
model's position table long. ONNX Runtime requires both inputs; `lampc.export.run_session` checks them and fills
the mask with ones when it is absent. The metadata says so (`lampc.kv_cache`, `lampc.inputs`).
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, field

import onnx
import torch
from torch import fx, nn

from ..version import __version__
from ..capture import CAPTURE_LOCK, takes_use_cache
from ..ops import SITE_OPS
from ..passes import unfuse_sites
from ..graph_view import module_path
from ..policy import SitePolicy
from ..producers.cast_weight import CastWeight
from ..runtime.compiled import CompiledModel
from .ir_passes import add_debug_outputs, convert_opset, find_fx_sites, optimize_model, quiet, tag_metadata, tag_sites
from .rounding import BITCAST_OPSET, ROUNDINGS
from .translations import TranslationError, check_exportable, translation_table

EXPORT_OPSET = 18
"""The opset torch's exporter builds in (torchlib's); higher targets are reached by version conversion."""
MAX_OPSET = 26
DEFAULT_OPSET = BITCAST_OPSET
EXAMPLE_BATCH, EXAMPLE_LEN = 2, 16
TAP_PREFIX = "lampc_tap_"


class OnnxExportError(RuntimeError):
    """lampc could not export a compiled model to ONNX; the message names the op, site or path at fault."""


@dataclass
class OnnxExport:
    """What `export_onnx` wrote."""

    path: str
    opset: int
    rounding: str
    sites: list[dict]
    outputs: list[str]
    seconds: float
    size_bytes: int
    metadata: dict[str, str] = field(default_factory=dict)


def export_onnx(
    compiled: CompiledModel,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    rounding: str = "auto",
    optimize: bool = True,
    debug_outputs: bool = False,
    check: bool = True,
) -> OnnxExport:
    """Export `compiled` (a `lampc.compile` result) to the ONNX file `path`, in standard ONNX ops only.

    opset:         target ONNX opset, 18..26. 26 (the default) has BitCast, so rounding is the same integer
                   algorithm as lampc.numerics.round_to; below 26 rounding is exact float arithmetic.
    rounding:      "auto" (bits at opset >= 26, else arith), "bits" (needs opset >= 26) or "arith".
    optimize:      constant folding, dead-node removal, common subexpressions (`optimize_model`).
    debug_outputs: add `selection_<i>` and `scores_lp_<i>` outputs per site (for parity checks).
    check:         run onnx.checker.check_model(full_check=True) on the written file.
    """
    start = time.perf_counter()
    if not isinstance(compiled, CompiledModel):
        raise TypeError(
            f"export_onnx needs a lampc CompiledModel (the result of lampc.compile(model, ...)), got "
            f"{type(compiled).__module__}.{type(compiled).__name__}"
        )
    path = os.fspath(path)
    check_writable(path)
    opset, rounding = _resolve_opset(opset, rounding)
    modules = {site.index: site.module for site in compiled.sites}
    graph_module = _exportable_copy(compiled.graph_module)
    _check_graph(graph_module, modules)

    with quiet():
        wrapper = _ExportWrapper(graph_module)
    program = _torch_export(wrapper, compiled.max_len, opset, rounding)
    model = program.model
    fx_sites = find_fx_sites(program.exported_program.graph)
    tag_sites(model, fx_sites)
    outputs = ["logits"]
    if debug_outputs:
        outputs += add_debug_outputs(model, fx_sites)
    if opset > EXPORT_OPSET:
        model = convert_opset(model, opset)
        if model.opset_imports.get("") != opset:
            raise OnnxExportError(f"could not convert the exported graph from opset {EXPORT_OPSET} to {opset}")
    if optimize:
        optimize_model(model)
    tag_metadata(model, modules)
    metadata = _metadata(compiled, opset, rounding, outputs)
    model.metadata_props.update(metadata)
    model.doc_string = f"lampc {__version__}: {compiled.model_type} with LAMP attention sites (standard ONNX ops)"
    program.model = model
    _save(program, path)
    if check:
        onnx.checker.check_model(path, full_check=True)
    return OnnxExport(
        path=path,
        opset=opset,
        rounding=rounding,
        sites=[site.to_dict() for site in compiled.sites],
        outputs=outputs,
        seconds=time.perf_counter() - start,
        size_bytes=_size(path),
        metadata=metadata,
    )


# -- checks ---------------------------------------------------------------------------------------------


def check_writable(path: str) -> None:
    """Raise OnnxExportError unless a file can be written at `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise OnnxExportError(f"cannot write the ONNX model to {path!r}: it is a directory")
    if not os.path.isdir(directory):
        raise OnnxExportError(f"cannot write the ONNX model to {path!r}: directory {directory!r} does not exist")
    if not os.access(directory, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise OnnxExportError(f"cannot write the ONNX model to {path!r}: permission denied")


def _resolve_opset(opset: int, rounding: str) -> tuple[int, str]:
    if isinstance(opset, bool) or not isinstance(opset, int) or not EXPORT_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be an int in {EXPORT_OPSET}..{MAX_OPSET}, got {opset!r}")
    if rounding == "auto":
        rounding = "bits" if opset >= BITCAST_OPSET else "arith"
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be 'auto' or one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    if rounding == "bits" and opset < BITCAST_OPSET:
        raise ValueError(
            f"rounding='bits' needs BitCast, which ONNX has from opset {BITCAST_OPSET}; got opset={opset} "
            "(use rounding='arith' or opset=26)"
        )
    return opset, rounding


def library_translations() -> dict:
    """The ONNX translations transformers ships for its own custom ops (e.g. its grouped-GEMM mixture-of-experts
    kernel), when this transformers has them; lampc's own table takes precedence."""
    try:
        from transformers.exporters import exporter_onnx
    except ImportError:
        return {}
    return dict(getattr(exporter_onnx, "_ONNX_TRANSLATION_TABLE", {}))


THIRD_PARTY_WORKAROUNDS = {
    "transformers::grouped_mm_fallback": (
        "It is transformers' grouped-GEMM mixture-of-experts kernel (Mixtral, Qwen-MoE, ...), and its eager "
        "per-expert loop is data-dependent, so torch.export cannot capture that either. Run the compiled MoE model "
        "in PyTorch (its LAMP sites work there), or export a dense model."),
}
"""Custom ops of other libraries that torch.onnx does not translate, and how to avoid them."""


def _check_graph(gm: fx.GraphModule, modules: dict[int, str]) -> None:
    """Every lampc op has a translation and every site's policy an ONNX form (errors name op and site)."""
    known = set(translation_table(EXPORT_OPSET, "arith"))
    for node in gm.graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        if node.target.namespace not in ("lampc", "aten", "prims") and node.target not in library_translations():
            raise OnnxExportError(
                f"op {node.target.name()} (node {node.name}) at {module_path(node) or 'top level'} is a custom op of "
                f"the model's library with no ONNX translation in torch.onnx; lampc cannot export it. "
                + THIRD_PARTY_WORKAROUNDS.get(node.target.name(), "Load the model with its plain PyTorch "
                                              "implementation of that layer, or export the FP32 model's way."))
        if node.target.namespace != "lampc":
            continue
        tag = node.meta.get("lampc")
        index = None if tag is None else tag.site
        if index is None:  # a producer lowered by sites="all": no site, no look-ahead
            where = f"{(tag and tag.module) or module_path(node) or 'top level'} (a lowered matmul, no site)"
        else:
            where = f"site {index} ({modules.get(index) or module_path(node) or 'top level'})"
        if tag is not None and tag.config is not None:  # a setting without a translation, named
            try:
                check_exportable(SitePolicy.from_config(tag.config), index, modules.get(index, module_path(node)))
            except TranslationError as err:
                raise OnnxExportError(str(err)) from None
        if node.target not in known:
            raise OnnxExportError(
                f"no ONNX translation for op {node.target.name()} (node {node.name}) at {where}; "
                f"lampc.export translates {', '.join(op.name() for op in SITE_OPS if op in known)}"
            )


# -- the graph to export --------------------------------------------------------------------------------


def _exportable_copy(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of `gm` (sharing its parameters) without the lampc_tap_* statistics calls, with fused sites
    (SitePolicy.fused, a runtime arrangement) back in their three-op form, which has the same values, and without
    the native weight casts (a runtime cache: each op's translation casts its weight, an initializer, itself)."""
    copied = fx.GraphModule(gm, copy.deepcopy(gm.graph))
    unfuse_sites(copied)
    graph = copied.graph
    for node in list(graph.nodes):
        if node.op == "call_module" and str(node.target).startswith(TAP_PREFIX):
            if node.users:
                raise OnnxExportError(f"statistics tap {node.target} has users; it should return nothing")
            graph.erase_node(node)
        elif node.op == "call_module" and isinstance(copied.get_submodule(node.target), CastWeight):
            for user in list(node.users):  # the op's w_low / k_low: left at None, the op casts at the call
                user.kwargs = {key: value for key, value in user.kwargs.items() if value is not node}
            graph.erase_node(node)
    copied.graph.lint()
    copied.recompile()
    return copied


class _ExportWrapper(nn.Module):
    """input_ids, attention_mask -> logits, around the rewritten graph module."""

    def __init__(self, graph_module: fx.GraphModule):
        super().__init__()
        self.graph_module = graph_module

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        extra = {"use_cache": False} if takes_use_cache(self.graph_module.forward) else {}
        out = self.graph_module(input_ids=input_ids, attention_mask=attention_mask, **extra)
        return out.logits if hasattr(out, "logits") else out[0]


def _example_inputs(max_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    length = min(EXAMPLE_LEN, max_len)
    ids = torch.zeros(EXAMPLE_BATCH, length, dtype=torch.long, device=device)
    mask = torch.ones_like(ids)
    mask[-1, 0] = 0  # left padding keeps the general masking path
    return ids, mask


def _torch_export(wrapper: _ExportWrapper, max_len: int, opset: int, rounding: str):
    param = next(wrapper.parameters(), None)
    ids, mask = _example_inputs(max_len, param.device if param is not None else "cpu")
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("seq", min=2, max=max_len)
    dynamic = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    table = {**library_translations(), **translation_table(opset if rounding == "bits" else EXPORT_OPSET, rounding)}
    try:
        with CAPTURE_LOCK, quiet():  # dynamo=True runs torch.export: one capture at a time (lampc/capture.py)
            return torch.onnx.export(
                wrapper, (ids, mask), dynamo=True, opset_version=EXPORT_OPSET, optimize=False, verbose=False,
                input_names=["input_ids", "attention_mask"], output_names=["logits"], dynamic_shapes=dynamic,
                custom_translation_table=table,
            )
    except Exception as err:  # torch raises many types; all mean "could not export"
        cause = _root_cause(err)
        raise OnnxExportError(f"torch.onnx.export failed: {type(cause).__name__}: {cause}") from err


def _root_cause(err: BaseException) -> BaseException:
    """The innermost exception; a TranslationError anywhere in the chain wins (its message names the site)."""
    seen = err
    while True:
        if isinstance(seen, TranslationError):
            return seen
        nxt = seen.__cause__ or seen.__context__
        if nxt is None:
            return seen
        seen = nxt


# -- metadata and saving ---------------------------------------------------------------------------------


def _metadata(compiled: CompiledModel, opset: int, rounding: str, outputs: list[str]) -> dict[str, str]:
    return {
        "lampc.version": __version__,
        "lampc.policy": json.dumps(compiled.policy.to_dict(), sort_keys=True),
        "lampc.sites": json.dumps([site.to_dict() for site in compiled.sites]),
        "lampc.model_type": compiled.model_type,
        "lampc.max_len": str(compiled.max_len),
        "lampc.vocab_size": str(compiled.vocab_size),
        "lampc.opset": str(opset),
        "lampc.rounding": rounding,
        "lampc.outputs": ",".join(outputs),
        "lampc.kv_cache": KV_CACHE_TEXT,
        "lampc.inputs": inputs_text(compiled.max_len, compiled.vocab_size),
        "lampc.torch": torch.__version__,
    }


KV_CACHE_TEXT = ("none: full-sequence forward only (no past_key_values inputs, no present outputs); each call "
                 "recomputes the whole sequence")


def inputs_text(max_len: int, vocab_size: int) -> str:
    """What a caller must feed the exported file (its `lampc.inputs` metadata)."""
    return (f"input_ids int64 (batch, seq), token ids in [0, {vocab_size}), 1 <= seq <= {max_len}; attention_mask "
            "int64 (batch, seq) of 0/1, required by ONNX Runtime (lampc.export.run_session fills ones when absent)")


def _save(program, path: str) -> None:
    try:
        with quiet():
            program.save(path, external_data=None)  # weights beside the model (path + ".data") above 2 GB
    except OSError as err:
        raise OnnxExportError(f"cannot write the ONNX model to {path!r}: {err.strerror or err}") from err


def _size(path: str) -> int:
    """Bytes of the model file and of its external weights file, if any."""
    return sum(os.path.getsize(p) for p in (path, path + ".data") if os.path.exists(p))
