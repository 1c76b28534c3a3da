"""ONNX export benchmark: export time, model size and ONNX Runtime CPU latency of a lampc-compiled model, against
the PyTorch compiled model and a plain FP32 ONNX export of the same (uncompiled) model, all in one run.

    python bench/onnx.py                    # the embedded model if its weights exist, else GPT-2-small shape
    python bench/onnx.py --quick            # a tiny random GPT-2, for a smoke run

Rows: PyTorch FP32 (eager), PyTorch lampc (compiled), ORT FP32 (torch.onnx.export of the uncompiled model, torch's
default optimiser), ORT lampc (export_onnx at opset 26, bit rounding) and ORT lampc at opset 18 (float rounding).
Latency = median over repeats of one forward pass (batch x seq tokens), the variants interleaved in every
repetition; torch and ORT use the same number of intra-op threads. Every ORT variant's logits are compared
with its PyTorch counterpart. Prints a markdown table (bench/onnx.md keeps a copy with the machine notes).
"""

from __future__ import annotations

import os
import sys

# This file is named onnx.py: drop its directory from the path so that `import onnx` finds the package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

import lampc
from lampc.export import export_onnx, make_session, run_session
from lampc.models import ModelNotFoundError, load_model


def pick_model(quick: bool):
    """(name, model): the embedded model if present, else a random GPT-2 (small shape, or tiny for --quick)."""
    if not quick:
        try:
            return "embedded", load_model("embedded")[0]
        except ModelNotFoundError:
            pass
    torch.manual_seed(0)
    if quick:
        config = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=64)
        name = "random GPT-2 (2 layers, d=32)"
    else:
        config = GPT2Config()  # GPT-2 small: 12 layers, 12 heads, d=768, vocab 50257, context 1024
        name = "random GPT-2-small shape (124M)"
    config._attn_implementation = "eager"
    return name, GPT2LMHeadModel(config).eval()


