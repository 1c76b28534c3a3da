"""Look-ahead rules against each other on held-out text: KL and flips against the recompute rate.

    python bench/rules.py --model embedded                        # one of the runs of bench/rules.md
    python bench/rules.py --model embedded --seq-len 64 --cells m4:natural      # a smoke run (a minute)
    python bench/rules.py --model embedded --linear m7                         # the linear sites' error scales

Per model, format and text (natural or token-shuffled *Persuasion*):

- one tau everywhere, over a grid: strict with the paper's error scale |ŝ| ("score"), "mixed" (|ŝ| floored at a
  cancelling dot product's size), "l1" and "norms" (bounds on the producer's error; their own tau grid), and random
  and the per-row oracle at strict's per-row counts;
- calibrated (lampc calibrate): one tau per site for each of strict's rates, allocated on the first half of the
  text's tokens and measured on the second half (the held-out windows every other row is measured on), for strict
  "score", "mixed" and "exact" (the true error under a calibrated threshold: the layer- and row-free oracle, the
  limit of what any allocation of the same count can reach to first order).

KL(FP32 || cell) in float64 over every window position (lampc.eval.metrics); recompute rate pooled over the
visible entries of all sites (for attention sites, the paper's layer mean). Rules on a tau grid are read at strict's
rates by log-log interpolation between their own points. Writes results/rules.md, results/rules.json and one plot
per (model, format, text): results/rules_<model>_<format>_<text>.png.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from lampc.eval.calibrate import Calibrator
from lampc.eval.sweep import Sweep, _token_stream, run_sweep
from lampc.eval.data import make_sequences
from lampc.models import load_model
from lampc.policy import Policy
from machine import describe_machine  # bench/machine.py: this script's directory is on sys.path

STRICT_TAUS = {"embedded": (1.0, 0.3, 0.1, 0.03, 0.01), "smollm2-135m": (1.0, 0.3, 0.1, 0.03, 0.01)}
BOUND_TAUS = (300.0, 100.0, 30.0, 10.0, 3.0, 1.0, 0.3)
"""With an error bound as the scale, tau is in units of that bound (γ is ~6 at m4 over 64 terms): a wider grid."""
CALIBRATED_AT = slice(1, 4)
"""The strict taus whose rates the calibrated rows target (the middle of the grid: interpolation brackets them)."""


def interpolate(points: list[tuple[float, float]], rate: float) -> float:
    """KL at `rate` from (rate, KL) points, linear in log-log between the two that bracket it (nan outside)."""
    points = sorted(p for p in points if p[0] > 0 and p[1] > 0)
    for (r0, k0), (r1, k1) in zip(points, points[1:]):
        if r0 <= rate <= r1:
            if r1 == r0:
                return k0
            t = (math.log(rate) - math.log(r0)) / (math.log(r1) - math.log(r0))
            return math.exp(math.log(k0) + t * (math.log(k1) - math.log(k0)))
    return math.nan


def halves(tokenizer, shuffle: bool, n_seq: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(calibration windows from the first half of Persuasion's tokens, held-out windows from the second half)."""
    ids, _ = _token_stream(tokenizer, None, None)
    half = ids.numel() // 2
    return (make_sequences(ids[:half], seq_len, n_seq, seed=7, shuffle=shuffle),
            make_sequences(ids[half:], seq_len, n_seq, seed=42, shuffle=shuffle))


