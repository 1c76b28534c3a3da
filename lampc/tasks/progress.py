"""Progress of a long loop over lm-eval's requests, as lines a person can follow (stderr by default).

    progress = Progress(report, "m4 strict: austen_choice", total=800, every=5.0)
    for batch in batches:
        ...
        progress.advance(len(batch))      # 'm4 strict: austen_choice: 120/800 requests, 35 s'

A line comes when `every` seconds have passed since the last one (every=0: after each batch), and at the end of a
loop that has said anything before, so a short run stays silent and a long one never goes quiet for long.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Progress:
    def __init__(self, report: Callable[[str], None] | None, label: str, total: int, *, every: float):
        self.report, self.label, self.total, self.every = report, label, total, every
        self.done = 0
        self.start = self.last = time.monotonic()
        self.said = False

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        finished = self.done >= self.total
        if self.report is None or not (now - self.last >= self.every or (finished and self.said)):
            return
        self.report(f"{self.label}: {self.done}/{self.total} requests, {now - self.start:.0f} s")
        self.last, self.said = now, True
