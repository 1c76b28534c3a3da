"""The selection criteria, each declared once: its threshold, what it combines with, its text, and its rule.

A criterion's rule is written once, against `RuleInputs`: the few quantities and operations every site offers.
The softmax look-ahead (lampc/lookahead/softmax.py), the linear sites' (lampc/lookahead/components.py) and the
ONNX translation (lampc/export/translations.py) each implement `RuleInputs` and run the same rule; policy
validation, the command line, the sweep and the texts users read all take their facts from `CRITERIA`.

    criterion  rule (per row; `usable` entries only: visible, finite)            tau
    uniform    none                                                              none
    strict     strict weight > tau  (2·a·(1 − a)·|ŝ| at a softmax, c_i at a linear site)   > 0
    relaxed    relaxed weight > tau · its row maximum                            (0, 1]
    target     the largest a's, as many as the paper's bound needs (softmax only)  [1, 2]
    budget     the k (or fraction f) largest strict weights                      none (takes `budget`)
    random     count_from's count per row, uniformly at random                   count_from's
    oracle     count_from's count per row, by the true first-order error          count_from's
    running_max  each row's run of `tile` keys whose low-precision maximum comes   (0, 1]
               within ln(1/tau) of the running maximum before it (LampAttention's test; with
               granularity="tile", the whole tile)

(docs/METHOD.md §3 derives them; docs/NUMERICS.md §6 gives each site's weights.)

Criterion names are compared here only: everywhere else code asks an entry (`CRITERIA[name].counted`) or the names
derived below (`NO_LOOKAHEAD`, `DEFAULT_RULE`, `SAME_COUNT_BASELINES`, `DISPLAY_ORDER`, ...); tests/test_vocabulary.py
checks it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol


class RuleInputs(Protocol):
    """What a rule reads and does, per row of a site's outputs (each implementation: a backend and a site type).

    Weights, thresholds and counts are the backend's values (torch tensors or ONNX graph values)."""

    def nothing(self) -> Any: ...  # an empty selection
    def strict_weight(self) -> Any: ...  # the strict rule's per-entry weight (sensitivity x error scale)
    def relaxed_weight(self) -> Any: ...  # the relaxed rule's weight (only a running maximum needed)
    def probabilities(self) -> Any: ...  # the consumer's softmax (softmax sites only)
    def row_tau(self, tau: float, relaxed: bool) -> Any: ...  # tau per row (length scaling)
    def row_max(self, weight) -> Any: ...
    def times(self, a, b) -> Any: ...
    def above(self, weight, threshold) -> Any: ...  # weight > threshold, usable entries only
    def top(self, score, count, k_max: int | None = None) -> Any: ...  # `count` largest per row (ties: lowest index)
    def count(self, selection) -> Any: ...  # entries per row
    def target_counts(self, a, tau: float) -> Any: ...
    def budget_counts(self, budget) -> Any: ...
    def budget_k_max(self, budget) -> int | None: ...
    def draws(self) -> Any: ...  # uniform random scores (the random baseline)
    def running_max_weight(self, tile) -> Any: ...  # exp(tile's row max − running max before it), per entry
    def true_error(self) -> Any: ...  # first-order error of each entry at the FP32 input (the oracle)


@dataclass(frozen=True)
class Tau:
    """A criterion's threshold: its range (as text and as a check) and default."""

    default: float
    low: float
    high: float | None  # None: unbounded
    low_closed: bool
    range_text: str  # e.g. "in (0, 1]", as the error message says it

    def contains(self, value: float) -> bool:
        above = value >= self.low if self.low_closed else value > self.low
        return above and (self.high is None or value <= self.high)


@dataclass(frozen=True)
class Display:
    """Where and how a criterion is shown beside the others (lampc/eval/plots.py, lampc eval's help).

    place:   its place in the figures' legends and in the lists of the sweep's default grids (lower first)
    colour, marker: its series in the figures (matplotlib's names: "C0", "o")
    line:    the line of the random and oracle series that take their counts from it
    """

    place: int
    colour: str
    marker: str
    line: str = "-"