def measure(model, tokenizer, name: str, fmt: str, shuffle: bool, n_seq: int, seq_len: int, bounds: bool) -> dict:
    calibration_ids, held_out = halves(tokenizer, shuffle, n_seq, seq_len)
    common = dict(formats=[fmt], token_ids=held_out.flatten(), seq_len=seq_len, n_seq=n_seq, progress=False,
                  batch_size=2)
    taus = STRICT_TAUS[name]
    grids = {"score": run_sweep(model, tokenizer, criteria=["uniform", "strict", "random", "oracle"],
                                taus={c: list(taus) for c in ("strict", "random", "oracle")}, **common)}
    grids["mixed"] = run_sweep(model, tokenizer, criteria=["strict"], taus={"strict": list(taus)},
                               fixed={"error_scale": "mixed"}, **common)
    for kind in ("l1", "norms") if bounds else ():
        grids[kind] = run_sweep(model, tokenizer, criteria=["strict"], taus={"strict": list(BOUND_TAUS)},
                                fixed={"error_scale": kind}, **common)
    strict = [r for r in grids["score"] if r["criterion"] == "strict"]
    targets = [r["recompute_rate_pooled"] for r in strict[CALIBRATED_AT]]
    evaluation = Sweep(model, held_out, batch_size=2, progress=False)
    calibrated = {}
    for scale in ("score", "mixed", "exact"):
        calibrator = Calibrator(model, tokenizer, Policy.from_overrides(None, format=fmt, error_scale=scale),
                                token_ids=calibration_ids.flatten(), seq_len=seq_len, n_seq=n_seq, batch_size=2,
                                progress=False)
        calibrated[scale] = []
        for rate in targets:
            result = calibrator.for_rate(rate)
            row = evaluation.measure(evaluation.compiler(result.policy))
            calibrated[scale].append({"target": rate, "calibration_rate": result.measured["rate"],
                                      "rate": row["recompute_rate_pooled"], "kl": row["kl"],
                                      "flip_rate": row["flip_rate"],
                                      "taus": [s["tau"] for s in result.sites]})
    return {"model": name, "format": fmt, "text": "shuffled" if shuffle else "natural", "n_seq": n_seq,
            "seq_len": seq_len, "grids": grids, "calibrated": calibrated}


def _rows(grid: list[dict], criterion: str = "strict") -> list[dict]:
    return [r for r in grid if r["criterion"] == criterion]


def _points(rows: list[dict], key: str = "kl") -> list[tuple[float, float]]:
    return [(r["recompute_rate_pooled"] if "recompute_rate_pooled" in r else r["rate"], r[key]) for r in rows]


def markdown(result: dict) -> str:
    grids, calibrated = result["grids"], result["calibrated"]
    uniform = _rows(grids["score"], "uniform")[0]
    strict = _rows(grids["score"])
    lines = [f"### {result['model']}, {result['format']}, {result['text']} text "
             f"({result['n_seq']} x {result['seq_len']} held-out tokens)", "",
             f"uniform (no recompute): KL {uniform['kl']:.3g}, flips {100 * uniform['flip_rate']:.2f}%", "",
             "One tau everywhere, KL at strict's rates (ratio: strict's KL over the rule's; > 1 is better):", ""]
    kinds = [k for k in ("mixed", "l1", "norms") if k in grids]
    head = "| strict tau | rate | strict | random | " + " | ".join(kinds) + " | per-row oracle |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for tau_row, random_row, oracle_row in zip(strict, _rows(grids["score"], "random"),
                                               _rows(grids["score"], "oracle")):
        rate = tau_row["recompute_rate_pooled"]
        cells = []
        for kind in kinds:
            kl = interpolate(_points(_rows(grids[kind])), rate)
            cells.append(f"{kl:.3g} ({tau_row['kl'] / kl:.2f}x)" if math.isfinite(kl) else "-")
        lines.append(f"| {tau_row['tau']:g} | {100 * rate:.2f}% | {tau_row['kl']:.3g} | {random_row['kl']:.3g} | "
                     + " | ".join(cells) + f" | {oracle_row['kl']:.3g} ({tau_row['kl'] / oracle_row['kl']:.2f}x) |")
    lines += ["", "Calibrated (one tau per site, allocated on the other half of the text), measured on the held-out "
              "windows; strict's KL interpolated at the same held-out rate:", "",
              "| rule | target rate | held-out rate | KL | flips | strict at that rate | gain |",
              "|---|---|---|---|---|---|---|"]
    for scale, rows in calibrated.items():
        label = {"score": "calibrated strict", "mixed": "calibrated mixed",
                 "exact": "calibrated oracle (exact)"}[scale]
        for row in rows:
            reference = interpolate(_points(strict), row["rate"])
            gain = f"{reference / row['kl']:.2f}x" if math.isfinite(reference) and row["kl"] > 0 else "-"
            lines.append(f"| {label} | {100 * row['target']:.2f}% | {100 * row['rate']:.2f}% | {row['kl']:.3g} | "
                         f"{100 * row['flip_rate']:.2f}% | {reference:.3g} | {gain} |")
    for kind, grid in grids.items():
        points = ", ".join(f"{r['tau']:g}: {100 * r['recompute_rate_pooled']:.2f}% / {r['kl']:.3g} / "
                           f"{100 * r['flip_rate']:.2f}%" for r in _rows(grid))
        lines.append(f"\n{kind} grid (tau: rate / KL / flips): {points}")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    series = {f"one tau, {k}": _rows(g) for k, g in result["grids"].items()}
    series["random (strict's counts)"] = _rows(result["grids"]["score"], "random")
    series["per-row oracle (strict's counts)"] = _rows(result["grids"]["score"], "oracle")
    series.update({f"calibrated, {k}": rows for k, rows in result["calibrated"].items()})
    for label, rows in series.items():
        style = "--" if label.startswith("calibrated") else "-"
        kl_points = sorted(p for p in _points(rows) if p[0] > 0)
        flip_points = sorted(p for p in _points(rows, "flip_rate") if p[0] > 0)
        axes[0].plot([100 * p[0] for p in kl_points], [p[1] for p in kl_points], style, marker="o", ms=3, label=label)
        axes[1].plot([100 * p[0] for p in flip_points], [100 * p[1] for p in flip_points], style, marker="o", ms=3,
                     label=label)
    axes[0].set_yscale("log")
    for ax, key in zip(axes, ("KL(FP32 || LAMP)", "flip rate (%)")):
        ax.set_xscale("log")
        ax.set_xlabel("recompute rate (%)")
        ax.set_ylabel(key)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{result['model']}, {result['format']}, {result['text']} text (held out)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


