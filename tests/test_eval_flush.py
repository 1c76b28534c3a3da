"""The static two-level rule as a baseline of `lampc eval` (issue 24, item 3): `--flush-every 1,4,16,64` adds, per
format, a cell that recomputes nothing and flushes the accumulator into FP32 every n blocks, reported as
"flush n=4" beside uniform and random, on the FP32-work axis (lampc/eval/fp32_work.py)."""

from __future__ import annotations

import json
import math

import pytest

from lampc.cli import build_parser, main
from lampc.criteria import NO_LOOKAHEAD
from lampc.eval.fp32_work import flushes_per_entry
from lampc.eval.grid import FLUSH_CELL, Cell, plan_cells
from lampc.eval.report_table import criterion_text, eval_columns, format_table, headline, headline_columns
from lampc.policy import Policy


def fails(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_each_n_is_a_cell_per_format_after_its_criteria():
    cells = plan_cells(["m4", "m7"], ["uniform", "strict"], taus=[0.1], flush_every=[1, 4, 16, 64, 4])
    flush = [c for c in cells if c.criterion == FLUSH_CELL]
    assert len(cells) == 2 * (2 + 4) and len(flush) == 8  # the repeated 4 is one cell
    assert [c.label for c in cells[:6]] == ["m4 uniform", "m4 strict tau=0.1", "m4 flush n=1", "m4 flush n=4",
                                            "m4 flush n=16", "m4 flush n=64"]
    for cell in flush:
        overrides = cell.overrides(block_k=1)
        assert overrides["criterion"] == NO_LOOKAHEAD == cell.rule and overrides["tau"] is None
        site = Policy.from_overrides(None, **overrides).attention
        assert site.criterion == NO_LOOKAHEAD and site.flush_every == cell.flush_every
        assert site.format.name == cell.format and site.block_k == 1
    assert plan_cells(["m4"], ["uniform"]) == [Cell("m4", "uniform")]  # no flush cells unless asked


def test_a_flush_cell_needs_its_n_and_only_it_has_one():
    with pytest.raises(ValueError, match="go together"):
        Cell("m4", FLUSH_CELL)
    with pytest.raises(ValueError, match="go together"):
        Cell("m4", "uniform", flush_every=4)


@pytest.mark.parametrize("value", [0, -1, "x", True, 2.5])
def test_plan_cells_refuses_a_bad_n_by_name(value):
    with pytest.raises(ValueError, match=f"flush_every {value!r}: must be an integer >= 1"):
        plan_cells(["m4"], ["uniform"], flush_every=[4, value])


@pytest.mark.parametrize("text, message", [
    ("0", "flush_every 0: must be an integer >= 1"),
    ("-1", "flush_every -1: must be an integer >= 1"),
    ("x", "expected integers n >= 1 (flush into FP32 every n blocks), got 'x'"),
    ("1,,4", "expected a comma-separated list of integers n >= 1, got '1,,4'"),
    ("4,1.5", "expected integers n >= 1"),
])
def test_eval_refuses_a_bad_flush_every_by_name(capsys, text, message):
    err = fails(capsys, "eval", "--flush-every", text)
    assert "argument --flush-every: " in err and message in err and "Traceback" not in err


def test_eval_takes_a_list_and_other_commands_keep_the_policy_option():
    eval_args = build_parser(["eval"]).parse_args(["eval", "--flush-every", "1,4,16,64,4"])
    assert eval_args.flush_every == (1, 4, 16, 64)
    show_args = build_parser(["show"]).parse_args(["show", "--flush-every", "4"])
    assert show_args.flush_every == 4  # a field of the compiled policy there


def test_eval_help_says_what_a_flush_baseline_is(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--flush-every LIST the static two-level baselines" in text
    assert text.count("--flush-every LIST") == 2  # usage and grid; not again among the policy options


@pytest.mark.parametrize("k, n, block_k, flushes", [(64, 1, 1, 64), (64, 4, 1, 16), (64, 64, 1, 1), (64, 100, 1, 1),
                                                   (65, 16, 4, 2), (64, None, 1, 0)])
def test_flushes_per_entry(k, n, block_k, flushes):
    assert flushes_per_entry(k, n, block_k) == flushes


def _row(criterion, kl, rate=0.0, work=None, n=None, tau=None):
    return {"format": "m4", "criterion": criterion, "tau": tau, "count_from": "", "kl": kl, "flip_rate": 0.0,
            "recompute_rate": rate, "fp32_work": rate if work is None else work, "flush_every": n, "shuffle": False}


ROWS = [_row("uniform", 1e-4), _row("strict", 1e-5, rate=0.04, tau=1.0), _row("strict", 2e-6, rate=0.09, tau=0.3),
        _row(FLUSH_CELL, 9e-6, work=0.0625, n=16), _row(FLUSH_CELL, 1e-4, work=1 / 64, n=64),
        _row(FLUSH_CELL, 3e-7, work=1.0, n=1)]


def test_tables_name_flush_rows_and_add_fp32_work_only_beside_them():
    assert criterion_text(ROWS[3]) == "flush n=16" and criterion_text(ROWS[1]) == "strict"
    columns = eval_columns(ROWS)
    assert columns[columns.index("rate_ci") + 1] == "fp32_work"
    assert "fp32_work" not in eval_columns(ROWS[:3])
    table = format_table(ROWS, columns)
    assert "FP32 work" in table and "flush n=64" in table and "6.25%" in table


def test_the_headline_takes_the_best_flush_within_the_same_fp32_work():
    at5, at10 = headline(ROWS)
    assert at5["flush_match"] == "n=64 (1.56%)" and at5["kl_flush"] == 1e-4  # n=16 spends 6.25%
    assert at5["gain_vs_flush"] == pytest.approx(10)
    assert at10["flush_match"] == "n=16 (6.25%)" and at10["gain_vs_flush"] == pytest.approx(4.5)
    assert "vs flush [95% CI]" in format_table([at5, at10], headline_columns(ROWS))
    assert "kl_flush" not in headline(ROWS[:3])[0] and "vs flush" not in format_table(headline(ROWS[:3]),
                                                                                      headline_columns(ROWS[:3]))


@pytest.fixture(scope="module")
def flush_run(tmp_path_factory):
    """The embedded model, m4, uniform and strict beside flush n=1 and n=64: 2 windows of 32 tokens (a few s)."""
    out = tmp_path_factory.mktemp("flush")
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["eval", "--format", "m4", "--criterion", "uniform,strict", "--tau", "0.5",
                     "--flush-every", "1,64", "--seq-len", "32", "--n-seq", "2", "--out", str(out), "--quiet"])
    assert code == 0
    return printed.getvalue(), json.loads((out / "results.json").read_text()), out


@pytest.mark.slow
def test_eval_reports_the_flush_baselines(flush_run):
    """K = 64 (the embedded GPT-2's head_dim): flush n=1 adds every term in FP32 (FP32 work 100%), n=64 is one chunk
    (1/64), which is uniform's accumulation with its output left unrounded, and at m4 the same KL. Flushing more
    often brings the model closer to FP32: flush n=1's KL is far below n=64's."""
    printed, doc, out = flush_run
    rows = {(r["criterion"], r["flush_every"]): r for r in doc["rows"]}
    assert list(rows) == [("uniform", None), ("strict", None), (FLUSH_CELL, 1), (FLUSH_CELL, 64)]
    every, once, uniform = rows[FLUSH_CELL, 1], rows[FLUSH_CELL, 64], rows["uniform", None]
    for row in (every, once):
        assert math.isfinite(row["kl"]) and row["recompute_rate"] == 0.0 and row["format"] == "m4"
        assert row["rule"] == uniform["rule"]
    assert every["kl"] <= once["kl"] / 10
    assert once["kl"] == pytest.approx(uniform["kl"], rel=1e-6)
    assert every["fp32_work"] == 1.0 and once["fp32_work"] == pytest.approx(1 / 64)
    assert uniform["fp32_work"] == 0.0 and rows["strict", None]["fp32_work"] == rows["strict", None]["recompute_rate"]
    assert [c.get("flush_every") for c in doc["metadata"]["cells"]] == [None, None, 1, 64]
    assert "--flush-every 1,64" in doc["metadata"]["command"]
    assert "flush n=1" in printed and "flush n=64" in printed and "FP32 work" in printed
    assert any(note.startswith("note: FP32 work is the share") for note in doc["notes"])
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert "flush_every" in header and "fp32_work" in header


@pytest.mark.slow
def test_the_plot_draws_flush_rows_at_their_fp32_work(flush_run):
    from lampc.eval.plots import kl_vs_rate_figure

    _, doc, _ = flush_run
    ax = kl_vs_rate_figure(doc["rows"]).axes[0]
    drawn = [(float(x), float(y)) for line in ax.get_lines() for x, y in zip(*line.get_data())]
    for row in doc["rows"][2:]:
        assert (pytest.approx(100 * row["fp32_work"]), pytest.approx(row["kl"])) in drawn
    assert "flush (FP32 work)" in ax.get_legend_handles_labels()[1]
    assert {t.get_text() for t in ax.texts} >= {"n=1", "n=64"}
