"""Deployment speed and accuracy: LAMP on native bf16 vs FP32 vs torch.autocast bf16, side by side in one run.

    python bench/deploy.py                      # full run (GPT-2-124M shape; ~15 min on 2 cores)
    python bench/deploy.py --quick              # small shapes, for a smoke run

Speed: a GPT-2-124M-shaped model with random weights (timing does not depend on weights), batch x seq in
{1, 8} x {256, 1024}; wall time = median of repeated runs, the variants interleaved in every repetition;
peak memory = the process's peak RSS growth over the variant's first run (a fresh subprocess per variant would
be cleaner; RSS growth in one process is a lower bound). Accuracy: KL / flip rate vs FP32 on the embedded model
and Persuasion, with the recompute rate. Writes a markdown table to stdout (bench/deploy.md keeps a copy).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

import lampc

ALL_KINDS = ["attention", "layer_norm", "gelu", "logits"]  # columns of the recompute-rate report


def variants(model, taus, *, with_torch_compile=False):
    """name -> callable(input_ids) for every configuration compared; and the lampc models among them."""
    native = dict(sites="all", format="bf16", backend="native")
    out = {"fp32": lambda ids: model(input_ids=ids).logits}

    def autocast(ids):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(input_ids=ids).logits.float()

    out["autocast bf16"] = autocast
    compiled = {"lampc uniform bf16": lampc.compile(model, criterion="uniform", **native)}
    for tau in taus:
        compiled[f"lampc LAMP bf16 (attention strict {tau:g})"] = lampc.compile(
            model, criterion="strict", tau=tau, fused=True, **native)
    compiled["lampc LAMP bf16 (attention strict, layer_norm budget 0.02)"] = lampc.compile(
        model, lampc.Policy(attention=lampc.SitePolicy(format="bf16", backend="native", criterion="strict",
                                                       tau=taus[0], fused=True),
                            layer_norm=lampc.SitePolicy(format="bf16", backend="native", criterion="budget",
                                                        budget=0.02, fused=True), sites="all"))
    for name, c in compiled.items():
        c.record_stats(False)
        out[name] = (lambda c: (lambda ids: c(ids).logits))(c)
    if with_torch_compile:
        first = compiled[f"lampc LAMP bf16 (attention strict {taus[0]:g})"]
        graph = torch.compile(first.graph_module, dynamic=False)
        out[f"  same + torch.compile"] = lambda ids: graph(input_ids=ids, attention_mask=torch.ones_like(ids),
                                                          use_cache=False).logits
    return out, compiled


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_variants(fns, ids, repeats):
    times = {name: [] for name in fns}
    memory = {}
    with torch.no_grad():
        for name, fn in fns.items():  # warm-up, and the memory reading
            before = peak_rss_mb()
            fn(ids)
            memory[name] = peak_rss_mb() - before
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn(ids)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, memory


def speed(args):
    torch.manual_seed(0)
    layers, width = (12, 768) if not args.quick else (2, 256)
    config = GPT2Config(n_layer=layers, n_embd=width, n_head=width // 64, vocab_size=50257, n_positions=1024,
                        attn_implementation="eager")
    model = GPT2LMHeadModel(config).eval()
    fns, _ = variants(model, args.taus, with_torch_compile=args.torch_compile)
    shapes = args.shapes if not args.quick else [(1, 128), (2, 128)]
    print(f"## Speed: GPT-2 shape ({layers} layers, {width} wide, vocab 50257), random weights, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}\n")
    print("| batch x seq | " + " | ".join(fns) + " |")
    print("|---" * (len(fns) + 1) + "|")
    for batch, seq in shapes:
        ids = torch.randint(0, 50257, (batch, seq))
        medians, memory = time_variants(fns, ids, args.repeats)
        base = medians["fp32"]
        cells = [f"{1000 * medians[n]:.0f} ms ({base / medians[n]:.2f}x, +{memory[n]:.0f} MB)" for n in fns]
        print(f"| {batch} x {seq} | " + " | ".join(cells) + " |", flush=True)
    print("\n(x = speed-up over FP32 in the same run; MB = peak RSS growth during the first call)\n")


def accuracy(args):
    from lampc.eval.data import make_sequences, persuasion_text
    from lampc.eval.metrics import LogitComparison
    from lampc.models import load_model

    model, tokenizer = load_model("embedded")
    ids = torch.tensor(tokenizer(persuasion_text())["input_ids"])
    seqs = make_sequences(ids, args.seq_len, args.n_seq, seed=42)
    fns, compiled = variants(model, args.taus)
    for c in compiled.values():
        c.record_stats(True)
    print(f"## Accuracy vs FP32: embedded model, Persuasion, {args.n_seq} x {args.seq_len} tokens\n")
    print("| variant | KL | flip rate | recompute rate (attention / layer_norm / gelu / logits) |")
    print("|---|---|---|---|")
    with torch.no_grad():
        refs = [model(input_ids=seqs[i:i + 4]).logits for i in range(0, len(seqs), 4)]
        for name, fn in fns.items():
            if name == "fp32":
                continue
            acc = LogitComparison()
            for i, ref in zip(range(0, len(seqs), 4), refs):
                acc.update(ref, fn(seqs[i:i + 4]), seqs[i:i + 4])
            result = acc.result()
            rates = "-"
            if name in compiled:
                by_kind = compiled[name].stats()["by_kind"]
                rates = " / ".join(f"{100 * by_kind[k]['rate']:.2f}%" if k in by_kind else "-" for k in ALL_KINDS)
            print(f"| {name} | {result['kl']:.3e} | {result['flip_rate']:.4f} | {rates} |", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small model and shapes (smoke run)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--taus", type=lambda s: [float(x) for x in s.split(",")], default=[1.0, 0.2],
                        help="strict tau of the LAMP attention variants, comma separated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", type=lambda s: [tuple(int(v) for v in p.split("x")) for p in s.split(",")],
                        default=[(1, 256), (8, 256), (1, 1024), (8, 1024)], help="batch x seq list, e.g. 1x256,8x256")
    parser.add_argument("--torch-compile", action="store_true", help="also time torch.compile of a LAMP graph")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--n-seq", type=int, default=16)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"command: python bench/deploy.py {' '.join(sys.argv[1:])}\n")
    if not args.skip_speed:
        speed(args)
    if not args.skip_accuracy:
        accuracy(args)


if __name__ == "__main__":
    main()
