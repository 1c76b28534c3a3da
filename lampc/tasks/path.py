"""`python -m lampc.tasks.path`: the directory of lampc's task YAMLs, for lm-eval's --include_path.

    lm_eval --model lampc --include_path "$(python -m lampc.tasks.path)" --tasks austen_choice ...

(with an lm-eval that loads plugin models from the `lm_eval.models` entry points; lm-eval 0.4.13 does not, so
there `python -m lampc.tasks.lm_eval_cli` is the command, which includes this directory itself).
"""

from pathlib import Path

TASK_DIR = Path(__file__).parent / "austen"

if __name__ == "__main__":
    print(TASK_DIR)
