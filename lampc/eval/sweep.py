"""The accuracy protocol (docs/METHOD.md §5): a grid of formats x criteria x tau against the FP32 reference.

    rows = run_sweep(model, tokenizer, formats=["m4", "m7"], criteria=["uniform", "strict", "random", "oracle"],
                     seq_len=128, n_seq=4, out_dir="sweep-out")

One sweep = one set of token windows. The FP32 reference logits of every batch are computed once (TF32 off) and
reused by every cell; each cell (format, criterion, tau) compiles the model once, runs all batches, and reads its
recompute rate from `compiled.stats()` summed over all batches. `random` and `oracle` take their per-row counts
from `count_from` (default `strict`) at the same tau, so they recompute exactly as many entries as that rule.
`flush_every=[n, ...]` adds, per format, the static two-level baselines (grid.FLUSH_CELL: no recompute, a flush
into FP32 every n blocks); every row's `fp32_work` is the share of its accumulation done in FP32, the axis on
which a flush and a recompute rate compare (lampc.eval.fp32_work).

Every row also keeps its per-window values (`windows`: KL, positions, flips and flipped positions, recompute rate
of each window) and their 95% intervals (kl_lo/kl_hi, flip_rate_lo/_hi, recompute_rate_lo/_hi: a percentile bootstrap
over windows, lampc.eval.uncertainty), with n_windows, n_flips and the mean visible keys per attention row.

Outputs in `out_dir`: results.csv (one row per cell; the per-window lists left out), results.json (rows with their
windows, metadata, the paired comparisons of each LAMP rule with its baselines, and notes), kl_vs_rate.png (one
panel per format), kl_vs_m.png (uniform KL against mantissa bits, when there are several formats).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..cells import CellCompiler
from ..criteria import CRITERIA as CRITERION_TABLE, NO_LOOKAHEAD
from ..policy import Policy
from .fp32_work import fp32_work
from .grid import POLICY_CELL, TAU_GRIDS, Cell, plan_cells  # noqa: F401 (TAU_GRIDS: importable from here as before)
from .metrics import LogitComparison
from .uncertainty import METHOD as INTERVAL_METHOD, cell_intervals

CSV_COLUMNS = (
    "model", "seed", "n_seq", "seq_len", "dataset", "shuffle", "criterion", "format", "m_bits", "block_k", "tau",
    "count_from", "kl", "flip_rate", "recompute_rate", "recompute_rate_pooled", "top1_match", "ppl_ref", "ppl_test",
    "acc_ref", "acc_test", "nan_rate", "ref_nan_rate", "kl_max", "logit_absdiff_p50", "logit_absdiff_p90",
    "logit_absdiff_p99", "logit_absdiff_max", "n_positions", "n_labels", "layer_rates", "rule", "seconds",
    "n_windows", "n_compared", "n_flips", "kl_lo", "kl_hi", "flip_rate_lo", "flip_rate_hi", "recompute_rate_lo",
    "recompute_rate_hi", "visible_keys_per_row", "site_kinds", "flush_every", "fp32_work",
)
"""results.csv columns; the first ones are named as in the paper's logs. Per-window lists stay in results.json."""


