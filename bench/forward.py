"""Whole-forward cost of the emulated producer: FP32 vs attention-only m4 strict vs every matmul m7, side by side.

    python bench/forward.py [--models embedded smollm2-135m] [--threads 1] [--repeats 3] [--impls fast eager]

For each model and sequence length (embedded: 4 x 256 and 4 x 512, its context; SmolLM2-135M: 1 x 256 and
1 x 1024), on Persuasion tokens (trained weights on real text: the look-ahead does its deployed work), the median
wall time of one forward of:

    fp32                   the Hugging Face model
    attention m4 strict    lampc.compile(model, format="m4")                 (the paper's protocol, the default rule)
    sites=all m7 strict    lampc.compile(model, format="m7", sites="all")    (every matmul lowered)

each with the fast producer (the C kernel, the default) and, with --impls eager, the readable reference, as a ratio
to FP32 in the same run (variants interleaved in every repetition). Statistics are off while timing; the
recompute rate printed is from one more call with them on. The issue's targets: attention-only <= 1.5x FP32,
sites="all" m7 <= 6x.
"""

from __future__ import annotations

import argparse
import os
import warnings

import torch

import lampc
from lampc.eval.data import make_sequences, persuasion_text
from lampc.models import load_model
from deploy import time_variants  # bench/deploy.py: warm-up, then the variants interleaved in every repetition

SHAPES = {"embedded": [(4, 256), (4, 512)], "smollm2-135m": [(1, 256), (1, 1024)]}
VARIANTS = {"attention m4 strict": dict(format="m4"), "sites=all m7 strict": dict(format="m7", sites="all")}


def set_impl(impl):
    """Wrap a call so that lp_matmul runs with `impl` (the module default is read at each call)."""
    from lampc.numerics import accumulate

    def wrap(fn):
        def run(ids):
            before = accumulate.DEFAULT_IMPL
            accumulate.DEFAULT_IMPL = impl
            try:
                return fn(ids)
            finally:
                accumulate.DEFAULT_IMPL = before
        return run
    return wrap


def bench_model(name, args):
    model, tokenizer = load_model(name)
    text = torch.tensor(tokenizer(persuasion_text())["input_ids"])
    compiled = {label: lampc.compile(model, steps="none", **kw) for label, kw in VARIANTS.items()}
    fns = {"fp32": lambda ids: model(input_ids=ids).logits}
    for impl in args.impls:
        for label, c in compiled.items():
            fns[f"{label} ({impl})"] = set_impl(impl)((lambda c: lambda ids: c(ids).logits)(c))
    rows = []
    for batch, seq in SHAPES[name]:
        ids = make_sequences(text, seq, batch, seed=7)
        for c in compiled.values():
            c.record_stats(False)
        medians = time_variants(fns, ids, args.repeats)
        notes = []
        for label, c in compiled.items():
            c.reset_stats()
            c.record_stats(True)
            with torch.no_grad():
                c(ids)
            notes.append(f"{label}: {100 * c.stats()['overall']['rate']:.2f}% recomputed")
        rows.append((f"{name}, {batch} x {seq}", medians, notes))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--impls", nargs="+", default=["fast"], choices=["fast", "eager"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*first cached call.*")
    print(f"{args.threads} thread(s), median of {args.repeats}, torch {torch.__version__}\n")
    rows = [row for name in args.models for row in bench_model(name, args)]
    names = list(rows[0][1])
    print("| model, batch x seq | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for label, medians, _ in rows:
        fp32 = medians["fp32"]
        print(f"| {label} | " + " | ".join(f"{medians[n] * 1e3:.0f} ms ({medians[n] / fp32:.2f}x)" for n in names)
              + " |")
    print()
    for label, _, notes in rows:
        print(f"- {label}: " + "; ".join(notes))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from machine import describe_machine  # bench/machine.py

    print(f"machine: {describe_machine()}", flush=True)
    main()