@dataclass(frozen=True)
class Criterion:
    """One selection criterion.

    name, summary: what users type and read
    purpose:       "rule" (deployable), "baseline" (evaluation: random, oracle) or "none" (uniform)
    tau:           its threshold, or None with `no_tau` saying why (uniform, budget)
    counts_for_baselines: random and oracle may reproduce its per-row counts (count_from)
    counted:       takes its per-row counts from `count_from` (random, oracle)
    length_scaling: tau may be scaled per row by sqrt(l_ref / L)
    softmax_only:  needs the consumer's probabilities (target): refused at linear sites
    draws:         draws random numbers (no ONNX form: ORT cannot reproduce torch's stream; no compiled form)
    needs_fp32:    reads the FP32 product (oracle)
    row_statistics: the fused CPU path selects it from per-row statistics (lampc/lookahead/row_stats.py)
    cpu_kernel:    at a plain softmax site on the CPU, a C pass computes its selection from the softmax, with the
                   reference's float32 operations (lampc/kernels/cpu_select.c; lookahead/softmax.py `select`)
    takes_budget:  its count per row is the policy's `budget` (budget)
    tiled:         it tests runs of `tile` keys in key order, not entries (running_max); no ONNX form
    streams:       the streaming attention site runs it (lampc/lookahead/streaming.py): a function of each entry
                   and of row statistics that one pass over the keys computes (the others need whole rows)
    weighs_errors: reads the per-entry weights (sensitivity x error scale), so SitePolicy.error_scale applies
    rule:          (RuleInputs, site policy) -> selection
    terms:         for the threshold rules (strict, relaxed): (RuleInputs, site policy) -> (weight, threshold),
                   the rule being `weight > threshold`; what calibration records (lampc/lookahead/record.py)
    default:       the rule used where none is named (strict): SitePolicy's, count_from's, `lampc demo`'s
    sweep_taus:    the taus a sweep runs when none are given (`lampc eval`): three points of the paper's grids
                   (docs/METHOD.md §5, relaxed and target extended towards "less recompute"), chosen so that each
                   rule spans recompute rates of about 0.1-3% (strict), 1-6% (relaxed) and 1-7% (target) on the
                   embedded model and Persuasion (bench/accuracy.md); random and oracle run the grid of the rule
                   they count from
    display:       how the figures and lists show it (None: uniform, the reference every figure draws as a line)
    """

    name: str
    summary: str
    purpose: str
    rule: Callable[[RuleInputs, Any], Any]
    tau: Tau | None = None
    no_tau: str = ""
    counts_for_baselines: bool = False
    counted: bool = False
    length_scaling: bool = False
    softmax_only: bool = False
    draws: bool = False
    needs_fp32: bool = False
    row_statistics: bool = False
    cpu_kernel: bool = False
    takes_budget: bool = False
    tiled: bool = False
    streams: bool = False
    weighs_errors: bool = False
    terms: Callable[[RuleInputs, Any], tuple[Any, Any]] | None = None
    default: bool = False
    sweep_taus: tuple[float, ...] = ()
    display: Display | None = None

    @property
    def looks_ahead(self) -> bool:
        """Whether the rule reads the look-ahead's weights at all (uniform does not)."""
        return self.purpose != "none"

    @property
    def compiles(self) -> bool:
        """Whether the fused form runs the rule through torch.compile (a generator's draws stay eager)."""
        return not self.draws

    @property
    def pure(self) -> bool:
        """Whether the rule is a function of the low-precision values alone (no generator, no FP32 product)."""
        return not self.draws and not self.needs_fp32

    @property
    def onnx(self) -> bool:
        """Whether lampc.export has a translation of the rule."""
        return not self.draws and not self.tiled

    def select(self, inputs: RuleInputs, site) -> Any:
        return self.rule(inputs, site)

    def text(self, site) -> str:
        """The rule of `site` (a SitePolicy) in a few words, e.g. 'strict tau=0.1' or 'budget k=8'."""
        if not self.looks_ahead:
            return f"{self.name} (no recompute)"
        if self.takes_budget:
            return f"budget {'k' if isinstance(site.budget, int) else 'fraction'}={site.budget}"
        text = f"{self.name} tau={site.tau:g}"
        if self.counted:
            text += f" (counts of {site.count_from})"
        if site.length_scaling:
            text += f" length_scaling l_ref={site.l_ref}"
        return text


