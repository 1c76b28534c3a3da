"""Task scores of LAMP cells, paired with the FP32 model's on the same documents.

For every task and cell: the task's score with lm-eval's standard error, and, against FP32 on the same documents,
how many answers changed (flips), how many went right -> wrong and wrong -> right, and McNemar's exact test of
whether the cell's accuracy differs from FP32's (two-sided, on the discordant pairs). Also the mean KL(FP32 ||
cell) over the scored answer tokens and the recompute rate. Perplexity tasks (loglikelihood_rolling) have no
right and wrong: their rows carry the word perplexity of both.

    rows, raw = compare(model="embedded", cells={"m4 strict": dict(format="m4", criterion="strict", tau=0.1)},
                        tasks=austen_tasks(), limit=50)
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..eval.uncertainty import mcnemar_exact
from .availability import check_task_data
from .passkey_task import PASSKEY_TASK, for_model, is_passkey_name, passkey_task_named
from .path import TASK_DIR
from .progress import to_stderr

AUSTEN_TASKS = ("austen_lastword", "austen_choice", "austen_paragraphs")
PAIRED_METRICS = ("acc", "exact_match")
"""Per-document right/wrong metrics, in the order a task's primary one is looked for."""


def austen_tasks(names=AUSTEN_TASKS) -> list[dict]:
    """lampc's offline tasks as lm-eval task configs, read by lm-eval's own YAML loader (so their data paths are
    resolved beside the YAML, as when lm-eval reads them from --include_path)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    configs = []
    for name in names:
        path = TASK_DIR / f"{name}.yaml"
        if not path.is_file():
            raise LookupError(f"no lampc task {name!r}; lampc ships {', '.join(AUSTEN_TASKS)}")
        configs.append(load_yaml(path, resolve_func=True))
    return configs


def resolve_tasks(names: list[str]) -> list[str | dict]:
    """lampc's own task names as configs (the passkey task's named as lampc/tasks/passkey_task.py says, e.g.
    austen_passkey_1024_depth25); any other name is left to lm-eval's task registry."""
    return [austen_tasks([n])[0] if n in AUSTEN_TASKS else passkey_task_named(n) if is_passkey_name(n) else n
            for n in names]


def mcnemar_p(right_to_wrong: int, wrong_to_right: int) -> float:
    """Exact two-sided McNemar p-value: under "no difference" each discordant document is a fair coin
    (lampc.eval.uncertainty.mcnemar_exact, in integers: any number of discordant documents)."""
    return mcnemar_exact(right_to_wrong, wrong_to_right)


@dataclass(frozen=True)
class Paired:
    documents: int
    flips: int
    right_to_wrong: int
    wrong_to_right: int

    @property
    def p_value(self) -> float:
        return mcnemar_p(self.right_to_wrong, self.wrong_to_right)


def paired(reference: dict[int, float], cell: dict[int, float]) -> Paired:
    """Right/wrong per document (score 1 = right) of FP32 and a cell, on the documents both scored."""
    docs = sorted(set(reference) & set(cell))
    r2w = sum(1 for d in docs if reference[d] >= 0.5 > cell[d])
    w2r = sum(1 for d in docs if cell[d] >= 0.5 > reference[d])
    return Paired(len(docs), r2w + w2r, r2w, w2r)


def per_document(samples: list[dict], metric: str) -> dict[int, float]:
    """doc_id -> the metric's per-document value, from lm-eval's logged samples."""
    return {int(s["doc_id"]): float(s[metric]) for s in samples if metric in s}


def primary_metric(task_results: dict, samples: list[dict]) -> str | None:
    """The task's right/wrong metric (acc, exact_match), or None (a perplexity task)."""
    for metric in PAIRED_METRICS:
        if samples and metric in samples[0]:
            return metric
    return None


def _score(task_results: dict, metric: str) -> tuple[float, float]:
    """(value, stderr) of `metric` under whichever filter the task used."""
    for key, value in task_results.items():
        if key.split(",")[0] == metric and not key.startswith(f"{metric}_stderr"):
            filt = key.split(",", 1)[1] if "," in key else "none"
            stderr = task_results.get(f"{metric}_stderr,{filt}", math.nan)
            return float(value), float(stderr) if isinstance(stderr, (int, float)) else math.nan
    return math.nan, math.nan


def run(lm, tasks: list, *, limit: int | None, lm_eval_logs: bool = False) -> dict:
    """lm-eval's evaluator on an LM instance, its logging quiet unless lm_eval_logs; the results dict (with
    per-document samples)."""
    import lm_eval

    with quiet_lm_eval(not lm_eval_logs):
        return lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=limit, log_samples=True, bootstrap_iters=1000,
                                       task_manager=task_manager(any(isinstance(t, str) for t in tasks)))