class Logits(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def export_plain(model, path: str, max_len: int) -> float:
    """torch.onnx.export of the uncompiled FP32 model (dynamic batch and sequence); returns seconds."""
    start = time.perf_counter()
    ids = torch.zeros(2, 16, dtype=torch.long)
    mask = torch.ones_like(ids)
    batch, seq = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("seq", min=2, max=max_len)
    torch.onnx.export(Logits(model), (ids, mask), path, dynamo=True, opset_version=18, verbose=False,
                      input_names=["input_ids", "attention_mask"], output_names=["logits"],
                      dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
                      external_data=False)
    return time.perf_counter() - start


def noise_floor(model, args, ids, mask, want: np.ndarray) -> float:
    """max |lampc logits of a one-ulp perturbed copy of the model - lampc logits|."""
    import copy

    perturbed = copy.deepcopy(model)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in perturbed.parameters():
            sign = torch.randint(0, 2, p.shape, generator=g).float() * 2 - 1
            p.mul_(1 + sign * 2.0**-23)
        compiled = lampc.compile(perturbed, format=args.format, criterion=args.criterion, tau=args.tau)
        compiled.record_stats(False)
        got = compiled(ids, attention_mask=mask).logits.numpy()
    return float(np.abs(got - want).max())


def ort_fn(sess, ids, mask):
    return lambda: run_session(sess, ids, mask, outputs=["logits"])


def median_ms(fns: dict, repeats: int) -> dict:
    times = {name: [] for name in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny random model (smoke run)")
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence (default 128)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for torch and ORT (default 1)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--format", default="m4")
    parser.add_argument("--criterion", default="strict")
    parser.add_argument("--tau", type=float, default=0.1)
    parser.add_argument("--no-arith", action="store_true", help="skip the opset-18 (float rounding) export")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    name, model = pick_model(args.quick)
    seq = min(args.seq, model.config.n_positions)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, seq), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)

    rows = {}  # variant -> dict(export_s, size_mb, ms, diff)
    with tempfile.TemporaryDirectory() as tmp:
        plain_path = os.path.join(tmp, "plain.onnx")
        rows["ORT FP32 (plain export)"] = {"export_s": export_plain(model, plain_path, model.config.n_positions)}
        start = time.perf_counter()
        compiled = lampc.compile(model, format=args.format, criterion=args.criterion, tau=args.tau)
        compile_s = time.perf_counter() - start
        compiled.record_stats(False)
        exports = {"ORT lampc (opset 26, bits)": (26, os.path.join(tmp, "lampc26.onnx"))}
        if not args.no_arith:
            exports["ORT lampc (opset 18, arith)"] = (18, os.path.join(tmp, "lampc18.onnx"))
        for variant, (opset, path) in exports.items():
            rows[variant] = {"export_s": export_onnx(compiled, path, opset=opset).seconds}
        paths = {"ORT FP32 (plain export)": plain_path, **{v: p for v, (_, p) in exports.items()}}
        sessions = {v: make_session(p, threads=args.threads, providers=["CPUExecutionProvider"])
                    for v, p in paths.items()}
        for variant, path in paths.items():
            rows[variant]["size_mb"] = os.path.getsize(path) / 1e6

        with torch.no_grad():
            want_fp32 = model(input_ids=ids, attention_mask=mask).logits.numpy()
            want_lampc = compiled(ids, attention_mask=mask).logits.numpy()
        effect = float(np.abs(want_lampc - want_fp32).max())
        floor = noise_floor(model, args, ids, mask, want_lampc)
        for variant, sess in sessions.items():
            got = run_session(sess, ids, mask, outputs=["logits"])["logits"]
            rows[variant]["diff"] = float(np.abs(got - (want_fp32 if "FP32" in variant else want_lampc)).max())

        def torch_fn(fn):
            def run():
                with torch.no_grad():
                    fn(ids, attention_mask=mask)
            return run

        fns = {"PyTorch FP32 (eager)": torch_fn(model), "PyTorch lampc (compiled)": torch_fn(compiled)}
        for variant, sess in sessions.items():
            fns[variant] = ort_fn(sess, ids, mask)
        for variant, ms in median_ms(fns, args.repeats).items():
            rows.setdefault(variant, {})["ms"] = ms

    print(table(rows, name, args, seq, compile_s))
    print(f"\nFor scale: the policy itself moves the logits by max |PyTorch lampc - PyTorch FP32| = {effect:.3g}; "
          f"PyTorch lampc with every weight perturbed by one ulp (relative 2^-23, random sign) moves them by "
          f"{floor:.3g}: the low-precision rounding is discontinuous, so FP32 kernel differences of one ulp (as "
          f"between torch's and ORT's GEMMs) move some accumulators across a rounding boundary.")
    return 0


def table(rows: dict, name: str, args, seq: int, compile_s: float) -> str:
    base_export = rows["ORT FP32 (plain export)"]["export_s"]
    base_size = rows["ORT FP32 (plain export)"]["size_mb"]
    torch_lampc = rows["PyTorch lampc (compiled)"]["ms"]
    ort_fp32 = rows["ORT FP32 (plain export)"]["ms"]
    header = (f"{name}; policy {args.format} {args.criterion} tau={args.tau}; batch {args.batch} x seq {seq}; "
              f"{args.threads} thread(s); median of {args.repeats}; torch {torch.__version__}, "
              f"onnxruntime {__import__('onnxruntime').__version__}; lampc.compile took {compile_s:.1f} s")
    lines = [
        header,
        "",
        "| variant | export | size | latency | vs PyTorch lampc | vs ORT FP32 | max abs logit diff vs its PyTorch twin |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, row in rows.items():
        export = f"{row['export_s']:.1f} s ({row['export_s'] / base_export:.2f}x)" if "export_s" in row else "-"
        size = f"{row['size_mb']:.1f} MB ({row['size_mb'] / base_size:.3f}x)" if "size_mb" in row else "-"
        diff = f"{row['diff']:.2g}" if "diff" in row else "-"
        lines.append(f"| {variant} | {export} | {size} | {row['ms']:.1f} ms | {row['ms'] / torch_lampc:.2f}x | "
                     f"{row['ms'] / ort_fp32:.2f}x | {diff} |")
    return "\n".join(lines)


if __name__ == "__main__":
    from machine import describe_machine  # bench/machine.py

    print(f"machine: {describe_machine()}", flush=True)  # the numbers below hold for this CPU
    sys.exit(main())