def _uniform(r: RuleInputs, site):
    return r.nothing()


def _strict_terms(r: RuleInputs, site):
    return r.strict_weight(), r.row_tau(site.tau, relaxed=False)


def _relaxed_terms(r: RuleInputs, site):
    weight = r.relaxed_weight()
    return weight, r.times(r.row_tau(site.tau, relaxed=True), r.row_max(weight))


def _strict(r: RuleInputs, site):
    return r.above(*_strict_terms(r, site))


def _relaxed(r: RuleInputs, site):
    return r.above(*_relaxed_terms(r, site))


def _target(r: RuleInputs, site):
    a = r.probabilities()
    return r.top(a, r.target_counts(a, site.tau))


def _budget(r: RuleInputs, site):
    return r.top(r.strict_weight(), r.budget_counts(site.budget), k_max=r.budget_k_max(site.budget))


def _baseline_count(r: RuleInputs, site):
    return r.count(CRITERIA[site.count_from].select(r, site))


def _random(r: RuleInputs, site):
    return r.top(r.draws(), _baseline_count(r, site))


def _oracle(r: RuleInputs, site):
    return r.top(r.true_error(), _baseline_count(r, site))


def _running_max(r: RuleInputs, site):
    return r.above(r.running_max_weight(site.tile), site.tau)


CRITERIA: dict[str, Criterion] = {c.name: c for c in (
    Criterion("uniform", "no look-ahead: only non-finite outputs are recomputed", "none", _uniform,
              no_tau="it recomputes nothing", row_statistics=True, streams=True),
    Criterion("target", "the largest probabilities, as many as the paper's bound on the relative error needs",
              "rule", _target, Tau(1.1, 1.0, 2.0, True, "in [1, 2] (2 = no recompute)"), counts_for_baselines=True,
              softmax_only=True, sweep_taus=(1.95, 1.8, 1.7), display=Display(2, "C4", "D", ":")),
    Criterion("strict", "every entry whose sensitivity times error scale exceeds tau", "rule", _strict,
              Tau(0.1, 0.0, None, False, "> 0"), counts_for_baselines=True, length_scaling=True,
              row_statistics=True, cpu_kernel=True, weighs_errors=True, terms=_strict_terms, default=True, streams=True,
              sweep_taus=(5.0, 1.0, 0.2), display=Display(0, "C0", "o", "-")),
    Criterion("relaxed", "every entry whose weight exceeds tau times the row's largest (a running maximum)", "rule",
              _relaxed, Tau(0.03, 0.0, 1.0, False, "in (0, 1]"), counts_for_baselines=True, length_scaling=True,
              weighs_errors=True, terms=_relaxed_terms, sweep_taus=(0.9, 0.5, 0.3), streams=True,
              display=Display(1, "C2", "s", "--")),
    Criterion("random", "as many per row as count_from picks, uniformly at random (evaluation)", "baseline",
              _random, Tau(0.1, 0.0, None, False, "that of count_from"), counted=True, draws=True,
              display=Display(4, "C3", "x")),
    Criterion("oracle", "as many per row as count_from picks, by the true first-order error (evaluation)",
              "baseline", _oracle, Tau(0.1, 0.0, None, False, "that of count_from"), counted=True, needs_fp32=True,
              display=Display(5, "k", "^")),
    Criterion("budget", "the k (or fraction f) entries with the largest strict weight per row", "rule", _budget,
              no_tau="it takes `budget`, a count or fraction per row", takes_budget=True, weighs_errors=True,
              display=Display(3, "C5", "v")),
    Criterion("running_max", "every tile whose low-precision maximum could move a row's running maximum (within "
              "a factor tau of it after exp; LampAttention's test, tiles only)", "rule", _running_max,
              Tau(0.1, 0.0, 1.0, False, "in (0, 1]"), softmax_only=True, tiled=True, streams=True,
              sweep_taus=(1.0, 0.1, 0.01), display=Display(6, "C6", "P")),
)}
"""Every criterion, by name. Deployable: target, strict, relaxed, budget, running_max; evaluation only: uniform,
random, oracle."""

