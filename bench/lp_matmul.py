"""Time emulated low-precision-accumulator matmuls at attention-score shapes, as ratios to FP32.

    python bench/lp_matmul.py [--threads N] [--repeats R] [--sizes 128 512 1024] [--compiled]

For q @ k^T of shape (1, 12, T, 64) x (1, 12, 64, T) it prints a markdown table of median times of:
FP32 torch.matmul, lp_matmul strict m4, lp_matmul blocked (block_k=32) m4, native bf16 matmul,
optionally lp_matmul strict m4 with impl="compiled", and the same strict accumulation written with
pychop (a peer rounding simulator; optional: skipped with a note when it is not importable), each
as a ratio to the FP32 time measured in the same run. pychop's result is checked bit for bit.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lampc.numerics import lp_matmul, native_matmul

HEADS, HEAD_DIM, M_BITS, BLOCK_K = 12, 64, 4, 32


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (and compile, for the compiled path)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pychop_strict(q: torch.Tensor, k_t: torch.Tensor):
    """Strict m4 accumulation with pychop's rounding (RNE to a custom mantissa, FP32 exponent range).

    Returns (fn, why_not): fn runs the accumulation; why_not says why pychop cannot be used."""
    try:
        import pychop
    except ImportError as err:
        return None, f"pychop not importable ({err})"
    pychop.backend("torch")
    # pychop's Chop: sig_bits = stored fraction bits (no implicit bit), an 8-bit exponent is the
    # FP32 range; rmode=1 is round to nearest, ties to even; subnormal=True keeps gradual underflow.
    chop = pychop.Chop(exp_bits=8, sig_bits=M_BITS, rmode=1, subnormal=True)

    def run() -> torch.Tensor:
        acc = torch.zeros(*q.shape[:-1], k_t.shape[-1])  # (1, H, T, T)
        for k in range(q.shape[-1]):
            acc = chop(acc + q[..., k : k + 1] * k_t[..., k : k + 1, :])
        return acc

    return run, None


def bench_size(tokens: int, repeats: int, compiled: bool) -> tuple[dict, list[str]]:
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(1, HEADS, tokens, HEAD_DIM, generator=generator)  # (1, H, T, D)
    k_t = torch.randn(1, HEADS, HEAD_DIM, tokens, generator=generator)  # (1, H, D, T)
    notes = []
    cases = {
        "fp32 matmul": lambda: torch.matmul(q, k_t),
        f"strict m{M_BITS}": lambda: lp_matmul(q, k_t, f"m{M_BITS}", impl="eager"),
        f"blocked({BLOCK_K}) m{M_BITS}": lambda: lp_matmul(q, k_t, f"m{M_BITS}", block_k=BLOCK_K),
        "native bf16": lambda: native_matmul(q, k_t, "bf16"),
    }
    if compiled:
        cases[f"strict m{M_BITS} compiled"] = lambda: lp_matmul(q, k_t, f"m{M_BITS}", impl="compiled")
    chop_run, why_not = pychop_strict(q, k_t)
    if chop_run is None:
        notes.append(f"pychop skipped: {why_not}")
    else:
        ours = lp_matmul(q, k_t, f"m{M_BITS}")
        theirs = chop_run().to(torch.float32)
        identical = torch.equal(ours.view(torch.int32), theirs.view(torch.int32))
        notes.append(f"T={tokens}: pychop strict m{M_BITS} bit-identical to lp_matmul: {identical}")
        cases[f"pychop strict m{M_BITS}"] = chop_run
    seconds = {name: median_seconds(fn, repeats) for name, fn in cases.items()}
    return seconds, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512, 1024])
    parser.add_argument("--compiled", action="store_true", help='also time impl="compiled"')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows, notes = [], []
    for tokens in args.sizes:
        seconds, size_notes = bench_size(tokens, args.repeats, args.compiled)
        rows.append((tokens, seconds))
        notes += size_notes
    names = list(rows[0][1])
    print(f"q @ k^T, (1, {HEADS}, T, {HEAD_DIM}) x (1, {HEADS}, {HEAD_DIM}, T); "
          f"median of {args.repeats} runs, torch {torch.__version__}, {args.threads} thread(s)\n")
    print("| T | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for tokens, seconds in rows:
        fp32 = seconds["fp32 matmul"]
        cells = [f"{seconds[n] * 1e3:.1f} ms ({seconds[n] / fp32:.1f}x)" for n in names]
        print(f"| {tokens} | " + " | ".join(cells) + " |")
    print()
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()
