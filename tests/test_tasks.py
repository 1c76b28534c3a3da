"""lm-evaluation-harness on LAMP models (lampc.tasks): the adapter's numbers against the models' own, the paired
statistics against scipy and hand counts, and a small offline lm-eval run end to end on the embedded model."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import runpy
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is the tasks extra: pip install 'lampc[tasks]'")

from lm_eval.api.instance import Instance  # noqa: E402

from lampc.models import load_model  # noqa: E402
from lampc.tasks import AUSTEN_TASKS, LampcLM, austen_tasks, compare, mcnemar_p  # noqa: E402
from lampc.tasks.compare import markdown, paired, per_document, run  # noqa: E402

build = runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "make_austen_tasks.py"))["build"]  # not installed

PAIRS = [("Anne Elliot was", " a woman of"), ("Captain Wentworth had been", " at sea"),
         ("It was a", " very fine day, and the whole party walked out together."), ("She", " said")]


def _requests(kind: str, items) -> list[Instance]:
    return [Instance(kind, doc={}, arguments=args, idx=i) for i, args in enumerate(items)]


def own_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """One request alone (no batch, no padding): the sum of the continuation's log-probabilities, in float64."""
    ctx = tokenizer.encode(context)
    whole = tokenizer.encode(context + continuation)
    ids = torch.tensor([whole[:-1]])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.double(), -1)
    targets = whole[len(ctx):]
    return sum(float(logprobs[0, len(ctx) - 1 + j, t]) for j, t in enumerate(targets))


@pytest.fixture(scope="module")
def embedded():
    return load_model("embedded")


@pytest.mark.slow
def test_loglikelihoods_equal_the_models_own_sums(embedded):
    """Batched and right-padded by the adapter, each score equals that request scored alone: by the uncompiled model
    at m23 (FP32 itself), and by the compiled model at m4 with LAMP."""
    model, tokenizer = embedded
    exact = LampcLM("embedded", format="m23", criterion="uniform", batch_size=3)
    got = [lp for lp, _ in exact.loglikelihood(_requests("loglikelihood", PAIRS))]
    want = [own_loglikelihood(model, tokenizer, c, x) for c, x in PAIRS]
    assert max(abs(g - w) for g, w in zip(got, want)) < 1e-4
    lamp = LampcLM("embedded", format="m4", criterion="strict", tau=0.1, batch_size=3)
    got = [lp for lp, _ in lamp.loglikelihood(_requests("loglikelihood", PAIRS))]
    want = [own_loglikelihood(lamp.compiled, tokenizer, c, x) for c, x in PAIRS]
    assert max(abs(g - w) for g, w in zip(got, want)) < 1e-4
    assert lamp.recompute_rate() > 0 and lamp.mean_kl > 0  # the KL against FP32 was measured on the answers


@pytest.mark.slow
def test_greedy_flag_and_rolling_loglikelihood(embedded):
    model, tokenizer = embedded
    lm = LampcLM("embedded", fp32=True)
    context = "Anne Elliot was"
    ids = torch.tensor([tokenizer.encode(context)])
    with torch.no_grad():
        best = int(model(input_ids=ids).logits[0, -1].argmax())
    greedy, other = tokenizer.decode([best]), tokenizer.decode([(best + 1) % len(tokenizer)])
    (_, is_greedy), (_, not_greedy) = lm.loglikelihood(_requests("loglikelihood", [(context, greedy),
                                                                                  (context, other)]))
    assert is_greedy and not not_greedy
    text = "Sir Walter Elliot, of Kellynch Hall, in Somersetshire, was a man who never took up any book."
    rolling = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [(text,)]))[0]
    tokens = [tokenizer.eos_token_id] + tokenizer.encode(text)
    full = torch.tensor([tokens[:-1]])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=full).logits.double(), -1)[0]
    want = sum(float(logprobs[i, t]) for i, t in enumerate(tokens[1:]))
    assert rolling == pytest.approx(want, abs=1e-4)