NAMES = tuple(CRITERIA)
COUNT_SOURCES = tuple(name for name, c in CRITERIA.items() if c.counts_for_baselines)
THRESHOLD_RULES = tuple(name for name, c in CRITERIA.items() if c.tau is not None)
"""Criteria with a tau: a sweep runs them over a grid of taus."""
LAMP_RULES = tuple(name for name, c in CRITERIA.items() if c.purpose == "rule" and c.tau is not None)
"""The paper's threshold rules (target, strict, relaxed)."""
EXPORTABLE = tuple(name for name, c in CRITERIA.items() if c.onnx)
CALIBRATED = tuple(name for name, c in CRITERIA.items() if c.terms is not None)
"""Criteria `lampc calibrate` can set one threshold per site for (a weight against a threshold)."""
DEPLOYABLE = tuple(name for name, c in CRITERIA.items() if c.purpose == "rule")
"""The rules a compiled model may deploy (target, strict, relaxed, budget, running_max): the rows the comparisons
measure."""
STREAMING = tuple(name for name, c in CRITERIA.items() if c.streams)
"""The criteria a streaming attention site runs (SitePolicy.streaming)."""
SAME_COUNT_BASELINES = tuple(name for name, c in CRITERIA.items() if c.counted)
"""random, oracle: a rule's baselines at its own per-row counts, paired with it in the comparisons."""
DISPLAY_ORDER = tuple(sorted((name for name, c in CRITERIA.items() if c.display),
                             key=lambda name: CRITERIA[name].display.place))
"""The criteria the figures draw as series, in the legends' order (strict, relaxed, target, budget, random, oracle)."""


def _the(what: str, test: Callable[[Criterion], bool]) -> str:
    """The name of the one entry that passes `test` (a table that has none, or two, fails at import)."""
    names = [name for name, c in CRITERIA.items() if test(c)]
    if len(names) != 1:
        raise AssertionError(f"lampc.criteria: exactly one criterion must be {what}, got {names}")
    return names[0]


NO_LOOKAHEAD = _the("the one without a look-ahead", lambda c: not c.looks_ahead)
"""uniform: nothing recomputed; the baseline of every rule at the same format."""
DEFAULT_RULE = _the("the default", lambda c: c.default)
"""strict: the rule used where none is named."""
RANDOM_BASELINE = _the("the random baseline", lambda c: c.counted and c.draws)
"""random: a rule's counts, chosen at random (the headline's "vs random", interpolated where not measured)."""
ORACLE_BASELINE = _the("the oracle baseline", lambda c: c.counted and c.needs_fp32)
"""oracle: a rule's counts, chosen by the true error (the headline's best possible at those counts)."""


def check_tau(criterion: str, count_from: str, tau) -> float:
    """tau as a float in the range of `criterion` (of `count_from` for random and oracle); ValueError otherwise."""
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau):
        raise ValueError(f"SitePolicy.tau must be a finite number, got {tau!r}")
    tau = float(tau)
    rule = CRITERIA[count_from if CRITERIA[criterion].counted else criterion]
    if not rule.tau.contains(tau):
        raise ValueError(f"SitePolicy.tau for criterion {rule.name!r} must be {rule.tau.range_text}, got {tau}")
    return tau
