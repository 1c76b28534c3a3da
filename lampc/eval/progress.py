"""Progress of long steps: a bar on a terminal, one line per step otherwise (logs, CI, pipes).

    with progress_bar(total, "FP32 reference", enabled=True) as bar:   # tqdm on a terminal
        bar.set_description("m4 strict tau=1"); bar.update(1)          # elsewhere: "lampc: m4 strict tau=1"
    step_line("capturing the model as a graph (torch.export)")        # one line on stderr
"""

from __future__ import annotations

import sys
import time


def step_line(message: str, enabled: bool = True) -> None:
    """One line on stderr for a long step, so a log shows where the time went."""
    if enabled:
        print(f"lampc: {message}", file=sys.stderr, flush=True)


class StepLines:
    """The part of tqdm's interface lampc uses, printing a line when a step starts and one when all are done."""

    def __init__(self, total: int, text: str):
        self.total, self.done, self.start = total, 0, time.perf_counter()
        self.text = ""
        self.set_description(text)

    def set_description(self, text: str) -> None:
        if text and text != self.text:
            step_line(f"{text} ({self.done}/{self.total})")
        self.text = text

    def update(self, n: int = 1) -> None:
        self.done += n

    def __enter__(self) -> "StepLines":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            step_line(f"{self.done}/{self.total} done in {time.perf_counter() - self.start:.1f} s")


def progress_bar(total: int, text: str, *, enabled: bool = True, unit: str = "batch"):
    """tqdm on a terminal; StepLines when stderr is not one; a silent tqdm when not enabled."""
    from tqdm.auto import tqdm

    if enabled and not sys.stderr.isatty():
        return StepLines(total, text)
    return tqdm(total=total, desc=text, file=sys.stderr, unit=unit, dynamic_ncols=True, leave=False,
                disable=not enabled, mininterval=0.5)
