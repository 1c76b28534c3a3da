"""`python -m lampc.tasks.lm_eval_cli`: lm-eval's own command line, with lampc's model and tasks.

    python -m lampc.tasks.lm_eval_cli --model lampc --model_args model=embedded,format=m4,criterion=strict,tau=0.1 \
        --tasks austen_choice --limit 5

takes every argument `lm_eval` takes and runs lm-eval's own entry point (`lm_eval.__main__.cli_evaluate`), after
two things lm-eval 0.4.13 has no hook for: registering the model "lampc" (LampcLM) and adding lampc's task directory
(`python -m lampc.tasks.path`) as --include_path, so austen_lastword, austen_choice and austen_paragraphs are found
from any directory. A --include_path of your own replaces lampc's (lm-eval takes one); name lampc's YAML files in
--tasks then. An lm-eval that loads plugin models from entry points (the `lm_eval.models` group, which lampc's
package metadata fills) needs no wrapper: `lm_eval --model lampc --include_path "$(python -m lampc.tasks.path)"`.

lm-eval's --device defaults to cuda:0: where there is no CUDA, lampc runs on the CPU and says so once.
"""

from __future__ import annotations

import sys

from .path import TASK_DIR


def main(argv: list[str] | None = None) -> None:
    from lm_eval.__main__ import cli_evaluate

    from . import lm  # noqa: F401  registers "lampc" (after lm-eval's own models)

    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--include_path" or a.startswith("--include_path=") for a in args):
        args += ["--include_path", str(TASK_DIR)]
    saved = sys.argv
    sys.argv = [sys.argv[0], *args]  # lm-eval's parser reads sys.argv
    try:
        cli_evaluate()
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