@contextlib.contextmanager
def quiet_lm_eval(quiet: bool = True):
    """lm-eval's info and warning lines off while inside (its "lm_eval" logger's level, restored after): lm-eval
    0.4.13 deprecates the verbosity arguments of simple_evaluate and TaskManager for logging's own levels.
    quiet=False leaves the logger as it is (`lampc tasks --verbose`)."""
    if not quiet:
        yield
        return
    logger = logging.getLogger("lm_eval")
    saved = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(saved)


@functools.cache
def task_manager(registry: bool):
    """lm-eval's TaskManager, made once: indexing its registry of public tasks reads thousands of YAML files
    (seconds), which lampc's own tasks (given as configs) do not need. Made inside its callers' quiet_lm_eval."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=registry)


def compare(model: str, cells: dict[str, dict[str, Any]], tasks: list, *, limit: int | None = None,
            batch_size: int = 8, progress=to_stderr, lm_eval_logs: bool = False) -> tuple[list[dict], dict[str, dict]]:
    """Run FP32 and every cell on `tasks`; rows of the paired table, and lm-eval's results per cell name.
    progress: a callable taking a line (default stderr): each cell and task as it starts and ends, and the
    requests done every few seconds. A task whose data cannot be had is refused before any model runs
    (TaskDataUnavailable, lampc/tasks/availability.py). lm_eval_logs: show lm-eval's own log lines (hidden by
    default)."""
    from ..cells import CellCompiler
    from ..models import load_model
    from .lm import LampcLM

    if any(isinstance(t, str) for t in tasks):
        with quiet_lm_eval(not lm_eval_logs):
            check_task_data(tasks, task_manager(True), own=(*AUSTEN_TASKS, PASSKEY_TASK))
    loaded = load_model(model)
    tasks = for_model(tasks, model, loaded)  # the passkey documents are made with this model's tokenizer
    progress("lampc tasks: FP32 reference")
    fp32 = LampcLM(model, fp32=True, batch_size=batch_size, loaded=loaded)
    reference, _ = run_per_task(fp32, tasks, limit=limit, cell="fp32", progress=progress, lm_eval_logs=lm_eval_logs)
    raw, rows = {"fp32": reference}, _rows("fp32", reference, reference, {})
    compiler = CellCompiler(loaded[0]) if cells else None  # one capture for every cell; steps only if a task generates
    for name, fields in cells.items():
        progress(f"lampc tasks: {name}")
        lm = LampcLM(model, batch_size=batch_size, loaded=loaded, compiler=compiler, **fields)
        raw[name], measured = run_per_task(lm, tasks, limit=limit, cell=name, progress=progress,
                                           lm_eval_logs=lm_eval_logs)
        rows += _rows(name, raw[name], reference, measured)
    return rows, raw


def run_per_task(lm, tasks: list, *, limit: int | None, cell: str = "", progress=None, lm_eval_logs: bool = False
                 ) -> tuple[dict, dict[str, tuple[float, float]]]:
    """lm-eval on one task at a time, so each task's KL and recompute rate are its own; the merged results and
    {task: (mean KL, recompute rate)}. progress (a callable taking a line, or None): each task's start and end,
    and the adapter's requests every few seconds."""
    merged: dict = {"results": {}, "samples": {}, "configs": {}, "versions": {}, "n-shot": {}}
    measured = {}
    for task in tasks:
        label = f"lampc tasks: {cell}: {task['task'] if isinstance(task, dict) else task}"
        lm.reset_measurements()
        lm.report, lm.label, lm.requests_done = progress, label, 0
        if progress:
            progress(f"{label}: started")
        start = time.monotonic()
        results = run(lm, [task], limit=limit, lm_eval_logs=lm_eval_logs)
        if progress:
            progress(f"{label} done in {time.monotonic() - start:.0f} s ({lm.requests_done} requests)")
        for key in merged:
            merged[key].update(results.get(key, {}))
        for name in results["results"]:
            measured[name] = (lm.mean_kl, lm.recompute_rate())
        merged.setdefault("config", results.get("config"))
    return merged, measured


