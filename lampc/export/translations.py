"""ONNX translations of lampc's custom ops, in standard ONNX ops only (the custom_translation_table).

Each translation mirrors the op's plain-torch reference step by step (same operations, same order), so that
ONNX Runtime reproduces it: bit-exactly for the low-precision scores, and to FP32 rounding for everything
that involves an FP32 matmul, softmax or exp, whose kernels differ between torch and ORT.

    lampc::lowp_scores(q, k_t, scale, producer)
        the producer's product (lampc/export/producers.py: emulated strict or blocked, native), then
        s_hat = RN(acc * scale)
    lampc::lamp_select(s_hat, q, k_t, scale, mask, is_causal, producer, rule, facts, execution, site) -> bool
        visible = mask > -1e4 (& causal);  usable = visible & finite;  a = softmax over usable keys;  the rule
        (uniform, strict, relaxed, target, budget, oracle; random has no ONNX form: torch's RNG stream
        cannot be reproduced, so exporting it raises);  | ~isfinite(s_hat)
    lampc::recompute_scores(s_hat, selected, q, k_t, scale, execution)
        Where(selected, MatMul(q, k_t) * scale, s_hat)      (dense: the sparse gather has no cheap ONNX form;
        ONNX Runtime's Where returns +0 for a recomputed -0, which no later op can tell apart)

Sorting rules (target, budget, oracle) use TopK, which breaks ties toward the lower key index, as lampc's stable
sort (select_top) and index tie-break (select_top_k) do.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import onnx_ir as ir
import torch
from onnxscript import BOOL, FLOAT

from ..config import Producer, SiteConfig, decode_producer
from ..criteria import EXPORTABLE
from ..lookahead.softmax import MASKED_BELOW
from ..policy import SitePolicy
from ..producers import implementation
from .builder import BOOL as BOOL_TYPE
from .builder import INT64, Builder
from .producers import TranslationError, onnx_product
from .rounding import round_onnx

FLOAT_TYPE = 1
FLT_MAX = float(np.finfo(np.float32).max)
EXPORTABLE_CRITERIA = EXPORTABLE


def translation_table(opset: int, rounding: str) -> dict[torch._ops.OpOverload, Callable]:
    """The custom_translation_table for torch.onnx.export: every lampc op -> its standard-ONNX translation."""
    make = functools.partial(Builder, opset)

    def lowp_scores(q: FLOAT, k_t: FLOAT, scale: float, producer: str):
        g = make()
        return lowp_scores_onnx(g, q, k_t, scale, decode_producer(producer), rounding)

    def lamp_select(s_hat: FLOAT, q: FLOAT, k_t: FLOAT, scale: float, mask, is_causal: bool, producer: str,
                    rule: str, facts: str, execution: str, site: int):
        g = make()
        settings = SitePolicy.from_config(SiteConfig.from_texts(producer, rule, facts, execution))
        return lamp_select_onnx(g, s_hat, q, k_t, scale, mask, is_causal, settings, site)

    def recompute_scores(s_hat: FLOAT, selected: BOOL, q: FLOAT, k_t: FLOAT, scale: float, execution: str):
        g = make()
        return g.Where(selected, fp32_scores(g, q, k_t, scale), s_hat)

    return {
        torch.ops.lampc.lowp_scores.default: lowp_scores,
        torch.ops.lampc.lamp_select.default: lamp_select,
        torch.ops.lampc.recompute_scores.default: recompute_scores,
    }


def check_exportable(site: SitePolicy, index: int, module: str) -> None:
    """Raise TranslationError if site `index`'s policy has no ONNX translation."""
    where = f"site {index} ({module or 'top level'})"
    if not site.rule.onnx:
        why = ("it draws from torch's random generator, whose stream ONNX cannot reproduce" if site.rule.draws else
               "its running maximum over tiles has no ONNX translation yet")
        raise TranslationError(f"{where}: criterion {site.criterion!r} cannot be exported to ONNX: {why}; exportable "
                               f"criteria: {', '.join(EXPORTABLE_CRITERIA)}")
    untranslated = {"streaming": site.streaming, "granularity='tile'": site.granularity == "tile",
                    "recompute_format": site.recompute_format is not None, "exp_format": site.exp_format is not None}
    missing = [name for name, present in untranslated.items() if present]
    if missing:
        raise TranslationError(f"{where}: {', '.join(missing)} has no ONNX translation yet; compile without it to "
                               "export, or run the compiled model in PyTorch")
    if site.biased and site.rule.looks_ahead:
        raise TranslationError(
            f"{where}: the look-ahead with an additive score bias (ALiBi) has no ONNX translation yet; export with "
            "criterion='uniform', or run the compiled model in PyTorch")
    if site.softcap is not None and site.rule.looks_ahead:
        raise TranslationError(
            f"{where}: the look-ahead through logit soft-capping (softcap {site.softcap:g}) has no ONNX translation "
            "yet; export with criterion='uniform', or run the compiled model in PyTorch")


