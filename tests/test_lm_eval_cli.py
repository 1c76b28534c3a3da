"""lm-eval's own command line and task loader on lampc: the model "lampc" and lampc's task YAMLs from any directory,
offline; lm-eval's default --device on a CPU-only torch; a task whose data cannot be downloaded."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is the tasks extra: pip install 'lampc[tasks]'")

from lampc.tasks.compare import TASK_DIR  # noqa: E402
from test_tasks import own_loglikelihood  # noqa: E402  (the scoring oracle, one request, unpadded)

OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
CELL = "model=embedded,format=m4,criterion=strict,tau=0.1"


def _run(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, **OFFLINE, "LMEVAL_LOG_LEVEL": "WARNING"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_entry_point_names_lampcs_model_for_lm_evals_registry():
    """`lm_eval.models` is the entry-point group lm-eval's plugin loader reads (EleutherAI/lm-evaluation-harness
    #4013); its value resolves through lm-eval's own Registry, which takes EntryPoints as lazy placeholders."""
    from lm_eval.api.registry import Registry

    from lampc.tasks.lm import LampcLM

    points = [p for p in importlib.metadata.entry_points(group="lm_eval.models") if p.name == "lampc"]
    assert len(points) == 1, "reinstall lampc (pip install --no-deps -e .) to register its entry points"
    assert points[0].value == "lampc.tasks.lm:LampcLM"
    registry = Registry("model")
    registry.register("lampc", target=points[0])
    assert registry.get("lampc") is LampcLM


def test_task_yamls_find_their_data_from_any_directory(tmp_path, monkeypatch):
    """lm-eval's TaskManager reads the YAMLs from --include_path; the data path is resolved beside the YAML, not
    in the current directory."""
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(tmp_path)
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    tasks = TaskManager(include_path=str(TASK_DIR), include_defaults=False).load(["austen_choice", "austen_lastword"])
    for name in ("austen_choice", "austen_lastword"):
        docs = list(tasks["tasks"][name].test_docs())
        rows = [json.loads(line) for line in open(TASK_DIR / f"{name}.jsonl", encoding="utf-8")]
        assert len(docs) == len(rows) and dict(docs[0]) == rows[0] and dict(docs[-1]) == rows[-1]


def test_the_task_path_command_prints_the_include_path(tmp_path):
    done = _run(["-m", "lampc.tasks.path"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == TASK_DIR and (TASK_DIR / "austen_choice.yaml").is_file()


def test_importing_lampc_tasks_keeps_lm_evals_own_models(tmp_path):
    """lm-eval fills its model registry only when it is empty; registering "lampc" first must not hide hf etc."""
    code = ("import lampc.tasks; from lm_eval.api.registry import get_model; "
            "print(get_model('hf').__name__, get_model('dummy').__name__, get_model('lampc').__name__)")
    done = _run(["-c", code], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["HFLM", "DummyLM", "LampcLM"]


@pytest.mark.slow
def test_lm_eval_command_line_runs_lampc_from_another_directory(tmp_path):
    """lm-eval's own command line (its HarnessCLI and cli_evaluate, with lampc's model registered and lampc's task
    directory included), in a directory holding nothing of lampc's, offline, with lm-eval's default --device
    (cuda:0). Every document's acc equals the argmax over the choices' loglikelihoods, scored directly."""
    from lampc.tasks.lm import LampcLM

    out = tmp_path / "out"
    done = _run(["-m", "lampc.tasks.lm_eval_cli", "--model", "lampc", "--model_args", CELL, "--tasks",
                 "austen_choice", "--limit", "5", "--output_path", str(out), "--log_samples"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "austen_choice" in done.stdout and "acc" in done.stdout  # lm-eval's results table
    if not torch.cuda.is_available():
        assert done.stderr.count("lm-eval's device 'cuda:0' is not available here") == 1
    samples_file = next(out.rglob("samples_austen_choice_*.jsonl"))
    samples = {s["doc_id"]: s for s in map(json.loads, samples_file.read_text(encoding="utf-8").splitlines())}
    assert sorted(samples) == [0, 1, 2, 3, 4]
    results = json.loads(next(out.rglob("results_*.json")).read_text(encoding="utf-8"))["results"]["austen_choice"]
    lm = LampcLM("embedded", format="m4", criterion="strict", tau=0.1, kl=False)
    docs = [json.loads(line) for line in open(TASK_DIR / "austen_choice.jsonl", encoding="utf-8")][:5]
    right = []
    for doc_id, doc in enumerate(docs):
        scores = [own_loglikelihood(lm.compiled, lm.tokenizer, doc["context"], " " + c) for c in doc["choices"]]
        right.append(float(max(range(4), key=scores.__getitem__) == doc["gold"]))
        assert samples[doc_id]["acc"] == right[-1]
    assert results["acc,none"] == pytest.approx(sum(right) / 5)


@pytest.mark.slow
def test_a_task_whose_data_cannot_be_downloaded_is_one_clear_error(tmp_path):
    """arc_easy offline and not cached: one line naming the task and its data set, before any model is run."""
    done = _run(["-m", "lampc.cli", "tasks", "--tasks", "austen_choice,arc_easy", "--limit", "2"], cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert ("lampc tasks: error: task 'arc_easy' needs its data set allenai/ai2_arc from the Hugging Face Hub, "
            "which cannot be downloaded here (offline: HF_DATASETS_OFFLINE/HF_HUB_OFFLINE") in done.stderr
    assert "FP32 reference" not in done.stderr  # refused before any model ran
