"""Time emulated low-precision-accumulator matmuls at attention-score shapes, as ratios to FP32.

    python bench/lp_matmul.py [--threads N] [--repeats R] [--sizes 128 512 1024] [--compiled]
                              [--peers-max-t 512]

For q @ k^T of shape (1, 12, T, 64) x (1, 12, 64, T) it prints a markdown table of median times of:
FP32 torch.matmul, lp_matmul strict m4, lp_matmul blocked (block_k=32) m4, native bf16 matmul,
optionally lp_matmul strict m4 with impl="compiled", and the same strict accumulation written with
the peer simulators pychop and QPyTorch (optional: skipped with a note when not importable; timed
once, up to --peers-max-t), each as a ratio to the FP32 time measured in the same run. The peers'
results are checked bit for bit against lp_matmul.
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
    """Strict m4 accumulation with pychop's rounding; returns (fn, None) or (None, why not)."""
    try:
        import pychop
    except ImportError as err:
        return None, f"pychop not importable ({err})"
    pychop.backend("torch")
    # pychop's Chop: sig_bits = stored fraction bits (no implicit bit), an 8-bit exponent is the
    # FP32 range; rmode=1 is round to nearest, ties to even; subnormal=True keeps gradual underflow.
    chop = pychop.Chop(exp_bits=8, sig_bits=M_BITS, rmode=1, subnormal=True)
    return _strict_loop(q, k_t, chop), None


def qtorch_strict(q: torch.Tensor, k_t: torch.Tensor):
    """Strict m4 accumulation with QPyTorch's float_quantize; returns (fn, None) or (None, why not)."""
    try:
        from qtorch.quant import float_quantize
    except Exception as err:  # noqa: BLE001 (ImportError, or its C++ extension failing to build)
        return None, f"qtorch not usable ({type(err).__name__}: {err})"

    def quantize(x: torch.Tensor) -> torch.Tensor:
        return float_quantize(x, exp=8, man=M_BITS, rounding="nearest")

    return _strict_loop(q, k_t, quantize), None


def _strict_loop(q: torch.Tensor, k_t: torch.Tensor, round_fn):
    def run() -> torch.Tensor:
        acc = torch.zeros(*q.shape[:-1], k_t.shape[-1])  # (1, H, T, T)
        for k in range(q.shape[-1]):
            acc = round_fn(acc + q[..., k : k + 1] * k_t[..., k : k + 1, :])
        return acc

    return run


def bench_size(tokens: int, repeats: int, compiled: bool, peers_max_t: int):
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(1, HEADS, tokens, HEAD_DIM, generator=generator)  # (1, H, T, D)
    k_t = torch.randn(1, HEADS, HEAD_DIM, tokens, generator=generator)  # (1, H, D, T)
    strict = f"strict m{M_BITS}"
    cases = {
        "fp32 matmul": lambda: torch.matmul(q, k_t),
        strict: lambda: lp_matmul(q, k_t, f"m{M_BITS}", impl="eager"),
        f"blocked({BLOCK_K}) m{M_BITS}": lambda: lp_matmul(q, k_t, f"m{M_BITS}", block_k=BLOCK_K),
        "native bf16": lambda: native_matmul(q, k_t, "bf16"),
    }
    if compiled:
        cases[f"{strict} compiled"] = lambda: lp_matmul(q, k_t, f"m{M_BITS}", impl="compiled")
    seconds = {name: median_seconds(fn, repeats) for name, fn in cases.items()}

    notes = []
    ours = lp_matmul(q, k_t, f"m{M_BITS}")
    for peer, make in (("pychop", pychop_strict), ("qtorch", qtorch_strict)):
        run, why_not = make(q, k_t)
        if run is None:
            notes.append(f"{peer} skipped: {why_not}")
            continue
        if tokens > peers_max_t:
            continue
        start = time.perf_counter()  # one run: the peers are slow; it is also the equality check
        theirs = run().to(torch.float32)
        seconds[f"{peer} {strict}"] = time.perf_counter() - start
        identical = torch.equal(ours.view(torch.int32), theirs.view(torch.int32))
        notes.append(f"T={tokens}: {peer} {strict} bit-identical to lp_matmul: {identical}")
    return seconds, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512, 1024])
    parser.add_argument("--compiled", action="store_true", help='also time impl="compiled"')
    parser.add_argument("--peers-max-t", type=int, default=512, help="time pychop/qtorch up to this T")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows, notes = [], []
    for tokens in args.sizes:
        seconds, size_notes = bench_size(tokens, args.repeats, args.compiled, args.peers_max_t)
        rows.append((tokens, seconds))
        notes += size_notes
    names = list(dict.fromkeys(name for _, seconds in rows for name in seconds))
    print(f"q @ k^T, (1, {HEADS}, T, {HEAD_DIM}) x (1, {HEADS}, {HEAD_DIM}, T); "
          f"median of {args.repeats} runs, torch {torch.__version__}, {args.threads} thread(s)\n")
    print("| T | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for tokens, seconds in rows:
        fp32 = seconds["fp32 matmul"]
        cells = [_cell(seconds.get(n), fp32) for n in names]
        print(f"| {tokens} | " + " | ".join(cells) + " |")
    print()
    for note in notes:
        print(f"- {note}")


def _cell(seconds: float | None, fp32: float) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f} ms ({seconds / fp32:.1f}x)"


if __name__ == "__main__":
    from machine import describe_machine  # bench/machine.py

    print(f"machine: {describe_machine()}", flush=True)  # the numbers below hold for this CPU
    main()