# -- producer: low-precision scores ---------------------------------------------------------------------


def fp32_scores(g: Builder, q, k_t, scale: float):
    """fl32(q @ k_t) * scale, as lampc.lookahead.recompute.fp32_product."""
    return g.Mul(g.MatMul(q, k_t), g.const(scale))


def lowp_scores_onnx(g: Builder, q, k_t, scale: float, producer: Producer, rounding: str):
    """RN(product(q, k_t) * scale): the producer's ONNX product (lampc/export/producers.py), then the scaling."""
    raw = onnx_product(g, producer, q, k_t, rounding)
    return round_onnx(g, g.Mul(raw, g.const(scale)), producer.format, rounding)


# -- look-ahead: the selection ---------------------------------------------------------------------------


def lamp_select_onnx(g: Builder, s_hat, q, k_t, scale: float, mask, is_causal: bool, site: SitePolicy,
                     index: int):
    """lampc.ops.lamp_select: the rule of `site.criterion` (lampc.criteria), over `OnnxSoftmaxRows`."""
    check_exportable(site, index, "")
    visible = _visible(g, s_hat, mask, is_causal)
    usable = g.And(visible, _isfinite(g, s_hat))  # the rules look at finite scores; the rest is always recomputed
    selected = site.rule.select(OnnxSoftmaxRows(g, s_hat, visible, usable, site, q, k_t, scale), site)
    return g.Or(selected, g.Not(_isfinite(g, s_hat)))  # non-finite scores, masked or not


class OnnxSoftmaxRows:
    """`lampc.criteria.RuleInputs` at a softmax site, in ONNX ops: the same quantities as
    lampc.lookahead.softmax.SoftmaxRows, evaluated in the same order (so ORT's selection equals PyTorch's)."""

    def __init__(self, g: Builder, s_hat, visible, usable, site: SitePolicy, q, k_t, scale: float):
        self.g, self.s_hat, self.visible, self.usable, self.site = g, s_hat, visible, usable, site
        self.q, self.k_t, self.scale = q, k_t, scale
        self._a = None

    def nothing(self):
        return self.g.Expand(self.g.const(False, np.bool_), self.g.Shape(self.s_hat))

    def probabilities(self):
        if self._a is None:
            self._a = _masked_softmax(self.g, self.s_hat, self.usable)
        return self._a

    def error_scale(self):
        """|ŝ|, or the site's error scale (lampc/lookahead/error_scale.py, in the same order of operations)."""
        g, kind = self.g, self.site.error_scale
        if kind == "score":
            return g.Abs(self.s_hat)
        if kind == "exact":
            return g.Abs(g.Sub(fp32_scores(g, self.q, self.k_t, self.scale), self.s_hat))
        inner = self.q.shape[-1] if self.q.shape is not None else None
        if not isinstance(inner, int):
            raise TranslationError(f"error_scale={kind!r}: the inner dimension of q must be static, got {inner!r}")
        if kind == "l1":
            magnitude = g.MatMul(g.Abs(self.q), g.Abs(self.k_t))
        else:  # the norms of each query row and key column
            magnitude = g.Mul(g.ReduceL2(self.q, g.axes(-1), keepdims=1), g.ReduceL2(self.k_t, g.axes(-2), keepdims=1))
        if kind == "mixed":
            return g.Max(g.Abs(self.s_hat), g.Mul(magnitude, g.const(abs(self.scale) / math.sqrt(inner))))
        producer = implementation(self.site.producer)  # the bound is the producer's (docs/NUMERICS.md §9)
        gamma, floor = producer.gamma(inner), producer.floor(inner, self.scale)
        return g.Add(g.Mul(g.const(gamma * abs(self.scale)), magnitude), g.const(floor))

    def strict_weight(self):
        return _strict_weight(self.g, self.error_scale(), self.probabilities())

    def relaxed_weight(self):
        g, finite = self.g, self.usable
        row_max = g.ReduceMax(g.Where(finite, self.s_hat, g.const(-np.inf)), g.axes(-1), keepdims=1)
        return g.Where(finite, g.Mul(self.error_scale(), g.Exp(g.Sub(self.s_hat, row_max))), g.const(0.0))

    def row_tau(self, tau: float, relaxed: bool):
        g = self.g
        if not self.site.length_scaling:
            return g.const(tau)
        lengths = _lengths(g, self.visible, FLOAT_TYPE)
        tau_t = g.Mul(g.const(tau), g.Sqrt(g.Div(g.const(float(self.site.l_ref)), lengths)))
        return g.Min(tau_t, g.const(1.0)) if relaxed else tau_t

    def row_max(self, weight):
        return self.g.ReduceMax(weight, self.g.axes(-1), keepdims=1)

    def times(self, a, b):
        return self.g.Mul(a, b)

    def above(self, weight, threshold):
        return self.g.And(self.g.Greater(weight, threshold), self.usable)

    def top(self, score, count, k_max: int | None = None):
        return _select_top(self.g, score, self.usable, count)

    def count(self, selection):
        return self.g.ReduceSum(self.g.Cast(selection, to=INT64), self.g.axes(-1), keepdims=1)

    def target_counts(self, a, tau: float):
        return _target_counts(self.g, a, self.usable, tau)

    def budget_counts(self, budget):
        g = self.g
        if isinstance(budget, int):
            return g.Min(_lengths(g, self.visible, INT64), g.const(budget, np.int64))
        return g.Cast(g.Ceil(g.Mul(g.const(budget), _lengths(g, self.visible, FLOAT_TYPE))), to=INT64)

    def budget_k_max(self, budget) -> None:
        return None  # ONNX's TopK sorts the whole row either way

    def draws(self):
        raise TranslationError("the random baseline has no ONNX translation")  # check_exportable says so first

    def true_error(self):
        g = self.g
        s_fp32 = fp32_scores(g, self.q, self.k_t, self.scale)
        p = _masked_softmax(g, s_fp32, self.usable)
        return _nan_to_num(g, g.Mul(_two_a_one_minus_a(g, p), g.Abs(g.Sub(s_fp32, self.s_hat))))


