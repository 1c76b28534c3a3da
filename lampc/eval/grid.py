"""The grid of a sweep: its cells (format x criterion x tau), the default tau grids, and their validation.

    cells = plan_cells(["m4", "m7"], ["uniform", "strict"], taus=[1, 0.2])   # every tau checked for its rule
    cells[1]                 # Cell(format='m4', criterion='strict', tau=1.0, count_from=None)

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

SWEEP_CRITERIA = CRITERIA
TAU_CRITERIA = THRESHOLD_RULES
"""The criteria a --tau applies to (uniform recomputes nothing; budget takes its count or fraction)."""


@dataclasses.dataclass(frozen=True)
class Cell:
    """One point of the grid: a format and a look-ahead rule."""

    format: str
    criterion: str
    tau: float | None = None  # None for uniform
    count_from: str | None = None  # random/oracle only

    def overrides(self, block_k: int) -> dict:
        out = {"format": self.format, "criterion": self.criterion, "tau": self.tau, "block_k": block_k}
        if self.count_from:
            out["count_from"] = self.count_from
        return out

    @property
    def label(self) -> str:
        return f"{self.format} {self.criterion}" + ("" if self.tau is None else f" tau={self.tau:g}")


def plan_cells(formats: Sequence[str], criteria: Sequence[str], taus=None,
               count_from: str | Sequence[str] = DEFAULT_RULE) -> list[Cell]:
    """The cells of a sweep, validated: every format parses, every tau is in its criterion's range.

    taus:        None (default grids, `TAU_GRIDS`); a sequence of floats used by every criterion that takes a tau;
                 or a dict {criterion: [tau, ...]} where the key "all" gives the rest a common list. random/oracle
                 use their own entry if given, else that of the rule they count from.
    count_from:  the rule (or rules: one random/oracle series each) whose per-row counts random/oracle reproduce.
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
    return list(dict.fromkeys(cells))  # drop duplicates, keep order


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