@pytest.mark.slow
def test_generate_until_stops_at_the_first_stop_string(embedded):
    model, tokenizer = embedded
    lm = LampcLM("embedded", format="m7", criterion="strict", tau=0.1, batch_size=2)
    prompts = ["Anne Elliot was", "It was a very fine day, and", "Captain Wentworth"]
    full = lm.generate_until(_requests("generate_until", [(p, {"until": [], "max_gen_toks": 10}) for p in prompts]))
    stops = [" the", ","]
    cut = lm.generate_until(_requests("generate_until", [(p, {"until": stops, "max_gen_toks": 10}) for p in prompts]))
    for whole, short in zip(full, cut):
        first = min((whole.index(s) for s in stops if s in whole), default=len(whole))
        assert short == whole[:first]
        assert not any(s in short for s in stops)
    assert any(len(s) < len(w) for s, w in zip(cut, full))  # some output was cut
    ids = torch.tensor([tokenizer.encode(prompts[0])])
    own = lm.compiled.generate(ids, torch.ones_like(ids), max_new_tokens=10, do_sample=False)
    assert full[0] == tokenizer.decode(own[0, ids.shape[1]:].tolist())  # the compiled model's own generate


@pytest.mark.slow
def test_model_args_as_lm_eval_passes_them():
    """lm-eval builds the model from its --model_args string plus batch_size/device: every policy field arrives as
    text and becomes the compiled model's policy."""
    lm = LampcLM.create_from_arg_string("model=embedded,format=m7,criterion=budget,budget=2,kinds=attention+logits",
                                        {"batch_size": 4, "device": None, "max_batch_size": None})
    policy = lm.compiled.policy
    assert policy.enabled_kinds() == ["attention", "logits"] and lm.batch_size == 4
    assert policy.logits.budget == 2 and policy.logits.format.name == "m7"
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['colour'\]"):
        LampcLM.create_from_arg_string("model=embedded,colour=red")


@pytest.mark.parametrize("b, c", [(0, 0), (0, 5), (3, 3), (1, 9), (7, 2), (20, 35)])
def test_mcnemar_exact_p_equals_scipy_binomial_test(b, c):
    scipy_stats = pytest.importorskip("scipy.stats")
    want = 1.0 if b + c == 0 else scipy_stats.binomtest(min(b, c), b + c, 0.5).pvalue
    assert mcnemar_p(b, c) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("b, c", [(600, 540), (1024, 0), (700, 700), (2000, 1900)])
def test_mcnemar_p_past_a_thousand_discordant_documents_equals_the_exact_fraction(b, c):
    """More than 1023 discordant documents: 2 ** n does not fit a float, the p-value still does (and is exact)."""
    from fractions import Fraction

    n = b + c
    want = min(Fraction(1), 2 * Fraction(sum(math.comb(n, k) for k in range(min(b, c) + 1)), 2 ** n))
    assert mcnemar_p(b, c) == float(want)  # both correctly rounded from the same rational


def test_the_lm_eval_command_puts_sys_argv_back():
    """`python -m lampc.tasks.lm_eval_cli` hands lm-eval its arguments through sys.argv; called as a function, it
    leaves the caller's sys.argv as it was (here after lm-eval's --help exits)."""
    import sys

    from lampc.tasks.lm_eval_cli import main as lm_eval_main

    before = list(sys.argv)
    with pytest.raises(SystemExit):
        lm_eval_main(["--help"])
    assert sys.argv == before