def _visible(g: Builder, s_hat, mask, is_causal: bool):
    """visible_from_mask, expanded to s_hat's shape."""
    shape = g.Shape(s_hat)
    visible = g.Expand(g.const(True, np.bool_), shape)
    if is_causal:
        rows_cols = g.Shape(s_hat, start=-2)
        visible = g.And(visible, g.Cast(g.Trilu(g.Expand(g.const(1.0), rows_cols), upper=0), to=BOOL_TYPE))
    if mask is not None:
        keep = mask if mask.dtype == ir.DataType.BOOL else g.Greater(mask, g.const(MASKED_BELOW))
        visible = g.And(visible, keep)
    return visible


def _masked_softmax(g: Builder, s, visible):
    a = g.Softmax(g.Where(visible, s, g.const(-np.inf)), axis=-1)
    a = g.Where(g.IsNaN(a), g.const(0.0), a)
    return g.Where(visible, a, g.const(0.0))


def _two_a_one_minus_a(g: Builder, a):
    return g.Mul(g.Mul(g.const(2.0), a), g.Sub(g.const(1.0), a))


def _strict_weight(g: Builder, error_scale, a):
    """2·a·(1 − a)·(error scale), evaluated in lampc's order."""
    return g.Mul(_two_a_one_minus_a(g, a), error_scale)


def _isfinite(g: Builder, x):
    return g.Not(g.Or(g.IsInf(x), g.IsNaN(x)))


def _nan_to_num(g: Builder, x):
    """torch.nan_to_num(x, nan=0.0): NaN -> 0, ±inf -> ±FLT_MAX."""
    return g.Clip(g.Where(g.IsNaN(x), g.const(0.0), x), g.const(-FLT_MAX), g.const(FLT_MAX))


def _lengths(g: Builder, visible, dtype: int):
    return g.ReduceSum(g.Cast(visible, to=dtype), g.axes(-1), keepdims=1)  # (…, T, 1)


def _target_counts(g: Builder, a, visible, tau: float):
    """Paper v1: the shortest prefix (by descending a) with 2 − A_S − 2·min(a) ≤ tau."""
    width = g.last_dim(a)
    a_sorted, _ = g.TopK(g.Where(visible, a, g.const(-1.0)), width, axis=-1, largest=1, sorted=1)
    a_sorted = g.Max(a_sorted, g.const(0.0))
    prefix_mass = g.CumSum(a_sorted, g.const(-1, np.int64), exclusive=1)  # A_S for |S| = 0 .. L-1
    min_a = g.ReduceMin(g.Where(visible, a, g.const(np.inf)), g.axes(-1), keepdims=1)
    fails = g.Greater(g.Sub(g.Sub(g.const(2.0), prefix_mass), g.Mul(g.const(2.0), min_a)), g.const(tau))
    count = g.ReduceSum(g.Cast(fails, to=INT64), g.axes(-1), keepdims=1)
    return g.Min(count, _lengths(g, visible, INT64))


def _select_top(g: Builder, score, visible, count):
    """Per row, the `count` visible entries with the largest score (ties: lower key index first)."""
    width = g.last_dim(score)
    _, order = g.TopK(g.Where(visible, score, g.const(-np.inf)), width, axis=-1, largest=1, sorted=1)
    ranks = g.Range(g.const(0, np.int64), g.Squeeze(width, g.axes(0)), g.const(1, np.int64))  # (L,)
    chosen_sorted = g.Expand(g.Less(ranks, count), g.Shape(score))  # (…, T, L), in sorted order
    selected = g.ScatterElements(g.Expand(g.const(False, np.bool_), g.Shape(score)), order, chosen_sorted, axis=-1)
    return g.And(selected, visible)
