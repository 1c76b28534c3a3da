"""The look-ahead rule of a site: which criterion selects the components to recompute, and its settings.

    >>> Rule("strict", tau=0.1).to_text()
    'strict tau=0.1'

Every field is checked on construction against the criteria table (lampc/criteria.py); a bad value raises
ValueError naming the field (as `SitePolicy.<field>`: users set these through SitePolicy). Loads no torch.
"""

from __future__ import annotations


from dataclasses import dataclass

from ..criteria import COUNT_SOURCES, CRITERIA, NAMES, check_tau
from .codec import Record

ERROR_SCALES = ("score", "l1", "norms", "mixed", "exact")
"""Rule.error_scale: the paper's |ŝ_i|, a bound on the producer's error, |ŝ_i| floored at a cancelling dot
product's magnitude, or the true error (evaluation only; docs/NUMERICS.md §9)."""

GRANULARITIES = ("entry", "tile")
"""Rule.granularity: what one selection decision covers, one score entry or a tile of (rows, keys) entries."""

DEFAULT_TILE = (64, 64)
"""Rule.tile: rows x keys of a tile (the unit of granularity="tile", of the tile counts, and of a streaming site's
key chunks)."""


@dataclass(frozen=True)
class Rule(Record):
    """criterion, tau, length_scaling, l_ref, budget, count_from, seed, error_scale, granularity, tile: see
    SitePolicy."""

    CODE_POSITIONAL = ("criterion",)

    criterion: str = "strict"
    tau: float | None = None
    length_scaling: bool = False
    l_ref: int = 1024
    budget: int | float | None = None
    count_from: str = "strict"
    seed: int = 0
    error_scale: str = "score"
    granularity: str = "entry"
    tile: tuple[int, int] = DEFAULT_TILE

    def __post_init__(self) -> None:
        for name in ("criterion", "count_from", "error_scale", "granularity"):
            value = getattr(self, name)
            object.__setattr__(self, name, value.lower() if isinstance(value, str) else value)
        check_choice("criterion", self.criterion, NAMES)
        check_choice("count_from", self.count_from, COUNT_SOURCES)
        check_choice("error_scale", self.error_scale, ERROR_SCALES)
        entry = self.entry
        if entry.tau is None:
            if self.tau is not None:
                raise ValueError(f"SitePolicy.tau does not apply to criterion {self.criterion!r} "
                                 f"({entry.no_tau}); leave it None")
        else:
            if self.tau is None:
                object.__setattr__(self, "tau", entry.tau.default)
            object.__setattr__(self, "tau", check_tau(self.criterion, self.count_from, self.tau))
        if self.length_scaling is True and not (entry.length_scaling or entry.counted):
            raise ValueError(f"SitePolicy.length_scaling scales the tau of strict and relaxed (and of random/oracle "
                             f"counting from them); it means nothing for criterion {self.criterion!r}")
        if self.error_scale != "score" and not self.counting_entry.weighs_errors:
            raise ValueError(f"SitePolicy.error_scale={self.error_scale!r} weighs each entry's error; criterion "
                             f"{self.criterion!r} does not read error weights (use strict, relaxed or budget)")
        if self.length_scaling is True and entry.counted and not CRITERIA[self.count_from].length_scaling:
            raise ValueError(f"SitePolicy.length_scaling means nothing for count_from={self.count_from!r}")
        if not isinstance(self.length_scaling, bool):
            raise ValueError(f"SitePolicy.length_scaling must be a bool, got {self.length_scaling!r}")
        check_int("l_ref", self.l_ref, minimum=1)
        check_int("seed", self.seed, minimum=0)
        if self.seed >= 2**63:
            raise ValueError(f"SitePolicy.seed must be < 2**63, got {self.seed}")
        check_budget(self.criterion, self.budget)
        check_choice("granularity", self.granularity, GRANULARITIES)
        object.__setattr__(self, "tile", check_tile(self.tile))

    @property
    def entry(self):
        """The criterion's entry in lampc.criteria.CRITERIA."""
        return CRITERIA[self.criterion]

    @property
    def counting_entry(self):
        """The entry whose per-row counts the selection has: count_from's for random and oracle."""
        return CRITERIA[self.count_from] if self.entry.counted else self.entry

    @property
    def label(self) -> str:
        """The rule in a few words, e.g. 'strict tau=0.1', 'budget k=8' or 'strict tau=0.1 tiles 64x64'."""
        text = self.entry.text(self)
        if self.error_scale != "score":
            text += f" error scale {self.error_scale}"
        return text if self.granularity == "entry" else f"{text} tiles {self.tile[0]}x{self.tile[1]}"


def check_choice(name: str, value, choices, owner: str = "SitePolicy") -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{name} must be one of {', '.join(choices)}; got {value!r}")


def check_tile(tile) -> tuple[int, int]:
    """tile as (rows, keys), two integers >= 1 (a list is taken as the pair it holds)."""
    if isinstance(tile, list):
        tile = tuple(tile)
    if (not isinstance(tile, tuple) or len(tile) != 2
            or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in tile)):
        raise ValueError(f"SitePolicy.tile must be (rows, keys), two integers >= 1, got {tile!r}")
    return tile


def check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"SitePolicy.{name} must be an integer >= {minimum}, got {value!r}")


def check_budget(criterion: str, budget) -> None:
    if not CRITERIA[criterion].takes_budget:
        if budget is not None:
            raise ValueError(f"SitePolicy.budget applies to criterion='budget' only (criterion is {criterion!r})")
        return
    if isinstance(budget, bool):
        raise ValueError(f"SitePolicy.budget must be an int k >= 0 or a fraction in (0, 1], got {budget!r}")
    if budget is None:
        raise ValueError("SitePolicy.budget is required for criterion='budget': an int k >= 0 or a fraction in (0, 1]")
    if isinstance(budget, int):
        if budget < 0:
            raise ValueError(f"SitePolicy.budget as a count must be >= 0, got {budget}")
    elif isinstance(budget, float):
        if not 0.0 < budget <= 1.0:
            raise ValueError(f"SitePolicy.budget as a fraction must be in (0, 1], got {budget}")
    else:
        raise ValueError(f"SitePolicy.budget must be an int or a float, got {type(budget).__name__}")



