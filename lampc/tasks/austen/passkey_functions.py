"""What passkey.yaml's `!function` lines name (lm-eval resolves them from the .py file beside the YAML): the
documents, made for the model's tokenizer, and the per-document score, both in lampc/tasks/passkey_task.py."""

from lampc.tasks.passkey_task import dataset, process_results

__all__ = ["dataset", "process_results"]