LINEAR_TAUS = {"score": (1.0, 0.3, 0.1, 0.03, 0.01), "mixed": (1.0, 0.3, 0.1, 0.03, 0.01),
               "l1": (10.0, 3.0, 1.0, 0.3, 0.1)}


def linear_sites(model, tokenizer, fmt: str, n_seq: int, seq_len: int) -> str:
    """The error scales at the linear sites (layer_norm and gelu): one tau everywhere, per error scale."""
    lines = [f"### linear sites (layer_norm, gelu), {fmt}, natural text ({n_seq} x {seq_len} tokens)", ""]
    for scale, taus in LINEAR_TAUS.items():
        rows = run_sweep(model, tokenizer, formats=[fmt], criteria=["uniform", "strict"], taus={"strict": list(taus)},
                         fixed={"error_scale": scale, "kinds": ["layer_norm", "gelu"]}, seq_len=seq_len,
                         n_seq=n_seq, progress=False, batch_size=2)
        points = ", ".join(f"{r['criterion'] if r['tau'] is None else r['tau']:}: "
                           f"{100 * r['recompute_rate_pooled']:.2f}% / {r['kl']:.3g}" for r in rows)
        lines.append(f"- {scale} (tau: rate / KL): {points}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", choices=sorted(STRICT_TAUS))
    parser.add_argument("--cells", default="m4:natural,m4:shuffled,m7:natural,m7:shuffled",
                        help="format:text pairs (text: natural or shuffled), comma separated")
    parser.add_argument("--n-seq", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--bounds-in", default="m4:natural",
                        help="format:text cells that also run the l1 and norms grids (comma separated)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--replot", action="store_true", help="redraw the plots from rules.json")
    parser.add_argument("--linear", metavar="FORMAT", default=None,
                        help="instead: the error scales at the linear sites (layer_norm, gelu) in FORMAT")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        results = json.loads((out / "rules.json").read_text(encoding="utf-8"))
        for result in results:
            plot(result, out / f"rules_{result['model']}_{result['format']}_{result['text']}.png")
        return 0
    if args.linear:
        for name in args.model or ["embedded"]:
            model, tokenizer = load_model(name)
            print(f"machine: {describe_machine()}\n\n" + linear_sites(model, tokenizer, args.linear, args.n_seq,
                                                                       args.seq_len))
        return 0
    sections, results = [f"machine: {describe_machine()}\n"], []
    for name in args.model or ["embedded", "smollm2-135m"]:
        model, tokenizer = load_model(name)
        for cell in args.cells.split(","):
            fmt, text = cell.split(":")
            result = measure(model, tokenizer, name, fmt, text == "shuffled", args.n_seq, args.seq_len,
                             bounds=cell in args.bounds_in.split(","))
            plot(result, out / f"rules_{name}_{fmt}_{text}.png")
            section = markdown(result)
            print(section, flush=True)
            sections.append(section)
            results.append(result)
            (out / "rules.md").write_text("\n".join(sections), encoding="utf-8")
            (out / "rules.json").write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