@contextlib.contextmanager
def lm_eval_records():
    """(records, logger): every record lm-eval's logger emits at INFO and above while the block runs; the logger's
    level and handlers are put back after it."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("lm_eval")
    saved = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield records, logger
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved)


@pytest.mark.slow
def test_lm_eval_logs_show_when_asked():
    """`lampc tasks --verbose` passes lm_eval_logs=True: lm-eval's own info lines then reach its logger's handlers."""
    lm = LampcLM("embedded", fp32=True, batch_size=4)
    with lm_eval_records() as (records, _):
        run(lm, austen_tasks(["austen_choice"]), limit=2, lm_eval_logs=True)
    assert [r for r in records if r.levelno < logging.ERROR]


def test_paired_counts_by_hand():
    reference = {0: 1.0, 1: 1.0, 2: 0.0, 3: 0.0, 4: 1.0, 5: 0.0}
    cell = {0: 1.0, 1: 0.0, 2: 1.0, 3: 0.0, 4: 0.0, 6: 1.0}  # doc 5 only in FP32, doc 6 only in the cell
    pair = paired(reference, cell)
    assert (pair.documents, pair.flips, pair.right_to_wrong, pair.wrong_to_right) == (5, 3, 2, 1)
    assert pair.p_value == pytest.approx(1.0)


def test_task_data_is_shipped_and_well_formed():
    configs = austen_tasks()
    assert [c["task"] for c in configs] == list(AUSTEN_TASKS)
    for config in configs:
        path = config["dataset_kwargs"]["data_files"]["test"]
        rows = [json.loads(line) for line in open(path, encoding="utf-8")]
        assert len(rows) >= 60
        if config["task"] == "austen_choice":
            assert all(r["choices"].count(r["choices"][r["gold"]]) == 1 and len(r["choices"]) == 4 for r in rows)
    with pytest.raises(LookupError, match="no lampc task 'nope'"):
        austen_tasks(["nope"])


def test_task_builder_makes_answerable_cloze_items():
    para = ("Anne walked with her sister along the shore, and the sea was calm and grey; her sister spoke of the "
            "house, the garden and the shore again, while Anne thought of the letter, the letter she had read twice "
            "and kept, and of what the letter said about the shore.")
    other = ("Mountains rivers forests meadows villages carriages candles windows curtains tables chairs horses "
             "bridges towers orchards cottages ribbons bonnets gloves parasols umbrellas pianos violins sermons "
             "parishes baronets admirals lieutenants frigates harbours")  # words absent from the passage
    text = "\n\n".join([para] * 3 + ["Chapter 2", other])
    tasks = build(text, n_cloze=3, n_paragraphs=2)
    for item in tasks["austen_lastword"]:
        assert item["target"].lower() in item["context"].lower().split() or item["target"] in item["context"]
    for item in tasks["austen_choice"]:
        assert item["choices"][item["gold"]] == tasks["austen_lastword"][item["id"]]["target"]
    assert all("Chapter" not in p["text"] for p in tasks["austen_paragraphs"])


@pytest.mark.slow
def test_offline_lm_eval_run_end_to_end(tmp_path):
    """lm-eval's evaluator, the three shipped tasks, FP32 and one LAMP cell, a few documents each."""
    from lampc.tasks.compare import write

    cells = {"m4 strict": dict(format="m4", criterion="strict", tau=0.1)}
    said: list[str] = []
    rows, raw = compare("embedded", cells, austen_tasks(), limit=4, batch_size=4, progress=said.append)
    for cell in ("fp32", "m4 strict"):  # a line as each task of each cell starts and ends
        for task in AUSTEN_TASKS:
            assert f"lampc tasks: {cell}: {task}: started" in said
            done = [line for line in said if line.startswith(f"lampc tasks: {cell}: {task} done in ")]
            assert len(done) == 1 and done[0].endswith(" requests)") and " (0 requests)" not in done[0]
    assert {(r["cell"], r["task"]) for r in rows} == {(c, t) for c in ("fp32", "m4 strict") for t in AUSTEN_TASKS}
    for row in rows:
        if row["metric"] == "word_perplexity":
            assert math.isfinite(row["score"]) and row["score"] > 1
            continue
        samples = raw[row["cell"]]["samples"][row["task"]]
        reference = per_document(raw["fp32"]["samples"][row["task"]], row["metric"])
        mine = per_document(samples, row["metric"])
        assert row["documents"] == 4 and row["score"] == pytest.approx(sum(mine.values()) / 4)
        assert row["right_to_wrong"] == sum(1 for d in mine if reference[d] == 1 and mine[d] == 0)
        assert row["flips"] == row["right_to_wrong"] + row["wrong_to_right"]
        assert 0.0 <= row["mcnemar_p"] <= 1.0
    lamp = [r for r in rows if r["cell"] == "m4 strict"]
    assert all(r["kl"] > 0 and 0 < r["recompute_rate"] < 1 for r in lamp)
    assert all(math.isnan(r["kl"]) for r in rows if r["cell"] == "fp32")
    written = write(rows, raw, tmp_path)
    assert {p.name for p in written} >= {"tasks.csv", "tasks.json", "tasks.md", "results_fp32.json"}
    assert "m4 strict" in (tmp_path / "tasks.md").read_text()


@pytest.mark.slow
def test_cli_checks_its_arguments_before_any_work(capsys):
    from lampc.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["tasks", "--limit", "0"])
    assert exit_.value.code == 2 and "--limit must be a positive" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["tasks", "--output", "/proc/no/such/dir", "--limit", "2"])
    assert exit_.value.code == 2 and "--out: cannot write in /proc/no/such/dir" in capsys.readouterr().err


def _row(cell, task, score, stderr, documents, empty=None):
    return {"cell": cell, "task": task, "metric": "exact_match", "score": score, "stderr": stderr, "fp32": score,
            "flips": 0, "right_to_wrong": 0, "wrong_to_right": 0, "mcnemar_p": 1.0, "kl": math.nan,
            "recompute_rate": math.nan, "documents": documents, "empty_answers": empty}


