"""The paper's strict rule against error-scale-aware strict (SitePolicy.error_scale), random and the per-row oracle:
KL against the recompute rate, on the accuracy protocol's windows.

    python bench/rules.py                                   # both models, m4, natural and shuffled text
    python bench/rules.py --model embedded --n-seq 2        # a smoke run

Per model and text: strict (error scale |ŝ|, the paper's), strict with error scale "norms" (‖q‖·‖k_i‖, O(T·d)) and
"l1" (Σ|q_k·k_ik|), each over a tau grid; random and the per-row oracle at strict's per-row counts. KL(FP32 || cell)
in float64 over every window position (lampc.eval.metrics), recompute rate over visible entries. The table puts the
error-scale rules' KL at strict's recompute rates (log-log interpolation between their own grid points) beside
strict's, random's and the oracle's: the ratio strict / rule is the gain, oracle / rule what is left.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from lampc.eval.sweep import run_sweep
from lampc.models import load_model
from machine import describe_machine  # bench/machine.py: this script's directory is on sys.path

STRICT_TAUS = {"embedded": (1.0, 0.2, 0.05), "smollm2-135m": (0.3, 0.1, 0.03)}
SCALED_TAUS = (300.0, 100.0, 30.0, 10.0, 3.0, 1.0, 0.3)
"""With an error bound as the scale, tau is in units of that bound (γ is ~6 at m4 over 64 terms): a wider grid."""


def _interpolate(points: list[tuple[float, float]], rate: float) -> float:
    """KL at `rate` from (rate, KL) points, linear in log-log between the two that bracket it (nan outside)."""
    points = sorted(p for p in points if p[0] > 0 and p[1] > 0)
    for (r0, k0), (r1, k1) in zip(points, points[1:]):
        if r0 <= rate <= r1:
            if r1 == r0:
                return k0
            t = (math.log(rate) - math.log(r0)) / (math.log(r1) - math.log(r0))
            return math.exp(math.log(k0) + t * (math.log(k1) - math.log(k0)))
    return math.nan


def measure(model, tokenizer, name: str, fmt: str, shuffle: bool, n_seq: int, seq_len: int) -> str:
    common = dict(formats=[fmt], seq_len=seq_len, n_seq=n_seq, shuffle=shuffle, progress=False, batch_size=2)
    taus = STRICT_TAUS[name]
    base = run_sweep(model, tokenizer, criteria=["uniform", "strict", "random", "oracle"],
                     taus={c: list(taus) for c in ("strict", "random", "oracle")}, **common)
    scaled = {kind: run_sweep(model, tokenizer, criteria=["strict"], taus={"strict": list(SCALED_TAUS)},
                              fixed={"error_scale": kind}, **common) for kind in ("norms", "l1")}
    uniform = next(r for r in base if r["criterion"] == "uniform")
    lines = [f"### {name}, {fmt}, {'shuffled' if shuffle else 'natural'} text ({n_seq} x {seq_len} tokens)", "",
             f"uniform: KL {uniform['kl']:.3g}", "",
             "| strict tau | rate | KL strict | KL random | KL norms | KL l1 | KL oracle | strict / norms | "
             "strict / l1 | l1 / oracle |", "|---|---|---|---|---|---|---|---|---|---|"]
    for tau in taus:
        row = {c: next(r for r in base if r["criterion"] == c and r["tau"] == tau) for c in ("strict", "random",
                                                                                          "oracle")}
        rate = row["strict"]["recompute_rate"]
        kl = {c: row[c]["kl"] for c in row}
        for kind, rows in scaled.items():
            kl[kind] = _interpolate([(r["recompute_rate"], r["kl"]) for r in rows], rate)
        lines.append(f"| {tau:g} | {100 * rate:.2f}% | {kl['strict']:.3g} | {kl['random']:.3g} | {kl['norms']:.3g} "
                     f"| {kl['l1']:.3g} | {kl['oracle']:.3g} | {kl['strict'] / kl['norms']:.2f}x "
                     f"| {kl['strict'] / kl['l1']:.2f}x | {kl['l1'] / kl['oracle']:.2f}x |")
    for kind, rows in scaled.items():
        grid = ", ".join(f"tau {r['tau']:g}: {100 * r['recompute_rate']:.2f}% / {r['kl']:.3g}" for r in rows)
        lines.append(f"\n{kind} grid (rate / KL): {grid}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", choices=sorted(STRICT_TAUS))
    parser.add_argument("--format", default="m4")
    parser.add_argument("--n-seq", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--texts", default="natural,shuffled", help="natural, shuffled or both (comma separated)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "rules.md"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    sections = [f"machine: {describe_machine()}\n"]
    for name in args.model or ["embedded", "smollm2-135m"]:
        model, tokenizer = load_model(name)
        for shuffle in [text == "shuffled" for text in args.texts.split(",")]:
            section = measure(model, tokenizer, name, args.format, shuffle, args.n_seq, args.seq_len)
            print(section, flush=True)
            sections.append(section)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(sections), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
