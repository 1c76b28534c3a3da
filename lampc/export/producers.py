"""Each producer type's product in standard ONNX ops, registered for its type (as lampc/producers/ in torch).

    Emulated, strict (block_k = 1), K unrolled (K = head dim, static in the exported graph):
        a, b = canonical NaNs;  acc = RN(+0 + a[..., 0] * b[0, :])    (as Where: x == 0 -> +0)
        acc = RN(acc + a[..., k] * b[k, :])                          k = 1 .. K-1
    Emulated, blocked: acc = RN(acc + MatMul(a[..., blk], b[blk, :]))  one FP32 MatMul per block
    Native (bf16/fp16): RN(MatMul(RN(a), RN(b)))

A producer type with no entry here has no ONNX form: exporting a site of it is a TranslationError naming it.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import Emulated, Native, Producer
from ..formats import Format
from .builder import Builder
from .rounding import canonical_nans, round_onnx


class TranslationError(ValueError):
    """A site's policy has no ONNX form; the message names the site, the op and the reason."""


_ONNX_PRODUCTS: dict[type, Callable] = {}


def register_onnx(producer_type: type):
    """Decorator: `fn(g, producer, a, b, rounding)` is the ONNX product of `producer_type`."""
    def add(fn):
        _ONNX_PRODUCTS[producer_type] = fn
        return fn
    return add


def onnx_product(g: Builder, producer: Producer, a, b, rounding: str):
    """a @ b as `producer` computes it, in ONNX ops."""
    product = _ONNX_PRODUCTS.get(type(producer))
    if product is None:
        raise TranslationError(f"producer {producer.label} ({type(producer).__name__}) has no ONNX translation; "
                               f"exportable producers: {', '.join(t.__name__ for t in _ONNX_PRODUCTS)}")
    return product(g, producer, a, b, rounding)


@register_onnx(Emulated)
def _emulated(g: Builder, producer: Emulated, a, b, rounding: str):
    if not producer.plain:
        raise TranslationError(f"producer {producer.label}: SitePolicy.rounding='toward_zero', flush_every and "
                               "operand_format have no ONNX translation yet; export rounds to nearest without flushes "
                               "over FP32 operands")
    return lp_matmul_onnx(g, a, b, producer.format, producer.block_k, rounding)


@register_onnx(Native)
def _native(g: Builder, producer: Native, a, b, rounding: str):
    fmt = producer.format
    return round_onnx(g, g.MatMul(round_onnx(g, a, fmt, rounding), round_onnx(g, b, fmt, rounding)), fmt, rounding)


def lp_matmul_onnx(g: Builder, a, b, fmt: Format, block_k: int, rounding: str):
    """lampc.numerics.lp_matmul in ONNX ops: a (..., M, K) @ b (..., K, N) with a rounded accumulator."""
    if fmt.is_identity:
        return g.MatMul(a, b)
    inner = a.shape[-1] if a.shape is not None else None
    if not isinstance(inner, int):
        raise TranslationError(
            f"lp_matmul: the inner dimension K of q must be static in the exported graph, got {inner!r}"
        )
    a, b = canonical_nans(g, a), canonical_nans(g, b)
    a_cols = _split(g, a, -1, inner)  # K x (..., M, 1)
    b_rows = _split(g, b, -2, inner)  # K x (..., 1, N)
    acc = None
    for k0 in range(0, inner, block_k):  # strict: blocks of one term, each rounded
        block_sum = None
        for a_col, b_row in zip(a_cols[k0 : k0 + block_k], b_rows[k0 : k0 + block_k]):
            product = g.Mul(a_col, b_row)  # (..., M, N)
            block_sum = _plus_zero(g, product) if block_sum is None else g.Add(block_sum, product)
        total = block_sum if acc is None else g.Add(acc, block_sum)  # a first block sum starts at +0 already
        acc = round_onnx(g, total, fmt, rounding, restore_nan=False)
    return acc


def _plus_zero(g: Builder, x):
    """fl32(+0 + x), the accumulator's first step: x, except that -0 becomes +0.

    Written as Where(x == 0, +0, x): ONNX Runtime's basic graph optimisations remove an Add of a zero constant.
    """
    return g.Where(g.Equal(x, g.const(0.0)), g.const(0.0), x)


def _split(g: Builder, x, axis: int, parts: int) -> list:
    """x split into `parts` slices of width 1 along `axis`."""
    if parts == 1:
        return [x]
    return list(g.Split(x, axis=axis, num_outputs=parts))
