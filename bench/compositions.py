"""LAMP beyond attention: every matmul lowered, guarded at attention only vs at every composition.

    python bench/compositions.py [--n-seq 8] [--seq-len 256] [--formats m7,m4]

On the embedded model and Persuasion, with every matmul of the model lowered to the format (sites="all",
emulated, strict accumulation): KL and flip rate vs FP32 for
  uniform            no look-ahead anywhere;
  LAMP attention     the paper's setting: strict look-ahead at the softmax sites only, the rest uniform;
  LAMP all           look-ahead at every composition: attention, layer_norm (residual + linear), gelu, logits;
with the recompute rate of each site kind. Writes a markdown table to stdout (kept in bench/accuracy.md).
"""

from __future__ import annotations

import argparse
import sys

import torch

from lampc.eval.data import make_sequences, persuasion_text
from lampc.eval.sweep import Sweep
from lampc.models import load_model
from lampc.policy import SITE_KINDS, SitePolicy


def configurations(fmt: str, attention_tau: float, budgets: list[float]):
    """(name, policy overrides) of every compared configuration."""
    uniform = SitePolicy(format=fmt, criterion="uniform")
    lowered = {kind: uniform for kind in SITE_KINDS}
    yield "uniform", dict(lowered, sites="all")
    attention = SitePolicy(format=fmt, criterion="strict", tau=attention_tau)
    yield f"LAMP attention (strict {attention_tau:g})", dict(lowered, attention=attention, sites="all")
    for budget in budgets:
        guarded = SitePolicy(format=fmt, criterion="budget", budget=budget)
        everywhere = {kind: guarded for kind in ("layer_norm", "gelu", "logits")}
        yield f"LAMP all (attention strict {attention_tau:g}, others budget {budget:g})", dict(
            everywhere, attention=attention, sites="all")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--formats", default="m7,m4")
    parser.add_argument("--n-seq", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--attention-tau", type=float, default=0.1)
    parser.add_argument("--budgets", default="0.02,0.05,0.1")
    args = parser.parse_args(argv)
    budgets = [float(b) for b in args.budgets.split(",")]
    model, tokenizer = load_model("embedded")
    ids = torch.tensor(tokenizer(persuasion_text())["input_ids"])
    sweep = Sweep(model, make_sequences(ids, args.seq_len, args.n_seq, seed=42), batch_size=4, progress=False)
    print(f"command: python bench/compositions.py {' '.join(sys.argv[1:] if argv is None else argv)}\n")
    print(f"Embedded model, Persuasion, {args.n_seq} x {args.seq_len} tokens, seed 42, every matmul lowered "
          "(emulated, strict accumulation).\n")
    print("| format | configuration | KL | flip rate | KL vs uniform | recompute: attention | layer_norm | gelu | logits |")
    print("|---|---|---|---|---|---|---|---|---|")
    for fmt in args.formats.split(","):
        uniform_kl = None
        for name, overrides in configurations(fmt, args.attention_tau, budgets):
            compiled = sweep.compiler(**overrides)
            result = sweep.measure(compiled)
            by_kind = compiled.stats()["by_kind"]
            uniform_kl = uniform_kl if uniform_kl is not None else result["kl"]
            rates = " | ".join(f"{100 * by_kind[k]['rate']:.2f}%" if k in by_kind else "-"
                               for k in ("attention", "layer_norm", "gelu", "logits"))
            print(f"| {fmt} | {name} | {result['kl']:.3e} | {result['flip_rate']:.4f} | "
                  f"{uniform_kl / result['kl']:.1f}x | {rates} |", flush=True)


if __name__ == "__main__":
    from machine import describe_machine  # bench/machine.py

    print(f"machine: {describe_machine()}", flush=True)  # the numbers below hold for this CPU
    main()
