"""Probes: one translation exported in isolation, to check it against its torch reference in ONNX Runtime.

    rounding_probe(path, ["m4", "fp16"])    x: f32[N] -> rounded: f32[F, N]   (round_to per format)
    site_probe(path, [spec_a, spec_b])      q, k_t, mask -> scores_lp_<i>, selection_<i>, scores_<i> per spec

Both go through the same path as `export_onnx` (torch.onnx.export with lampc's translation table, opset
conversion, onnxscript optimiser), so what they check is what a compiled model's export contains. A site probe
calls lampc's real ops; the rounding probe calls `lampc_export::round_formats`, a small custom op defined here
whose torch implementation is `lampc.numerics.round_to`.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from onnxscript import FLOAT
from torch import Tensor, nn

from lampc.numerics import round_to
from lampc.export.builder import Builder
from lampc.export.ir_passes import convert_opset, optimize_model, quiet
from lampc.export.onnx import EXPORT_OPSET, _resolve_opset
from lampc.export.rounding import round_onnx
from lampc.export.translations import translation_table


@torch.library.custom_op("lampc_export::round_formats", mutates_args=())
def round_formats(x: Tensor, formats: str) -> Tensor:
    """torch.stack([round_to(x, f) for f in formats.split(",")]): the reference the rounding probe exports."""
    return torch.stack([round_to(x, name) for name in formats.split(",")])


@round_formats.register_fake
def _(x, formats):
    return x.new_empty((len(formats.split(",")), *x.shape))


class _RoundingModule(nn.Module):
    def __init__(self, formats: list[str]):
        super().__init__()
        self.formats = ",".join(formats)

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.lampc_export.round_formats(x, self.formats)


class _SiteModule(nn.Module):
    """The three ops of an attention site, once per policy spec, on shared q, k_t and additive mask."""

    def __init__(self, specs: list, scale: float):
        super().__init__()
        self.specs, self.scale = [tuple(s) for s in specs], scale  # each a SiteTexts: producer, rule, facts, execution

    def forward(self, q: Tensor, k_t: Tensor, mask: Tensor) -> tuple[Tensor, ...]:
        ops = torch.ops.lampc
        outputs = []
        for index, spec in enumerate(self.specs):
            s_hat = ops.lowp_scores(q, k_t, self.scale, spec[0])
            selected = ops.lamp_select(s_hat, q, k_t, self.scale, mask, False, *spec, index)
            outputs += [s_hat, selected, ops.recompute_scores(s_hat, selected, q, k_t, self.scale, spec[3])]
        return tuple(outputs)


def rounding_probe(path: str | os.PathLike, formats: list[str], *, opset: int = 26, rounding: str = "auto") -> str:
    """Write an ONNX model x: f32[N] -> rounded: f32[F, N], row f = x rounded to formats[f]."""
    opset, rounding = _resolve_opset(opset, rounding)
    build_opset = opset if rounding == "bits" else EXPORT_OPSET

    def translate(x: FLOAT, formats: str):
        g = Builder(build_opset)
        rows = [g.Unsqueeze(round_onnx(g, x, name, rounding), g.axes(0)) for name in formats.split(",")]
        return rows[0] if len(rows) == 1 else g.Concat(*rows, axis=0)

    example = torch.zeros(8)
    dynamic = {"x": {0: torch.export.Dim("n", min=2)}}
    return _export(_RoundingModule(formats), (example,), dynamic, ["x"], ["rounded"],
                   {torch.ops.lampc_export.round_formats.default: translate}, path, opset)


def site_probe(path: str | os.PathLike, specs: list[str], *, scale: float, example: tuple[Tensor, Tensor, Tensor],
               opset: int = 26, rounding: str = "auto") -> str:
    """Write an ONNX model (q, k_t, mask) -> (scores_lp_i, selection_i, scores_i for each spec i).

    example: (q f32[B, H, T, D], k_t f32[B, H, D, L], additive mask f32[B, 1, T, L]); B, T, L stay dynamic.
    """
    opset, rounding = _resolve_opset(opset, rounding)
    batch, rows, keys = torch.export.Dim("batch", min=1), torch.export.Dim("rows", min=2), torch.export.Dim("keys", min=2)
    dynamic = {"q": {0: batch, 2: rows}, "k_t": {0: batch, 3: keys}, "mask": {0: batch, 2: rows, 3: keys}}
    names = [f"{kind}_{i}" for i in range(len(specs)) for kind in ("scores_lp", "selection", "scores")]
    table = translation_table(opset if rounding == "bits" else EXPORT_OPSET, rounding)
    return _export(_SiteModule(specs, scale), example, dynamic, ["q", "k_t", "mask"], names, table, path, opset)


def _export(module, example, dynamic, input_names, output_names, table, path, opset: int) -> str:
    path = os.fspath(path)
    with quiet():
        program = torch.onnx.export(
            module, example, dynamo=True, opset_version=EXPORT_OPSET, optimize=False, verbose=False,
            input_names=input_names, output_names=output_names, dynamic_shapes=dynamic,
            custom_translation_table=table,
        )
    model = convert_opset(program.model, opset) if opset > EXPORT_OPSET else program.model
    optimize_model(model)
    program.model = model
    with quiet():
        program.save(path, external_data=False)
    return path


def float32_edge_values() -> np.ndarray:
    """Float32 values where rounding is delicate: ties (even and odd neighbours) at m in 1..23, signed zeros,
    FP32 subnormals (smallest, largest, ties on their grids), the smallest normal, the largest finite value and
    the overflow thresholds of every format, ±inf, NaNs with and without payloads and sign."""
    from lampc.formats import all_formats

    with np.errstate(over="ignore", invalid="ignore"):
        return np.array(_edge_values(all_formats()), dtype=np.float32)


def _edge_values(formats) -> list:
    values = [0.0, -0.0, 1.0, -1.0, 1.5, np.inf, -np.inf]
    for m in range(1, 24):
        ulp = 2.0**-m
        for k in (1, 2, 3, 5, 6, 7):
            tie = 1.0 + (k + 0.5) * ulp
            values += [tie, -tie, tie * 2.0**-130, tie * 2.0**100, tie * 2.0**127]
    bits = [1, 2, 3, 0x7FFFFF, 0x7FFFFE, 0x400000, 0x400001, 0x3FFFFF, 0x00800000, 0x00800001, 0x7F7FFFFF,
            0x7F7FFFFE, 0x7F000000, 0x7F800001, 0x7FC00000, 0x7FC00001, 0x7FFFFFFF, 0x7FA00000]
    for mag in bits:
        values += [np.array(mag, np.uint32).view(np.float32), np.array(mag | 0x80000000, np.uint32).view(np.float32)]
    for fmt in formats:
        for value in (fmt.max_finite, fmt.overflow_threshold, fmt.min_normal, fmt.min_subnormal,
                      fmt.min_subnormal * 0.5, fmt.min_subnormal * 1.5, fmt.min_normal - fmt.min_subnormal):
            value32 = np.float32(value)
            below, above = np.nextafter(value32, np.float32(0)), np.nextafter(value32, np.float32(np.inf))
            values += [value32, -value32, below, above]
    return values
