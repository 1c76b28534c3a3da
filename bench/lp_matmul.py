"""Time the emulated low-precision accumulator at attention and linear shapes, as ratios to FP32, side by side.

    python bench/lp_matmul.py [--threads 1 2] [--repeats 5] [--sizes 128 512 1024 2048 4096]
                              [--reference-max-t 1024] [--peers-max-t 512] [--cold-start]

Attention: q @ k^T, (1, 12, T, 64) x (1, 12, 64, T), the scores of a GPT-2 layer. Linear: x @ W^T at the GPT-2
(768 -> 768, 768 -> 3072, 3072 -> 768) and SmolLM2-135M (576 -> 576, 576 -> 1536, 1536 -> 576, 576 -> 192)
shapes with 256 and 1024 tokens, W the (N, K) weight as a model stores it. Columns, each the median time and its
ratio to the FP32 torch.matmul of the same run:

    strict m4          lp_matmul(..., "m4"), the default impl="fast" (the C kernel)
    blocked(32) m4     lp_matmul(..., "m4", block_k=32), impl="fast"
    strict fp16        the same kernel with a format of its own exponent range (subnormals, overflow)
    reference m4       impl="eager", the readable reference (up to --reference-max-t: it is slow)
    native bf16        native_matmul(..., "bf16"), a real bf16 GEMM (a different number model)
    pychop / qtorch    the same strict accumulation written with the peer simulators (optional, timed once up to
                       --peers-max-t, checked bit for bit against lp_matmul)

Every fast result is checked bit for bit against the reference where the reference is timed. --cold-start
builds the C kernel into an empty cache in a fresh process and reports the time (the one-time cost per machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from lampc.numerics import lp_matmul, native_matmul

HEADS, HEAD_DIM, BLOCK_K = 12, 64, 32
LINEAR_SHAPES = [  # (model, K, N)
    ("GPT-2 attn c_proj", 768, 768), ("GPT-2 mlp c_fc", 768, 3072), ("GPT-2 mlp c_proj", 3072, 768),
    ("SmolLM2 q/o_proj", 576, 576), ("SmolLM2 k/v_proj", 576, 192), ("SmolLM2 up/gate", 576, 1536),
    ("SmolLM2 down", 1536, 576),
]
LINEAR_TOKENS = (256, 1024)


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def same_bits(x: torch.Tensor, y: torch.Tensor) -> bool:
    return bool(((x.view(torch.int32) == y.view(torch.int32)) | (torch.isnan(x) & torch.isnan(y))).all())


def cases(a: torch.Tensor, b: torch.Tensor, with_reference: bool) -> dict:
    out = {
        "fp32 matmul": lambda: torch.matmul(a, b),
        "strict m4": lambda: lp_matmul(a, b, "m4"),
        f"blocked({BLOCK_K}) m4": lambda: lp_matmul(a, b, "m4", block_k=BLOCK_K),
        "strict fp16": lambda: lp_matmul(a, b, "fp16"),
        "native bf16": lambda: native_matmul(a, b, "bf16"),
    }
    if with_reference:
        out["reference m4"] = lambda: lp_matmul(a, b, "m4", impl="eager")
    return out


def check_bits(a, b, notes, label) -> None:
    for name, block_k in (("m4", 1), ("m4", BLOCK_K), ("fp16", 1)):
        fast = lp_matmul(a, b, name, block_k)
        reference = lp_matmul(a, b, name, block_k, impl="eager")
        if not same_bits(fast, reference):
            notes.append(f"**{label} {name} block_k={block_k}: fast != reference**")
            return
    notes.append(f"{label}: fast == reference bit for bit (strict m4, blocked(32) m4, strict fp16)")


def pychop_strict(q, k_t):
    try:
        import pychop
    except ImportError as err:
        return None, f"pychop not importable ({err})"
    pychop.backend("torch")
    # sig_bits = stored fraction bits; an 8-bit exponent is the FP32 range; rmode=1: nearest, ties to even
    chop = pychop.Chop(exp_bits=8, sig_bits=4, rmode=1, subnormal=True)
    return _strict_loop(q, k_t, chop), None


def qtorch_strict(q, k_t):
    try:
        from qtorch.quant import float_quantize
    except Exception as err:  # noqa: BLE001 (ImportError, or its C++ extension failing to build)
        return None, f"qtorch not usable ({type(err).__name__}: {err})"
    return _strict_loop(q, k_t, lambda x: float_quantize(x, exp=8, man=4, rounding="nearest")), None


def _strict_loop(q, k_t, round_fn):
    def run():
        acc = torch.zeros(*q.shape[:-1], k_t.shape[-1])
        for k in range(q.shape[-1]):
            acc = round_fn(acc + q[..., k : k + 1] * k_t[..., k : k + 1, :])
        return acc

    return run


def attention_rows(args, notes):
    rows = []
    for tokens in args.sizes:
        g = torch.Generator().manual_seed(tokens)
        q = torch.randn(1, HEADS, tokens, HEAD_DIM, generator=g)
        k_t = torch.randn(1, HEADS, tokens, HEAD_DIM, generator=g).transpose(-1, -2)  # a transposed view, as in a model
        with_reference = tokens <= args.reference_max_t
        seconds = {n: median_seconds(fn, args.repeats) for n, fn in cases(q, k_t, with_reference).items()}
        if with_reference:
            check_bits(q, k_t, notes, f"q·kᵀ T={tokens}")
        if tokens <= args.peers_max_t:
            ours = lp_matmul(q, k_t, "m4")
            for peer, make in (("pychop", pychop_strict), ("qtorch", qtorch_strict)):
                run, why_not = make(q, k_t)
                if run is None:
                    notes.append(f"{peer} skipped: {why_not}")
                    continue
                start = time.perf_counter()
                theirs = run().to(torch.float32)
                seconds[f"{peer} strict m4"] = time.perf_counter() - start
                notes.append(f"T={tokens}: {peer} strict m4 bit-identical to lp_matmul: {same_bits(ours, theirs)}")
        rows.append((f"q·kᵀ T={tokens}", seconds))
    return rows


def linear_rows(args, notes):
    rows = []
    for label, inner, cols in LINEAR_SHAPES:
        for tokens in LINEAR_TOKENS:
            g = torch.Generator().manual_seed(inner * cols + tokens)
            x = torch.randn(1, tokens, inner, generator=g)
            w_t = torch.randn(cols, inner, generator=g).t()  # (K, N) view of the (N, K) weight
            with_reference = tokens <= args.reference_max_t and tokens == LINEAR_TOKENS[0]
            seconds = {n: median_seconds(fn, args.repeats) for n, fn in cases(x, w_t, with_reference).items()}
            if with_reference:
                check_bits(x, w_t, notes, f"{label} {tokens} tokens")
            rows.append((f"{label} ({tokens} x {inner} -> {cols})", seconds))
    return rows


def print_table(title, rows) -> None:
    names = list(dict.fromkeys(name for _, seconds in rows for name in seconds))
    print(f"\n{title}\n")
    print("| shape | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for label, seconds in rows:
        fp32 = seconds["fp32 matmul"]
        print(f"| {label} | " + " | ".join(_cell(seconds.get(n), fp32) for n in names) + " |")


def _cell(seconds, fp32) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f} ms ({seconds / fp32:.2f}x)"


def cold_start() -> str:
    """The C kernel's one-time build, in a fresh process with an empty cache."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, LAMPC_KERNEL_CACHE=cache)
        code = ("import time; t = time.perf_counter(); from lampc.kernels import cpu_build; cpu_build.load(); "
                "print(f'{time.perf_counter() - t:.2f}')")
        build = float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                     check=True).stdout)
        cached = float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                      check=True).stdout)
    return f"cold start: building the C kernel took {build:.2f} s (once per machine); loading it cached {cached:.3f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512, 1024, 2048, 4096])
    parser.add_argument("--reference-max-t", type=int, default=1024, help="time the eager reference up to this T")
    parser.add_argument("--peers-max-t", type=int, default=512, help="time pychop/qtorch up to this T")
    parser.add_argument("--skip-linear", action="store_true")
    parser.add_argument("--cold-start", action="store_true", help="time the C kernel's one-time build")
    args = parser.parse_args()
    if args.cold_start:
        print(cold_start())
    for threads in args.threads:
        torch.set_num_threads(threads)
        notes: list[str] = []
        print(f"\n## {threads} thread(s), median of {args.repeats}, torch {torch.__version__}")
        print_table("Attention scores, q·kᵀ (1, 12, T, 64) x (1, 12, 64, T):", attention_rows(args, notes))
        if not args.skip_linear:
            print_table("Linear layers, x @ Wᵀ:", linear_rows(args, notes))
        print()
        for note in notes:
            print(f"- {note}")


if __name__ == "__main__":
    from machine import describe_machine  # bench/machine.py

    print(f"machine: {describe_machine()}", flush=True)  # the numbers below hold for this CPU
    main()
