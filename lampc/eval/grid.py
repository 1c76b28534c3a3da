"""The grid of a sweep: its cells (format x criterion x tau), the default tau grids, and their validation.

    cells = plan_cells(["m4", "m7"], ["uniform", "strict"], taus=[1, 0.2])   # every tau checked for its rule
    cells[1]                 # Cell(format='m4', criterion='strict', tau=1.0, count_from=None, flush_every=None)
    plan_cells(["m4"], ["uniform"], flush_every=[1, 16])   # + the static two-level baselines: "m4 flush n=1", ...

Apart from lampc/eval/sweep.py (which runs the cells) so that the command line reads the grids without torch.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from ..criteria import (
    COUNT_SOURCES,
    CRITERIA as CRITERION_TABLE,
    DEFAULT_RULE,
    DISPLAY_ORDER,
    LAMP_RULES,
    NAMES as CRITERIA,
    NO_LOOKAHEAD,
    THRESHOLD_RULES,
)
from ..formats import parse as parse_format
from ..policy import SitePolicy

TAU_GRIDS: dict[str, tuple[float, ...]] = {name: CRITERION_TABLE[name].sweep_taus for name in DISPLAY_ORDER
                                           if CRITERION_TABLE[name].sweep_taus}
"""Default taus per rule, each criterion's `sweep_taus` (lampc/criteria.py says why these), in the figures' order.
random/oracle use the grid of the rule they count from."""

LAMP_CRITERIA = LAMP_RULES
"""The deployable look-ahead rules (budget needs a count, not a tau, and is not swept)."""

POLICY_CELL = "policy"
"""The cell that runs the sweep's base policy as it is: a policy with per-site rules (lampc calibrate's), which a
grid's criterion or tau would override."""

FLUSH_CELL = "flush"
"""The cells of the static two-level baseline (vLLM's and FlashAttention-3's fix of FP8 attention): no recompute,
the low-precision accumulator added into FP32 every n blocks (SitePolicy.flush_every = n). Like POLICY_CELL a
cell's name, not a criterion: its policy's criterion is uniform (`Cell.rule`)."""

SWEEP_CRITERIA = CRITERIA
TAU_CRITERIA = THRESHOLD_RULES
"""The criteria a --tau applies to (uniform recomputes nothing; budget takes its count or fraction)."""


@dataclasses.dataclass(frozen=True)
class Cell:
    """One point of the grid: a format and a look-ahead rule (or, criterion FLUSH_CELL, a flush every n blocks)."""

    format: str
    criterion: str
    tau: float | None = None  # None for uniform
    count_from: str | None = None  # random/oracle only
    flush_every: int | None = None  # FLUSH_CELL only

    def __post_init__(self) -> None:
        if (self.criterion == FLUSH_CELL) != (self.flush_every is not None):
            raise ValueError(f"Cell: criterion {FLUSH_CELL!r} and flush_every go together, got criterion "
                             f"{self.criterion!r} with flush_every={self.flush_every!r}")

    @property
    def rule(self) -> str:
        """The criterion its policy runs: uniform for a flush cell, else the cell's own."""
        return NO_LOOKAHEAD if self.criterion == FLUSH_CELL else self.criterion

    def overrides(self, block_k: int) -> dict:
        out = {"format": self.format, "criterion": self.rule, "tau": self.tau, "block_k": block_k}
        if self.count_from:
            out["count_from"] = self.count_from
        if self.flush_every is not None:
            out["flush_every"] = self.flush_every
        return out

    @property
    def label(self) -> str:
        if self.flush_every is not None:
            return f"{self.format} {flush_label(self.flush_every)}"
        return f"{self.format} {self.criterion}" + ("" if self.tau is None else f" tau={self.tau:g}")


def flush_label(flush_every: int) -> str:
    """How tables, plots and progress lines name a flush cell: 'flush n=4'."""
    return f"{FLUSH_CELL} n={flush_every}"


def plan_cells(formats: Sequence[str], criteria: Sequence[str], taus=None,
               count_from: str | Sequence[str] = DEFAULT_RULE, flush_every: Sequence[int] = ()) -> list[Cell]:
    """The cells of a sweep, validated: every format parses, every tau is in its criterion's range.

    taus:        None (default grids, `TAU_GRIDS`); a sequence of floats used by every criterion that takes a tau;
                 or a dict {criterion: [tau, ...]} where the key "all" gives the rest a common list. random/oracle
                 use their own entry if given, else that of the rule they count from.
    count_from:  the rule (or rules: one random/oracle series each) whose per-row counts random/oracle reproduce.
    flush_every: the static two-level baselines: per format, after its criteria, one FLUSH_CELL per n (uniform
                 with SitePolicy.flush_every = n), in the order given.
    Raises ValueError naming the bad value.
    """
    if not formats:
        raise ValueError("formats: give at least one format (e.g. m4)")
    if not criteria:
        raise ValueError("criteria: give at least one criterion")
    names = []
    for f in formats:
        try:
            names.append(parse_format(f).name)
        except (ValueError, TypeError) as err:
            raise ValueError(f"format {f!r}: {err}") from None
    for c in criteria:
        if c not in SWEEP_CRITERIA and c != POLICY_CELL:
            raise ValueError(f"criterion {c!r} is not one of {', '.join(SWEEP_CRITERIA)}")
    sources = [count_from] if isinstance(count_from, str) else list(count_from)
    for source in sources:
        if source not in COUNT_SOURCES:
            raise ValueError(f"count_from {source!r} is not one of {', '.join(COUNT_SOURCES)}")
    flushes = check_flush_every(flush_every)
    cells = []
    for f in names:
        for c in criteria:
            if c not in TAU_CRITERIA:  # uniform, budget (its budget is a fixed policy field), the base policy
                cells.append(Cell(f, c))
                continue
            for source in sources if CRITERION_TABLE[c].counted else [None]:
                for tau in _taus_for(c, source, taus):
                    _check_tau(c, source, tau)
                    cells.append(Cell(f, c, float(tau), source))
        cells += [Cell(f, FLUSH_CELL, flush_every=n) for n in flushes]
    return list(dict.fromkeys(cells))  # drop duplicates, keep order


def check_flush_every(values: Sequence[int]) -> list[int]:
    """The flush intervals n of the two-level baselines, each an integer >= 1 (SitePolicy's check), without
    repeats; ValueError naming the bad value."""
    out = []
    for n in values:
        try:
            SitePolicy(criterion=NO_LOOKAHEAD, flush_every=n)
        except ValueError:
            raise ValueError(f"flush_every {n!r}: must be an integer >= 1 (flush into FP32 every n blocks)") from None
        out.append(n)
    return list(dict.fromkeys(out))


def _taus_for(criterion: str, source: str | None, taus) -> Sequence[float]:
    rule = source or criterion
    if taus is None:
        return TAU_GRIDS[rule]
    if isinstance(taus, dict):
        return taus.get(criterion) or taus.get(rule) or taus.get("all") or TAU_GRIDS[rule]
    return taus


def _check_tau(criterion: str, source: str | None, tau) -> None:
    try:
        SitePolicy(criterion=criterion, tau=tau, count_from=source or DEFAULT_RULE)
    except ValueError as err:
        rule = f"{criterion} (counts of {source})" if source else criterion
        reason = re.search(r"must be .*", str(err))
        raise ValueError(f"tau {tau!r} for criterion {rule}: {reason.group(0) if reason else err}") from None