def test_a_zero_stderr_is_explained_under_the_table():
    """0 of n right has stderr 0 (no spread), which is no certainty: the note says so and gives the exact one-sided
    95% bound, 1 - 0.05**(1/n) (scipy's beta quantile as the oracle), and how many answers were empty."""
    scipy_stats = pytest.importorskip("scipy.stats")
    rows = [_row("fp32", "austen_lastword", 0.0, 0.0, 50, empty=17), _row("m4", "austen_choice", 1.0, 0.0, 8),
            _row("m4", "austen_lastword", 0.02, 0.02, 50, empty=3)]
    text = markdown(rows)
    upper = scipy_stats.beta.ppf(0.95, 1, 50)
    assert (f"austen_lastword (fp32): 0 of 50 right, so its stderr is 0: every answer was wrong, which leaves no "
            f"spread to measure, not an exact score; the rate is below {100 * upper:.1f}% (one-sided 95%). 17 of the "
            f"50 answers were empty: the model's first token was a stop string") in text
    lower = scipy_stats.beta.ppf(0.05, 8, 1)
    assert (f"austen_choice (m4): 8 of 8 right, so its stderr is 0: every answer was right, which leaves no spread "
            f"to measure, not an exact score; the rate is above {100 * lower:.1f}% (one-sided 95%).") in text
    assert "austen_lastword (m4)" not in text  # a score with a spread needs no note


@pytest.mark.slow
def test_lastword_scores_a_right_answer(embedded, tmp_path):
    """austen_lastword's 0 is the embedded model's (it rarely continues with the passage's own last word), not the
    scoring's: with each target set to the model's own greedy first word (from HF's generate), every document is
    right."""
    import re

    model, tokenizer = embedded
    rows = [json.loads(line) for line in open(austen_tasks(["austen_lastword"])[0]["dataset_kwargs"]["data_files"][
        "test"], encoding="utf-8")][:12]
    mine = []
    for row in rows:
        ids = torch.tensor([tokenizer.encode(row["context"])])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)
        text = re.split(r"[\n.,;:!?]", tokenizer.decode(out[0, ids.shape[1]:].tolist()))[0]
        word = re.search(r"[A-Za-z']+", text)
        if word:
            mine.append({**row, "target": word.group(0)})
    assert len(mine) >= 4
    data = tmp_path / "own.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in mine), encoding="utf-8")
    config = austen_tasks(["austen_lastword"])[0]
    config["dataset_kwargs"]["data_files"] = {"test": str(data)}
    results = run(LampcLM("embedded", fp32=True, batch_size=1), [config], limit=None)
    assert results["results"]["austen_lastword"]["exact_match,first_word"] == 1.0


@pytest.mark.slow
def test_adapter_reports_progress_per_batch(embedded):
    lm = LampcLM("embedded", fp32=True, batch_size=2, loaded=embedded)
    said: list[str] = []
    lm.report, lm.report_every, lm.label = said.append, 0.0, "cell: task"
    lm.loglikelihood(_requests("loglikelihood", PAIRS + PAIRS[:1]))
    assert [line.split(",")[0] for line in said] == ["cell: task: 2/5 requests", "cell: task: 4/5 requests",
                                                     "cell: task: 5/5 requests"]
    said.clear()
    lm.generate_until(_requests("generate_until", [(c, {"until": ["."], "max_gen_toks": 2}) for c, _ in PAIRS]))
    assert [line.split(",")[0] for line in said] == ["cell: task: 2/4 requests", "cell: task: 4/4 requests"]
    said.clear()
    lm.report_every = math.inf  # a run shorter than report_every seconds says nothing
    lm.loglikelihood(_requests("loglikelihood", PAIRS))
    assert said == []


@pytest.mark.slow
def test_runs_lm_eval_quietly_without_its_deprecated_verbosity():
    """lm-eval 0.4.13 deprecates simple_evaluate(verbosity=) and TaskManager(verbosity=): quiet through the
    lm_eval logger's level instead, for the run only."""
    import warnings

    lm = LampcLM("embedded", fp32=True, batch_size=4)
    with lm_eval_records() as (records, logger):
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            run(lm, austen_tasks(["austen_choice"]), limit=2)
        assert [r.getMessage() for r in records if r.levelno < logging.ERROR] == []
        assert logger.level == logging.INFO  # restored after the run