def _rows(name: str, results: dict, reference: dict, measured: dict[str, tuple[float, float]]) -> list[dict]:
    rows = []
    for task, task_results in results["results"].items():
        samples = results.get("samples", {}).get(task, [])
        metric = primary_metric(task_results, samples)
        kl, rate = measured.get(task, (math.nan, math.nan))
        row = {"cell": name, "task": task, "documents": len(samples), "kl": kl, "recompute_rate": rate,
               "empty_answers": empty_answers(samples)}
        if metric is None:  # a perplexity task
            value, _ = _score(task_results, "word_perplexity")
            fp32, _ = _score(reference["results"][task], "word_perplexity")
            row.update(metric="word_perplexity", score=value, stderr=math.nan, fp32=fp32)
        else:
            value, stderr = _score(task_results, metric)
            fp32, _ = _score(reference["results"][task], metric)
            pair = paired(per_document(reference["samples"][task], metric), per_document(samples, metric))
            row.update(metric=metric, score=value, stderr=stderr, fp32=fp32, flips=pair.flips,
                       right_to_wrong=pair.right_to_wrong, wrong_to_right=pair.wrong_to_right,
                       mcnemar_p=pair.p_value)
        rows.append(row)
    return rows


COLUMNS = ("cell", "task", "metric", "score", "stderr", "fp32", "flips", "right_to_wrong", "wrong_to_right",
           "mcnemar_p", "kl", "recompute_rate", "documents")


def markdown(rows: list[dict]) -> str:
    """The paired table as markdown."""
    head = ("| cell | task | metric | score ± stderr | FP32 | flips (r→w / w→r) | McNemar p | KL (nats/token) "
            "| recompute |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        score = _num(r["score"]) + (f" ± {_num(r['stderr'])}" if not _nan(r["stderr"]) else "")
        flips = "" if "flips" not in r else f"{r['flips']} ({r['right_to_wrong']} / {r['wrong_to_right']})"
        p = "" if "mcnemar_p" not in r or r["cell"] == "fp32" else f"{r['mcnemar_p']:.3g}"
        kl = "" if _nan(r["kl"]) else f"{r['kl']:.3g}"
        rate = "" if _nan(r["recompute_rate"]) else f"{100 * r['recompute_rate']:.2f}%"
        lines.append(f"| {r['cell']} | {r['task']} | {r['metric']} | {score} | {_num(r['fp32'])} | {flips} | {p} "
                     f"| {kl} | {rate} |")
    said = notes(rows)
    return "\n".join(lines) + "\n" + ("\nNotes:\n" + "".join(f"- {n}\n" for n in said) if said else "")


def notes(rows: list[dict]) -> list[str]:
    """What a bare number in the table does not say: a stderr of 0 because every answer was wrong (or right),
    with the exact one-sided 95% bound on the rate (1 - 0.05**(1/n) for 0 of n), and how many answers were empty."""
    out = []
    for r in rows:
        n = r.get("documents") or 0
        if r.get("metric") not in PAIRED_METRICS or not n or r.get("stderr") != 0 or r.get("score") not in (0, 1):
            continue
        right = round(r["score"] * n)
        bound = ("below", 1 - 0.05 ** (1 / n)) if right == 0 else ("above", 0.05 ** (1 / n))
        text = (f"{r['task']} ({r['cell']}): {right} of {n} right, so its stderr is 0: every answer was "
                f"{'wrong' if right == 0 else 'right'}, which leaves no spread to measure, not an exact score; the "
                f"rate is {bound[0]} {100 * bound[1]:.1f}% (one-sided 95%).")
        if r.get("empty_answers"):
            text += (f" {r['empty_answers']} of the {n} answers were empty: the model's first token was a stop "
                     "string, so its answer ended before it began.")
        out.append(text)
    return out


def empty_answers(samples: list[dict]) -> int | None:
    """How many generated answers (generate_until tasks) are empty once cut at the stop strings; None for tasks
    scored by loglikelihood."""
    texts = [s["resps"][0][0] for s in samples if s.get("resps") and s["resps"][0]]
    if not texts or not all(isinstance(t, str) for t in texts):
        return None
    return sum(1 for t in texts if not t.strip())


def write(rows: list[dict], raw: dict[str, dict], out: Path) -> list[Path]:
    """tasks.csv, tasks.json, tasks.md and lm-eval's results per cell (results_<cell>.json) under `out`."""
    import csv
    import json

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "tasks.csv", out / "tasks.json", out / "tasks.md"]
    with open(written[0], "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    written[1].write_text(json.dumps(rows, indent=1, default=str), encoding="utf-8")
    written[2].write_text(markdown(rows), encoding="utf-8")
    for name, results in raw.items():
        slim = {k: v for k, v in results.items() if k != "samples"}
        path = out / f"results_{_file_name(name)}.json"
        path.write_text(json.dumps(slim, indent=1, default=str), encoding="utf-8")
        written.append(path)
    return written


def _file_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in name)


def _nan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


def _num(x) -> str:
    return "" if x is None or _nan(x) else f"{x:.4g}"