@contextlib.contextmanager
def fp32_reference():
    """FP32 as the reference means IEEE FP32: TF32 off for CUDA matmuls and cuDNN while inside; restored after."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class Sweep:
    """Fixed token windows, their FP32 reference logits and the captured model: measures cells against them.

    The reference is computed once, on construction; `run(cells)` may be called several times (the demo first
    runs uniform and the rule's grid, then the baselines at the tau it picked) and every call reuses it.
    """

    def __init__(self, model: nn.Module, sequences: torch.Tensor, *, batch_size: int = 4, block_k: int = 1,
                 info: dict | None = None, progress: bool = True, generation=None, policy: Policy | None = None,
                 fixed: dict | None = None):
        _check_positive(batch_size=batch_size, block_k=block_k)
        self.batches = list(sequences.split(batch_size))  # each (b, T)
        self.block_k = block_k
        self.info = dict(info or {})  # constant columns of every row (model, seed, dataset, ...)
        self.progress = progress
        self.reference = []
        with self._bar(len(self.batches), "FP32 reference") as bar, fp32_reference(), torch.no_grad():
            for ids in self.batches:
                self.reference.append(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float())
                bar.update(1)
        from .progress import step_line

        generates = generation is not None  # else no cell decodes: no step graphs (lampc.cells)
        step_line("capturing the model as graphs (torch.export: the forward and its cached steps)" if generates
                  else "capturing the model as a graph (torch.export)", self.progress)
        self.compiler = CellCompiler(model, steps="eager" if generates else "none")
        self.generation = generation  # a GenerationProbe: greedy continuations measured against FP32's, per cell
        self.policy = policy  # the base policy every cell starts from (None: lampc's default)
        self.fixed = dict(fixed or {})  # policy fields every cell shares (kinds, sites, backend, fused, budget)

    def run(self, cells: Sequence[Cell]) -> list[dict]:
        """One row per cell: the metrics over all batches, the recompute rates, the cell's policy and timing."""
        rows = []
        with self._bar(len(cells) * len(self.batches), "") as bar:
            for cell in cells:
                bar.set_description(cell.label)
                t0 = time.perf_counter()
                compiled = self.compile(cell)
                measured = self.measure(compiled, bar)
                if self.generation is not None:
                    measured.update(self.generation.measure(compiled))
                site = compiled.policy.for_kind(compiled.policy.enabled_kinds()[0])
                rule = site.rule_text
                if compiled.policy.per_site:
                    rule = f"{site.criterion}, one tau per site ({len(compiled.policy.per_site)} sites)"
                windows = measured.pop("windows")
                kinds = ",".join(dict.fromkeys(s.kind for s in compiled.sites))
                rows.append({**self.info, "criterion": cell.criterion, "format": site.format.name,
                             "m_bits": site.m_bits, "block_k": site.block_k, "flush_every": site.flush_every,
                             "tau": cell.tau,
                             "count_from": cell.count_from or "", **measured, **cell_intervals(windows),
                             "site_kinds": kinds, "rule": rule, "seconds": round(time.perf_counter() - t0, 2),
                             "windows": windows})
        return rows

    def compile(self, cell: Cell):
        """The compiled model of one cell: the base policy, the sweep's fixed fields, the cell's own. The
        POLICY_CELL runs the base policy as it is; every other cell leaves its per-site rules out."""
        if cell.criterion == POLICY_CELL:
            return self.compiler(self.policy, **self.fixed)
        fixed = {k: v for k, v in self.fixed.items() if k != "budget" or CRITERION_TABLE[cell.rule].takes_budget}
        rule = CRITERION_TABLE[cell.rule]  # a flush cell's: uniform
        if not (CRITERION_TABLE[cell.count_from] if rule.counted else rule).weighs_errors:
            fixed["error_scale"] = "score"  # uniform, target: no weights for an error scale to change
        policy = self.policy if self.policy is None else dataclasses.replace(self.policy, per_site=())
        return self.compiler(policy, **{**fixed, **cell.overrides(self.block_k)})

    def measure(self, compiled, bar=None) -> dict:
        """Metrics of `compiled` over all batches, plus its recompute rates summed over all of them (and per
        window: `out["windows"]["recompute_rate"]`, None where the taps do not split by window)."""
        from .window_rates import WindowRates

        compiled.reset_stats()
        with WindowRates(compiled) as rates:
            out = self.compare(lambda ids, mask: compiled(ids, attention_mask=mask).logits, bar)
        out["windows"]["recompute_rate"] = rates.per_window(len(out["windows"]["kl"]))
        out["visible_keys_per_row"] = rates.keys_per_row()
        stats = compiled.stats()
        out["recompute_rate"] = stats["overall"]["layer_mean_rate"]  # the paper's: mean over layers
        out["recompute_rate_pooled"] = stats["overall"]["rate"]  # selected / visible over all sites
        out["layer_rates"] = json.dumps([round(s["rate"], 8) for s in stats["sites"]])
        out["fp32_work"] = fp32_work(compiled, stats)  # flushes per term + the recompute rate, site mean
        return out

    def compare(self, fn, bar=None) -> dict:
        """Metrics (LogitComparison) of fn(input_ids, attention_mask) -> logits against the FP32 reference, with
        the per-window values under "windows"."""
        acc = LogitComparison()
        with fp32_reference(), torch.no_grad():
            for ids, ref in zip(self.batches, self.reference):
                mask = torch.ones_like(ids)
                acc.update(ref, fn(ids, mask).float(), ids, mask)
                if bar is not None:
                    bar.update(1)
        return {**acc.result(), "windows": acc.windows()}

    def _bar(self, total: int, text: str):
        from .progress import progress_bar

        return progress_bar(total, text, enabled=self.progress)


def load_sequences(tokenizer=None, *, text=None, token_ids=None, seq_len: int, n_seq: int, seed: int,
                   shuffle: bool = False) -> tuple[torch.Tensor, str]:
    """(windows (n_seq, seq_len), dataset name) from `token_ids`, or from `text` (a path; default Persuasion)."""
    from .data import make_sequences

    _check_positive(seq_len=seq_len, n_seq=n_seq)
    ids, dataset = _token_stream(tokenizer, text, token_ids)
    return make_sequences(ids, seq_len, n_seq, seed, shuffle=shuffle), dataset


def run_sweep(
    model: nn.Module,
    tokenizer=None,
    *,
    formats: Sequence[str] = ("m4", "m7"),
    criteria: Sequence[str] = ("uniform", "strict", "random", "oracle"),
    taus=None,
    seq_len: int = 128,
    n_seq: int = 4,
    seed: int = 42,
    text: str | Path | None = None,
    token_ids=None,
    shuffle: bool = False,
    batch_size: int = 4,
    block_k: int = 1,
    count_from: str | Sequence[str] = "strict",
    out_dir: str | Path | None = None,
    progress: bool = True,
    model_name: str | None = None,
    command: str | None = None,
    generate: tuple[int, int] | None = None,
    policy: Policy | None = None,
    fixed: dict | None = None,
    flush_every: Sequence[int] = (),
) -> list[dict]:
    """Run the grid and return one row (dict) per cell; with `out_dir`, also write CSV, JSON and plots there.

    Data: `token_ids` (a 1-D sequence of ids) if given; else `text` (a file path) or, by default, Persuasion,
    tokenised with `tokenizer`. `n_seq` windows of `seq_len` tokens are cut with `seed` (and token-shuffled with
    `shuffle`), see `lampc.eval.data.make_sequences`. `taus` as in `plan_cells`.

    policy, fixed: the base Policy of every cell and the policy fields they share (kinds, sites, backend, fused,
    budget), as `lampc.compile(model, policy, **fixed, **cell)` takes them.

    flush_every=[n, ...]: also, per format, one static two-level baseline per n (criterion "flush" in the rows:
    uniform with SitePolicy.flush_every = n, the sweep's other fixed fields, rounding included, as they are).

    generate=(N, M): also decode N prompts of `seq_len` tokens (cut from the same text with seed + 1) greedily
    for M new tokens in every cell, against the FP32 model's continuations (lampc.eval.generation): columns
    gen_match_tokens, gen_identical, gen_prefill_rate, gen_decode_rate.
    """
    cells = plan_cells(formats, criteria, taus, count_from, flush_every)
    _check_positive(seq_len=seq_len, n_seq=n_seq, batch_size=batch_size, block_k=block_k)
    check_seq_len(model, seq_len)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    sequences, dataset = load_sequences(tokenizer, text=text, token_ids=token_ids, seq_len=seq_len, n_seq=n_seq,
                                        seed=seed, shuffle=shuffle)
    info = {"model": model_name or _model_name(model), "seed": seed, "n_seq": n_seq, "seq_len": seq_len,
            "dataset": dataset, "shuffle": shuffle}
    probe = None
    if generate is not None:
        from .progress import step_line

        step_line(f"FP32 greedy continuations of {generate[0]} prompts x {generate[1]} tokens", progress)
        probe = generation_probe(model, tokenizer, generate, text=text, token_ids=token_ids, seq_len=seq_len,
                                 seed=seed, shuffle=shuffle, batch_size=batch_size)
    sweep = Sweep(model, sequences, batch_size=batch_size, block_k=block_k, info=info, progress=progress,
                  generation=probe, policy=policy, fixed=fixed)
    rows = sweep.run(cells)
    if out_dir is not None:
        meta = metadata(sweep, cells, command=command, started=started, batch_size=batch_size,
                        count_from=count_from if isinstance(count_from, str) else list(count_from))
        write_outputs(rows, out_dir, meta)
    return rows


def generation_probe(model, tokenizer, generate: tuple[int, int], *, text, token_ids, seq_len: int, seed: int,
                     shuffle: bool, batch_size: int):
    """The GenerationProbe of `run_sweep(generate=(N, M))`: N prompts of seq_len tokens, M new tokens each."""
    from .generation import GenerationProbe

    n_prompts, new_tokens = generate
    _check_positive(generate_prompts=n_prompts, generate_new_tokens=new_tokens)
    context = _model_context(model)
    if seq_len + new_tokens > context:
        raise ValueError(f"generate: prompts of {seq_len} tokens + {new_tokens} new tokens exceed the model's "
                         f"context of {context}")
    prompts, _ = load_sequences(tokenizer, text=text, token_ids=token_ids, seq_len=seq_len, n_seq=n_prompts,
                                seed=seed + 1, shuffle=shuffle)
    with fp32_reference():
        return GenerationProbe.build(model, prompts, new_tokens, batch_size=batch_size)


def check_seq_len(model: nn.Module, seq_len: int) -> None:
    context = _model_context(model)
    if not 2 <= seq_len <= context:
        raise ValueError(f"seq_len {seq_len} outside [2, {context}] (the model's context)")


def metadata(sweep: Sweep, cells: Sequence[Cell], **extra) -> dict:
    """What results.json records besides the rows: settings, the base policy, every cell's overrides, versions."""
    return {"command": extra.pop("command", None) or " ".join(sys.argv), **extra, **sweep.info,
            "block_k": sweep.block_k, "reference": "the same model in FP32, eager, TF32 off",
            "policy": Policy.from_overrides(None, format=cells[0].format, block_k=sweep.block_k).to_dict(),
            "cells": [cell.overrides(sweep.block_k) for cell in cells], "intervals": INTERVAL_METHOD,
            "versions": _versions()}


def write_outputs(rows: list[dict], out_dir: str | Path, metadata: dict) -> dict[str, Path]:
    """results.csv, results.json and the plots in `out_dir` (created); returns {name: path}."""
    from .caveats import sweep_notes
    from .plots import plot_kl_vs_m, plot_kl_vs_rate
    from .report_table import comparisons

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "results.csv", "json": out / "results.json", "kl_vs_rate": out / "kl_vs_rate.png"}
    flat = [{k: v for k, v in row.items() if not isinstance(v, (dict, list))} for row in rows]
    columns = list(CSV_COLUMNS) + sorted({k for r in flat for k in r} - set(CSV_COLUMNS))
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in flat:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    doc = {"metadata": metadata, "rows": rows, "comparisons": comparisons(rows), "notes": sweep_notes(rows)}
    paths["json"].write_text(compact_json(doc) + "\n")
    plot_kl_vs_rate(rows, paths["kl_vs_rate"])
    if len({r["format"] for r in rows if r["criterion"] == NO_LOOKAHEAD}) > 1:
        paths["kl_vs_m"] = out / "kl_vs_m.png"
        plot_kl_vs_m(rows, paths["kl_vs_m"])
    return paths


