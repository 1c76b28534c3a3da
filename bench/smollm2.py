"""LAMP on SmolLM2-135M-Instruct (Llama, 30 layers, GQA): accuracy against FP32 on Persuasion, speed and memory.

    python bench/smollm2.py                    # the measurement in bench/accuracy_smollm2.md (~25 min, 1 thread)
    python bench/smollm2.py --quick            # 2 sequences, a few cells: a smoke run (~3 min)

Protocol (docs/METHOD.md §5, via lampc.eval.sweep): Persuasion tokenised with SmolLM2's tokenizer, --n-seq windows of
--seq-len tokens drawn with --seed; one FP32 reference pass per window and one capture for the whole run (Sweep);
every cell (format x criterion x tau) rewrites a copy of the captured graph and runs all windows. Cells run
in order of importance (m4 before m7; uniform, strict, random, oracle, relaxed), and every finished row is
appended to OUT/rows.jsonl, so an interrupted run keeps what it measured.

Recompute rate = selected / causally visible (query, key) entries, the mean over the 30 layers ("layer-mean", the
paper's) and pooled over all layers (no padding here, so every layer has the same denominator and the two agree).

Speed and memory: one window (1 x seq_len), FP32 model vs compiled m4 (uniform, strict at --time-tau), statistics
taps off; wall time = median of --repeats runs after one warm-up, variants interleaved; peak memory = growth of
the process's peak resident set (VmHWM, reset through /proc/self/clear_refs after malloc_trim) over one forward.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from peak_memory import peak_growth_mb  # bench/peak_memory.py: this script's directory is on sys.path

from lampc.eval.report_table import loglog_interpolate

STRICT_TAUS = (1.0, 0.3, 0.1, 0.03, 0.01)  # recompute rates ~1% .. ~15% on SmolLM2 at T=256
ORACLE_TAUS = (1.0, 0.1, 0.03)
RELAXED_TAUS = (0.3, 0.1, 0.03, 0.01)
M7_STRICT_TAUS = (0.3, 0.1, 0.03)
M7_ORACLE_TAUS = (0.1,)
M7_RELAXED_TAUS = (0.03, 0.01)
REFERENCE_POINTS = ((0.046, 38.0), (0.088, 100.0))  # m4 strict: (recompute rate, KL reduction vs uniform)


def plan(quick: bool):
    from lampc.eval.sweep import Cell

    if quick:
        return [Cell("m4", "uniform"), Cell("m4", "strict", 0.1), Cell("m4", "random", 0.1, "strict"),
                Cell("m4", "relaxed", 0.03)]
    cells = [Cell("m4", "uniform")]
    cells += [Cell("m4", "strict", t) for t in STRICT_TAUS]
    cells += [Cell("m4", "random", t, "strict") for t in STRICT_TAUS]
    cells += [Cell("m4", "oracle", t, "strict") for t in ORACLE_TAUS]
    cells += [Cell("m4", "relaxed", t) for t in RELAXED_TAUS]
    cells += [Cell("m7", "uniform")]
    cells += [Cell("m7", "strict", t) for t in M7_STRICT_TAUS]
    cells += [Cell("m7", "random", t, "strict") for t in M7_STRICT_TAUS]
    cells += [Cell("m7", "oracle", t, "strict") for t in M7_ORACLE_TAUS]
    cells += [Cell("m7", "relaxed", t) for t in M7_RELAXED_TAUS]
    return cells


# ---- speed and memory -----------------------------------------------------------------------------------------


def _forward(compiled, ids, mask):
    return lambda: compiled(ids, attention_mask=mask).logits


def time_and_memory(model, compiler, ids, tau: float, repeats: int) -> list[dict]:
    mask = torch.ones_like(ids)
    variants = {"FP32 (eager HF model)": lambda: model(input_ids=ids, attention_mask=mask, use_cache=False).logits}
    policies = {"m4 uniform": {"criterion": "uniform"}, f"m4 strict tau={tau:g}": {"criterion": "strict", "tau": tau}}
    for label, kw in policies.items():
        compiled = compiler(format="m4", **kw)
        compiled.record_stats(False)
        variants[f"lampc {label}"] = _forward(compiled, ids, mask)
    rows = {name: {"variant": name, "times": []} for name in variants}
    with torch.no_grad():
        for name, fn in variants.items():  # warm-up doubles as the memory reading
            rows[name]["peak_mb"] = peak_growth_mb(fn)
        for _ in range(repeats):
            for name, fn in variants.items():
                t0 = time.perf_counter()
                fn()
                rows[name]["times"].append(time.perf_counter() - t0)
    for row in rows.values():
        row["median_s"] = statistics.median(row["times"])
    base = rows["FP32 (eager HF model)"]["median_s"]
    for row in rows.values():
        row["vs_fp32"] = row["median_s"] / base
    return list(rows.values())


# ---- tables -------------------------------------------------------------------------------------------------


def md_table(headers, body) -> str:
    rule = "|" + "|".join("---:" if i > 1 else "---" for i in range(len(headers))) + "|"
    out = ["| " + " | ".join(headers) + " |", rule]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(out)


def _e(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2e}"


def _pct(v, d=2) -> str:
    return "-" if v is None else f"{100 * v:.{d}f}%"


def _x(v) -> str:
    return "-" if v is None or math.isnan(v) else ("inf" if math.isinf(v) else f"{v:.3g}x")


def accuracy_table(rows: list[dict]) -> str:
    uniform = {r["format"]: r["kl"] for r in rows if r["criterion"] == "uniform"}
    order = {"uniform": 0, "strict": 1, "random": 2, "oracle": 3, "relaxed": 4}
    body = []
    for r in sorted(rows, key=lambda r: (r["format"], order.get(r["criterion"], 9), -(r["tau"] or 0))):
        gain = uniform.get(r["format"], float("nan")) / r["kl"] if r["kl"] else float("inf")
        body.append([r["format"], r["criterion"], "-" if r["tau"] is None else f"{r['tau']:g}",
                     _pct(r["recompute_rate"]), _pct(r["recompute_rate_pooled"]), _e(r["kl"]), _x(gain),
                     _pct(r["flip_rate"]), _pct(r["top1_match"]), f"{r['ppl_test']:.3f}", _e(r["kl_max"]),
                     f"{r['seconds']:.0f}"])
    headers = ["format", "criterion", "tau", "rate (layer-mean)", "rate (pooled)", "KL(P_ref‖P_test)",
               "KL reduction vs uniform", "flip rate", "top-1 match", "ppl", "KL max (position)", "s"]
    return md_table(headers, body)


def same_rate_table(rows: list[dict]) -> str:
    """strict vs random vs oracle at the same per-row counts (same tau), per format."""
    by = {(r["format"], r["criterion"], r["tau"]): r for r in rows}
    body = []
    for (fmt, crit, tau), r in sorted(by.items(), key=lambda kv: (kv[0][0], -(kv[0][2] or 0))):
        if crit != "strict":
            continue
        rnd, orc = by.get((fmt, "random", tau)), by.get((fmt, "oracle", tau))
        body.append([fmt, f"{tau:g}", _pct(r["recompute_rate"]), _e(r["kl"]), _e(rnd and rnd["kl"]),
                     _x(rnd["kl"] / r["kl"]) if rnd else "-", _e(orc and orc["kl"]),
                     _pct(r["flip_rate"]), _pct(rnd and rnd["flip_rate"]), _pct(orc and orc["flip_rate"])])
    headers = ["format", "strict tau", "rate", "KL strict", "KL random", "random / strict", "KL oracle",
               "flip strict", "flip random", "flip oracle"]
    return md_table(headers, body)


def interpolate_gain(rows: list[dict], fmt: str, rate: float) -> float | None:
    """KL reduction of `strict` vs uniform at `rate`, log-log interpolated between measured strict cells."""
    uniform = next((r["kl"] for r in rows if r["format"] == fmt and r["criterion"] == "uniform"), None)
    pts = sorted((r["recompute_rate"], r["kl"]) for r in rows
                 if r["format"] == fmt and r["criterion"] == "strict" and r["kl"] > 0 and r["recompute_rate"] > 0)
    if uniform is None:
        return None
    kl = loglog_interpolate(pts, rate)
    return None if kl is None else uniform / kl


def timing_table(timing: list[dict]) -> str:
    body = [[t["variant"], f"{t['median_s']:.2f}", f"{t['vs_fp32']:.2f}x", f"{t['peak_mb']:.0f}",
             " ".join(f"{x:.2f}" for x in t["times"])] for t in timing]
    return md_table(["variant (1 x T)", "median s / forward", "vs FP32", "peak RSS growth MB", "runs (s)"], body)


# ---- main -------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-seq", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: a shared 2-core box)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per variant")
    p.add_argument("--time-tau", type=float, default=0.1, help="strict tau of the timed LAMP variant")
    p.add_argument("--out", default="out/smollm2",
                   help="directory for rows.jsonl, results.csv/json and plots (out/ is git-ignored)")
    p.add_argument("--quick", action="store_true", help="2 sequences and 4 cells (smoke run)")
    args = p.parse_args(argv)
    if args.quick:
        args.n_seq, args.repeats = 2, 1
    torch.set_num_threads(args.threads)

    from lampc.eval.sweep import Sweep, load_sequences, metadata, write_outputs
    from lampc.models import load_model

    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model, tokenizer = load_model("smollm2-135m")
    t_load = time.perf_counter() - t0
    sequences, dataset = load_sequences(tokenizer, seq_len=args.seq_len, n_seq=args.n_seq, seed=args.seed)
    info = {"model": "smollm2-135m", "seed": args.seed, "n_seq": args.n_seq, "seq_len": args.seq_len,
            "dataset": dataset, "shuffle": False}
    t0 = time.perf_counter()
    sweep = Sweep(model, sequences, batch_size=args.batch_size, info=info, progress=False)
    t_setup = time.perf_counter() - t0
    print(f"loaded in {t_load:.0f} s; FP32 reference + capture in {t_setup:.0f} s; {args.threads} thread(s)",
          file=sys.stderr, flush=True)

    timing = time_and_memory(model, sweep.compiler, sequences[:1], args.time_tau, args.repeats)
    print(timing_table(timing), file=sys.stderr, flush=True)

    cells = plan(args.quick)
    rows = []
    gc.collect()  # the timed variants' graph copies
    peak_growth_mb(lambda: None)  # reset VmHWM: the peak below is that of the accuracy cells
    rss_before_cells = _rss_kb("VmRSS") / 1024
    with (out / "rows.jsonl").open("w") as log:
        for i, cell in enumerate(cells):
            row = sweep.run([cell])[0]
            rows.append(row)
            gc.collect()  # the cell's graph copy (weights included) sits in reference cycles
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(f"[{i + 1}/{len(cells)}] {cell.label}: rate {row['recompute_rate']:.4f} KL {row['kl']:.3e} "
                  f"flip {row['flip_rate']:.4f} ({row['seconds']:.0f} s)", file=sys.stderr, flush=True)
    meta = metadata(sweep, cells, command=" ".join(["python", *sys.argv]), started=None,
                    batch_size=args.batch_size, count_from="strict")
    meta.update(threads=args.threads, timing=timing, load_seconds=t_load, setup_seconds=t_setup)
    write_outputs(rows, out, meta)

    total = time.perf_counter() - t_start
    print(f"## SmolLM2-135M, {args.n_seq} x {args.seq_len} tokens of {dataset}, seed {args.seed}\n")
    print(accuracy_table(rows) + "\n")
    print("### LAMP (strict) vs random and oracle at the same per-row counts\n")
    print(same_rate_table(rows) + "\n")
    print("### Against the reference point (m4 strict, KL reduction vs uniform, log-log interpolated)\n")
    for rate, ref_gain in REFERENCE_POINTS:
        got = interpolate_gain(rows, "m4", rate)
        print(f"- at {100 * rate:.1f}% recompute: reference ~{ref_gain:.0f}x, here "
              f"{'-' if got is None else f'{got:.0f}x'}")
    print(f"\n### Speed and memory (1 x {args.seq_len} tokens, {args.threads} thread(s))\n")
    print(timing_table(timing) + "\n")
    print(f"load {t_load:.0f} s, FP32 reference + capture {t_setup:.0f} s, total {total / 60:.1f} min, "
          f"RSS before the accuracy cells {rss_before_cells:.0f} MB, peak during them {_rss_kb('VmHWM') / 1024:.0f} MB "
          f"(batch {args.batch_size} x {args.seq_len}, FP32 reference logits of all windows held)")
    return 0


if __name__ == "__main__":
    from machine import describe_machine  # bench/machine.py

    print(f"machine: {describe_machine()}", flush=True)  # the numbers below hold for this CPU
    sys.exit(main())
