"""Recompute: replace the selected low-precision outputs of a producer y ≈ (x @ w) * scale + bias by their FP32
values. One mechanism for every site: attention scores (x = q, w = k_t), logits and linear layers (w a matrix).

Sparse path (the default): gather the selected (row, column) pairs, one FP32 dot product each, scatter back:
the cost is |S| dot products, not a matmul; with one weight matrix for every row, a GEMM over the selected
columns when they crowd. Dense path: above a recompute rate the gather costs more than one FP32 matmul, so the
whole FP32 product is computed and the selected entries taken from it. Both give the FP32 dot product of the
same vectors, up to FP32 summation order.

On the CPU the sparse dot products run in a C kernel (lampc/kernels/cpu_recompute.c) that reads q and k_t in
place through their strides (broadcast and GQA-expanded batch dimensions, a transposed weight) and writes into
the output; its summation order is fixed (16 lanes, then pairwise: see that file). The torch code beside it
(`recompute_sparse_reference`, `recompute_matrix_reference`) is the readable reference, and runs where the
kernel cannot (no C compiler, other dtypes or devices) or when USE_KERNEL is False; tests/test_cpu_recompute.py
checks both against float64 dot products.

`recompute` returns a new tensor (what a custom op must do); `recompute_into` writes into the low-precision
buffer itself, for a fused site that owns that buffer (no copy of the whole output). `recompute_in_format` is the
16-bit recompute (SitePolicy.recompute_format): the selected entries from an emulated accumulator of that format.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..formats import Format
from ..kernels import cpu_recompute
from ..numerics import lp_product

USE_KERNEL = True
"""The switch: CPU sparse recompute (and the positions' scan) through the C kernel when it is built here; False:
the torch reference everywhere (another FP32 summation order, several times slower: gathered temporaries)."""


def fp32_product(x: Tensor, w: Tensor, scale: float = 1.0, bias: Tensor | None = None) -> Tensor:
    """The FP32 reference fl32(x @ w) * scale (+ bias)."""
    y = torch.matmul(x, w)
    y = y * scale if scale != 1.0 else y
    return y if bias is None else y + bias


def recompute_sparse(out: Tensor, flat: Tensor, q: Tensor, k_t: Tensor, scale: float) -> Tensor:
    """FP32 dot products written into `out` (in place) at the positions `flat` of out.view(-1). q: (…, T, D),
    k_t: (…, D, L), batch dimensions broadcasting as in torch.matmul. The C kernel where it applies, else the
    reference."""
    if _kernel_takes(out, q, k_t):
        return cpu_recompute.sparse_dot_(out, flat, q, k_t, scale)
    return recompute_sparse_reference(out, flat, q, k_t, scale)


def recompute_sparse_reference(out: Tensor, flat: Tensor, q: Tensor, k_t: Tensor, scale: float) -> Tensor:
    """`recompute_sparse` in torch: gather the q rows and k columns (two (N, D) temporaries), dot, scatter."""
    *batch_index, rows, keys = torch.unravel_index(flat, out.shape)
    q_rows = q[(*_operand_index(q, batch_index, out.dim()), rows)]  # (N, D)
    k_cols = k_t.transpose(-1, -2)[(*_operand_index(k_t, batch_index, out.dim()), keys)]  # (N, D)
    out.view(-1)[flat] = (q_rows * k_cols).sum(dim=-1) * scale  # (N,)
    return out


def _kernel_takes(out: Tensor, q: Tensor, k_t: Tensor, bias: Tensor | None = None) -> bool:
    """Whether the C kernel computes this recompute: switched on, built here, and the tensors suit it."""
    return USE_KERNEL and cpu_recompute.available() is None and cpu_recompute.suits(out, q, k_t, bias)


def _operand_index(operand: Tensor, batch_index: list[Tensor], out_dim: int) -> tuple[Tensor, ...]:
    """The operand's own batch indices for the output's: 0 where it broadcasts, none for missing dims."""
    lead = out_dim - operand.dim()  # output batch dims the operand does not have
    return tuple(idx if operand.shape[d - lead] != 1 else torch.zeros_like(idx)
                 for d, idx in enumerate(batch_index) if d >= lead)


def recompute_in_format(out: Tensor, selected: Tensor, q: Tensor, k_t: Tensor, scale: float, fmt: Format) -> Tensor:
    """out = where(selected, RN(RN(q @ k_t) · scale) in `fmt`, out), in place: the selected scores recomputed by
    an emulated accumulator of `fmt` (rounding every term to nearest) instead of FP32. Dense: the product of the
    whole output in `fmt`, from which the selected entries are taken."""
    return torch.where(selected, lp_product(q, k_t, fmt, 1, scale=scale), out, out=out)


def recompute_dense(out: Tensor, selected: Tensor, x: Tensor, w: Tensor, scale: float = 1.0,
                    bias: Tensor | None = None) -> Tensor:
    """out = where(selected, FP32 product, out), in place: one FP32 matmul, no host sync."""
    return torch.where(selected, fp32_product(x, w, scale, bias), out, out=out)


def recompute(y_hat: Tensor, selected: Tensor, x: Tensor, w: Tensor, scale: float, dense_above: float,
              bias: Tensor | None = None) -> Tensor:
    """y_hat with the selected entries recomputed, as a new tensor (see `recompute_into`)."""
    out = y_hat.clone(memory_format=torch.contiguous_format)
    return recompute_into(out, selected, x, w, scale, dense_above, bias)


def recompute_into(out: Tensor, selected: Tensor, x: Tensor, w: Tensor, scale: float, dense_above: float,
                   bias: Tensor | None = None, *, flat: Tensor | None = None) -> Tensor:
    """Overwrite the selected entries of `out` (contiguous) with their FP32 values; returns `out`.

    On the CPU: sparse recompute, or dense when the selected fraction exceeds `dense_above`. `flat`, the
    selected positions in out.view(-1) in increasing order, saves two scans when the caller already has them.
    On accelerators: the masked dense path, which needs no host synchronisation."""
    if out.device.type != "cpu":
        return recompute_dense(out, selected, x, w, scale, bias)
    if not out.is_contiguous():
        raise ValueError("recompute_into: `out` must be contiguous (the positions index out.view(-1))")
    count = flat.numel() if flat is not None else int(torch.count_nonzero(selected))  # host sync: CPU path only
    if count == 0:
        return out
    if count > dense_above * selected.numel():
        return recompute_dense(out, selected, x, w, scale, bias)
    if flat is None:
        flat = flat_positions(selected)
    if w.dim() == 2:  # one matrix for every row (lm_head, linear layers)
        return recompute_matrix(out, flat, x, w, bias, scale)
    return recompute_sparse(out, flat, x, w, scale)


def flat_positions(selected: Tensor) -> Tensor:
    """selected.reshape(-1).nonzero().squeeze(1): the C scan when it applies (8x faster: one test per 8 bytes)."""
    if (USE_KERNEL and selected.device.type == "cpu" and selected.dtype == torch.bool and selected.is_contiguous()
            and cpu_recompute.available() is None):
        return cpu_recompute.true_positions(selected)
    return selected.reshape(-1).nonzero().squeeze(1)


GATHER_COST = 16
"""A gathered FP32 dot product costs about this many multiply-adds of a BLAS GEMM (CPU, measured): the
break-even between gathering the selected dot products and one GEMM over the columns they touch."""

KERNEL_GATHER_COST = 1
"""GATHER_COST for the C kernel, which gathers nothing: on SmolLM2's lm_head (256 x 576 @ 576 x 49152, 1 thread)
it beats the GEMM over the touched columns unless nearly every row of them is selected (R x U <= ~1.5 N)."""


def recompute_matrix(out: Tensor, flat: Tensor, x: Tensor, w: Tensor, bias: Tensor | None, scale: float) -> Tensor:
    """CPU recompute, in place, of out (…, N) ≈ (x (…, K) @ w (K, N)) * scale + bias at the positions `flat` of
    out.view(-1).

    A weight matrix is shared by all rows, so the selected entries often crowd into few columns (outlier
    features, likely tokens): then one FP32 GEMM over those columns beats gathering every dot product. Else the
    C kernel where it applies (x as q, w as k_t shared by every row), or the torch gathers."""
    if _kernel_takes(out, x, w, bias):
        n = out.shape[-1]
        touched = int(torch.bincount(flat % n, minlength=n).count_nonzero())  # U, without unique's sort
        if math.prod(x.shape[:-1]) * touched > KERNEL_GATHER_COST * flat.numel():
            return cpu_recompute.sparse_dot_(out, flat, x, w, scale, bias)
        # crowded (R·U <= N): the reference takes its GEMM branch, since its own test R·U <= GATHER_COST·N holds
    return recompute_matrix_reference(out, flat, x, w, bias, scale)


def recompute_matrix_reference(out: Tensor, flat: Tensor, x: Tensor, w: Tensor, bias: Tensor | None,
                               scale: float) -> Tensor:
    """`recompute_matrix` in torch: the GEMM over the touched columns when they crowd, else gathered rows of x
    and of w's transpose in bounded chunks."""
    n, k = out.shape[-1], x.shape[-1]
    x2 = x.reshape(-1, k)  # (R, K)
    rows, keys = flat // n, flat % n
    cols, which = torch.unique(keys, return_inverse=True)  # (U,), and each entry's position in cols
    # rows of w_rows are w's columns: contiguous gathers (strided ones are ~10x slower). A linear layer's w is
    # the transposed view of its (N, K) weight, so that is the weight itself, not a copy.
    w_rows = w.t() if w.t().is_contiguous() else None
    if x2.shape[0] * cols.numel() <= GATHER_COST * flat.numel():
        columns = w_rows.index_select(0, cols).t() if w_rows is not None else w.index_select(1, cols)  # (K, U)
        sub = (x2 @ columns) * scale  # (R, U)
        if bias is not None:
            sub = sub + bias[cols]
        out.view(-1)[flat] = sub[rows, which]
        return out
    if w_rows is None:
        w_rows = w.t().contiguous()
    for start in range(0, flat.numel(), 65536):  # bounded temporaries: 64k x K floats
        r, c = rows[start:start + 65536], keys[start:start + 65536]
        values = (x2[r] * w_rows[c]).sum(dim=-1) * scale
        out.view(-1)[flat[start:start + 65536]] = values + bias[c] if bias is not None else values
    return out
