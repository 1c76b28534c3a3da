"""The fused attention site's arithmetic in one Triton kernel: the emulated producer's scores and the FP32 scores from
one read of q and kᵀ.

    s_hat = RN(RN(lp accumulate(q @ k_t)) * scale)    = lampc.producers.emulated.EmulatedImpl.scores, bit for bit
    s32   = fl32(fl32(q @ k_t) * scale)               the FP32 product the recompute takes its values from

Both accumulators run in the same K loop (lampc/kernels/triton_lp_matmul.py: `lp_dot_tile`), so the site reads its
operands once instead of twice (producer, then the FP32 matmul of the dense recompute). s_hat follows the producer's
rules exactly, strict and blocked, bit for bit (see triton_lp_matmul.py). s32 is an FP32 dot product summed in k order without FMA (blocked:
the sum of the FP32 block sums), so it differs from torch.matmul's only by FP32 summation order:
|s32 - s32'| <= 2·K·2^-24·|scale|·Σ_k |q_k·k_k| (the tests check it; docs/NUMERICS.md's FP32 recompute bound).
"""

from __future__ import annotations

import math

import torch

from lampc.formats import Format, parse

from .triton_lp_matmul import (NO_FMA, batch_strides, check_operands, launch_batches, lp_dot_tile, tile_pointers,
                               tile_shape)
from .triton_rounding import cdiv, rounding_constants, round_to_format, tl, triton


@triton.jit
def _site_scores_kernel(q_ptr, k_ptr, s_hat_ptr, s32_ptr, scale, M, N, K, stride_qb, stride_qm, stride_qk,
                        stride_kb, stride_kk, stride_kn, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_SUM: tl.constexpr, FMT_DROPPED: tl.constexpr, FMT_FULL: tl.constexpr,
                        FMT_MIN_EXP: tl.constexpr, FMT_OVERFLOW: tl.constexpr, FMT_OVERFLOW_TO: tl.constexpr):
    rows, cols, q_rows, k_cols, row_in, col_in = tile_pointers(q_ptr, k_ptr, M, N, stride_qb, stride_qm, stride_kb,
                                                               stride_kn, BLOCK_M, BLOCK_N)
    acc, acc32 = lp_dot_tile(q_rows, k_cols, K, stride_qk, stride_kk, row_in, col_in, BLOCK_M, BLOCK_N, BLOCK_SUM,
                             True, FMT_DROPPED, FMT_FULL, FMT_MIN_EXP, FMT_OVERFLOW, FMT_OVERFLOW_TO)
    s_hat = round_to_format(acc * scale, FMT_DROPPED, FMT_FULL, FMT_MIN_EXP, FMT_OVERFLOW, FMT_OVERFLOW_TO)
    offsets = tl.program_id(2).to(tl.int64) * M * N + rows[:, None] * N + cols[None, :]
    inside = row_in[:, None] & col_in[None, :]
    tl.store(s_hat_ptr + offsets, s_hat, mask=inside)
    tl.store(s32_ptr + offsets, acc32 * scale, mask=inside)


def triton_site_scores(q3, k3, scale: float, fmt: Format | str, block_k: int = 1, *, num_warps: int = 4):
    """(s_hat, s32) of q3 (B, M, K) @ k3 (B, K, N) float32 (any strides, a batch of 1 broadcasts), both (B, M, N)
    float32 contiguous: the emulated producer's rounded, scaled scores and the FP32 scores (module docstring).
    `scale` is used as a float32, as torch's `tensor * scale` does. An identity format (fp32, m23) has no
    low-precision scores: both are torch.matmul(q3, k3) * scale, as the reference computes them."""
    fmt = parse(fmt)
    check_operands(q3, k3, block_k)
    if fmt.is_identity:
        s32 = (torch.matmul(q3, k3) * scale).contiguous()
        return s32, s32.clone()
    batch, stride_qb, stride_kb = batch_strides(q3, k3)
    rows, inner, cols = q3.shape[1], q3.shape[2], k3.shape[2]
    s_hat = torch.empty(batch, rows, cols, dtype=torch.float32, device=q3.device)
    s32 = torch.empty_like(s_hat)
    if s_hat.numel() == 0:
        return s_hat, s32
    block_m, block_n = tile_shape(rows, cols)
    for first, last in launch_batches(batch):
        grid = (cdiv(rows, block_m), cdiv(cols, block_n), last - first)
        _site_scores_kernel[grid](
            q3[first:last] if q3.shape[0] > 1 else q3, k3[first:last] if k3.shape[0] > 1 else k3,
            s_hat[first:last], s32[first:last], float(scale), rows, cols, inner,
            stride_qb, q3.stride(1), q3.stride(2), stride_kb, k3.stride(1), k3.stride(2),
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_SUM=block_k, **rounding_constants(fmt),
            num_warps=num_warps, **NO_FMA)  # no FMA (triton_lp_matmul.py's docstring)
    return s_hat, s32


def site_operands(q, k_t):
    """(q3 (B, M, K), k3 (B or 1, K, N), shape of q @ k_t): torch.matmul's batch broadcasting in the kernel's form.
    An operand broadcast over every batch dimension (a weight, a shared key) is passed as a batch of 1, read in
    place; one broadcast over some batch dimensions only is expanded and copied."""
    batch = list(torch.broadcast_shapes(q.shape[:-2], k_t.shape[:-2]))
    return _flat_batch(q, batch), _flat_batch(k_t, batch), [*batch, q.shape[-2], k_t.shape[-1]]


def _flat_batch(x, batch):
    rows, cols = x.shape[-2:]
    if math.prod(x.shape[:-2]) == 1:
        return x.reshape(1, rows, cols)
    return x.expand(*batch, rows, cols).reshape(-1, rows, cols)
