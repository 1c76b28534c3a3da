"""The absolute paths of the task data beside this file, for the task YAMLs here.

lm-eval resolves a YAML's `!function module.name` from the .py file beside the YAML, so

    data_files:
      test: !function data_files.austen_choice

finds the data wherever lm-eval runs (a plain relative path would be read from the current directory).
"""

from pathlib import Path

HERE = Path(__file__).parent
austen_choice = str(HERE / "austen_choice.jsonl")
austen_lastword = str(HERE / "austen_lastword.jsonl")
austen_paragraphs = str(HERE / "austen_paragraphs.jsonl")
