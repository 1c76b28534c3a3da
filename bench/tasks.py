"""Downstream tasks on LAMP models: lm-eval's scores paired with FP32's, and whether KL ranks cells as tasks do.

    python bench/tasks.py                              # both models, every cell (see bench/tasks.md for the time)
    python bench/tasks.py --model embedded --limit 20  # a smoke run

For each model: lampc's three offline tasks (lampc/tasks/austen: Persuasion cloze by greedy exact match, four-way
cloze by loglikelihood, paragraph perplexity) on FP32 and on the cells below, through lm-evaluation-harness
(lampc.tasks.compare): score ± stderr, flips against FP32 on the same documents (right->wrong / wrong->right),
McNemar's exact p, mean KL(FP32 || cell) over the answer tokens (float64), recompute rate. Cells: m4 and m7
uniform; m4 strict at three taus; random at the middle tau's per-row counts; where the CPU has bf16 units, native
bf16 with every matmul in bf16 (sites="all"), uniform and with LAMP (strict at attention and logits).

The last section ranks the cells by KL and by their accuracy loss against FP32 (Spearman's rho per task) and says
where the two orders disagree.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from lampc.runtime.hardware import native_speed
from lampc.tasks import austen_tasks
from lampc.tasks.compare import compare, markdown, write
from machine import describe_machine  # bench/machine.py: this script's directory is on sys.path

STRICT_TAUS = {"embedded": (1.0, 0.2, 0.05), "smollm2-135m": (0.3, 0.1, 0.03)}
LIMITS = {"embedded": 200, "smollm2-135m": 60}
"""Documents per task (per model: SmolLM2's emulated m4 attention is the slow part on a CPU)."""


def cells_for(model: str, has_bf16: bool, taus=None, m7: bool = True) -> dict[str, dict]:
    taus = taus or STRICT_TAUS[model]
    cells = {"m4 uniform": dict(format="m4", criterion="uniform")}
    if m7:
        cells["m7 uniform"] = dict(format="m7", criterion="uniform")
    for tau in taus:
        cells[f"m4 strict tau={tau:g}"] = dict(format="m4", criterion="strict", tau=tau)
    middle = taus[len(taus) // 2]
    cells[f"m4 random (strict tau={middle:g} counts)"] = dict(format="m4", criterion="random", tau=middle,
                                                              count_from="strict")
    if has_bf16:
        native = dict(format="bf16", backend="native", sites="all", kinds="attention+logits")
        cells["bf16 native uniform"] = dict(native, criterion="uniform")
        cells[f"bf16 native LAMP strict tau={middle:g}"] = dict(native, criterion="strict", tau=middle, fused=True)
    return cells


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    def ranks(values):
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sx, sy = math.sqrt(sum((a - mx) ** 2 for a in rx)), math.sqrt(sum((b - my) ** 2 for b in ry))
    return cov / (sx * sy) if sx and sy else math.nan


def ranking_section(rows: list[dict]) -> str:
    """Per task: do cells with more KL lose more accuracy (or gain more perplexity)?"""
    lines = ["| task | cells | Spearman(KL, loss) | largest KL | largest loss | disagreement |",
             "|---|---|---|---|---|---|"]
    for task in sorted({r["task"] for r in rows}):
        cells = [r for r in rows if r["task"] == task and r["cell"] != "fp32" and not math.isnan(r["kl"])]
        if len(cells) < 3:
            continue
        higher_is_worse = cells[0]["metric"] == "word_perplexity"
        loss = [(r["score"] - r["fp32"]) if higher_is_worse else (r["fp32"] - r["score"]) for r in cells]
        kl = [r["kl"] for r in cells]
        rho = spearman(kl, loss)
        worst_kl = max(cells, key=lambda r: r["kl"])["cell"]
        worst_loss = ("all equal" if max(loss) == min(loss)
                      else cells[max(range(len(cells)), key=lambda i: loss[i])]["cell"])
        pairs = [(a["cell"], b["cell"]) for i, a in enumerate(cells) for j, b in enumerate(cells)
                 if kl[i] < kl[j] and loss[i] > loss[j] + 1e-12]
        note = "; ".join(f"{a} has less KL but more loss than {b}" for a, b in pairs[:3]) or "none"
        if len(pairs) > 3:
            note += f"; and {len(pairs) - 3} more pair(s)"
        lines.append(f"| {task} | {len(cells)} | {rho:.2f} | {worst_kl} | {worst_loss} | {note} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", choices=sorted(STRICT_TAUS), help="default: both")
    parser.add_argument("--limit", type=int, default=None, help="documents per task (default: per model)")
    parser.add_argument("--strict-taus", default=None, help="comma-separated taus of the strict cells (default per "
                                                             "model)")
    parser.add_argument("--no-m7", action="store_true", help="leave out the m7 uniform cell")
    parser.add_argument("--only", default=None, help="keep only the cells whose name contains this text")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "tasks"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    machine = describe_machine()
    has_bf16 = native_speed(torch.bfloat16)[0]
    print(f"machine: {machine}", flush=True)
    report = [f"machine: {machine}\n"]
    for model in args.model or ["embedded", "smollm2-135m"]:
        limit = args.limit or LIMITS[model]
        start = time.perf_counter()
        taus = tuple(float(t) for t in args.strict_taus.split(",")) if args.strict_taus else None
        cells = cells_for(model, has_bf16, taus, m7=not args.no_m7)
        if args.only:
            cells = {name: cell for name, cell in cells.items() if args.only in name}
        rows, raw = compare(model, cells, austen_tasks(), limit=limit, batch_size=8,
                            progress=lambda text: print(text, flush=True))
        minutes = (time.perf_counter() - start) / 60
        write(rows, raw, Path(args.out) / model)
        section = (f"## {model} ({limit} documents per task, {minutes:.0f} min)\n\n{markdown(rows)}\n"
                   f"KL against task loss, per task (loss: FP32's score minus the cell's; perplexity: the cell's "
                   f"minus FP32's):\n\n{ranking_section(rows)}")
        print(section, flush=True)
        report.append(section)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"report_{'_'.join(args.model or ['all'])}.md").write_text("\n".join(report), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