def compact_json(doc) -> str:
    """JSON with one line per key, and each list of numbers (a row's per-window values) on one line."""
    text = json.dumps(doc, indent=1)  # a raw newline is never inside a JSON string: only layout is joined
    return re.sub(r"\[\n\s*([-0-9.eE+NaInfity]+(?:,\n\s*[-0-9.eE+NaInfity]+)*)\n\s*\]",
                  lambda m: "[" + re.sub(r",\n\s*", ", ", m.group(1)) + "]", text)


def _token_stream(tokenizer, text, token_ids) -> tuple[torch.Tensor, str]:
    if token_ids is not None:
        return torch.as_tensor(token_ids, dtype=torch.long).flatten(), "token_ids"
    from .data import persuasion_text, read_text

    if tokenizer is None:
        raise ValueError("a tokenizer is needed to tokenise the text (or pass token_ids=)")
    if text is None:
        body, dataset = persuasion_text(), "persuasion"
    else:
        body, dataset = read_text(text), Path(text).name
    ids = tokenizer(body, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long), dataset


def _model_context(model: nn.Module) -> int:
    config = model.config
    for name in ("n_positions", "max_position_embeddings"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    return 1 << 30


def _model_name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", "") or getattr(config, "model_type", type(model).__name__)


def _check_positive(**values) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _versions() -> dict:
    import transformers

    from ..version import __version__

    return {"lampc": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": sys.version.split()[0]}
