"""Downstream tasks through lm-evaluation-harness (the optional extra `lampc[tasks]`).

Importing this package registers `LampcLM` as lm-eval's model "lampc" (when lm-eval is installed; otherwise
`MISSING` says how to install it). `austen_tasks()` gives lampc's offline tasks (Persuasion cloze by generation,
four-way cloze by loglikelihood, paragraph perplexity), `passkey_task()` the passkey retrieval task (a number hidden
in Austen's prose, each prompt `length` tokens of the model's tokenizer: passkey.py, passkey_task.py); `compare`
runs cells against FP32 with paired statistics (lampc/tasks/compare.py); `lampc tasks` is the command. lm-eval's
own command line with lampc's model and tasks: `python -m lampc.tasks.lm_eval_cli --model lampc --model_args ...
--tasks austen_choice` (lm_eval_cli.py).
"""

from __future__ import annotations

from .availability import TaskDataUnavailable
from .compare import AUSTEN_TASKS, austen_tasks, compare, mcnemar_p, resolve_tasks
from .passkey_task import PASSKEY_TASK, passkey_task

try:
    from .lm import LampcLM
except ImportError as err:
    if not (err.name or "").startswith("lm_eval"):
        raise
    LampcLM = None
    MISSING = "lampc tasks needs lm-evaluation-harness: pip install 'lampc[tasks]' (the lm-eval package)"
else:
    MISSING = ""

__all__ = ["AUSTEN_TASKS", "LampcLM", "MISSING", "PASSKEY_TASK", "TaskDataUnavailable", "austen_tasks", "compare",
           "mcnemar_p", "passkey_task", "resolve_tasks"]
