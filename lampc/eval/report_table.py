"""Sweep rows rendered: compact text or markdown tables with 95% intervals, the headline comparison (best LAMP
rule against uniform and random at the same counts) and the paired comparisons of every LAMP row with its
baselines (lampc.eval.uncertainty). The plots are in lampc.eval.plots (not imported here: no matplotlib).

    print(format_table(rows, EVAL_COLUMNS))                 # KL "4.4e-2 [3.9e-2, 5.1e-2]", rate, flips with n
    print(format_table(headline(rows), HEADLINE_COLUMNS, markdown=True))
    print(format_table(comparisons(rows), COMPARISON_COLUMNS))   # "within noise" where the paired CI holds 1
    eval_columns(rows)        # EVAL_COLUMNS, with "FP32 work" beside the rate when the sweep has flush baselines

Flush rows (criterion "flush", lampc eval --flush-every) are baselines: named "flush n=4" in the criterion column,
measured on the FP32-work axis (lampc.eval.fp32_work), and in the headline the best of them within the same cap.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

from ..criteria import DEPLOYABLE, NO_LOOKAHEAD, ORACLE_BASELINE, RANDOM_BASELINE, SAME_COUNT_BASELINES
from .grid import FLUSH_CELL, LAMP_CRITERIA, POLICY_CELL, flush_label
from .uncertainty import compare_cells


def _num(spec: str) -> Callable:
    return lambda v: "-" if _missing(v) else format(v, spec)


def _pct(digits: int) -> Callable:
    return lambda v: "-" if _missing(v) else f"{100 * v:.{digits}f}%"


def _times(v) -> str:
    if _missing(v):
        return "-"
    return "inf" if math.isinf(v) else f"{v:.3g}x"


def _text(v) -> str:
    return "-" if v is None or v == "" else str(v)


def _tau(v) -> str:
    return "-" if _missing(v) else f"{v:g}"


COLUMNS: dict[str, tuple[str, Callable]] = {
    "format": ("format", _text),
    "criterion": ("criterion", _text),
    "tau": ("tau", _tau),
    "count_from": ("counts of", _text),
    "recompute_rate": ("rate", _pct(2)),
    "fp32_work": ("FP32 work", _pct(2)),
    "kl": ("KL", _num(".2e")),
    "flip_rate": ("flip", _pct(2)),
    "top1_match": ("top-1 match", _pct(2)),
    "ppl_ref": ("ppl fp32", _num(".3f")),
    "ppl_test": ("ppl", _num(".3f")),
    "nan_rate": ("NaN", _pct(1)),
    "logit_absdiff_p99": ("dlogit p99", _num(".2e")),
    "kl_gain": ("KL reduction vs uniform", _times),
    "seconds": ("s", _num(".1f")),
    # headline rows
    "max_rate": ("rate cap", _pct(0)),
    "kl_uniform": ("KL uniform", _num(".2e")),
    "gain_vs_uniform": ("vs uniform", _times),
    "kl_random": ("KL random", _num(".2e")),
    "gain_vs_random": ("vs random", _times),
    "random_match": ("random at", _text),
    "kl_oracle": ("KL oracle", _num(".2e")),
    "kl_flush": ("KL flush", _num(".2e")),
    "flush_match": ("flush at", _text),
    "shuffle": ("shuffled", lambda v: "yes" if v else "no"),
    # generation (lampc eval --generate)
    "gen_match_tokens": ("tokens = fp32", _num(".1f")),
    "gen_identical": ("identical", _pct(0)),
    "gen_prefill_rate": ("prefill rate", _pct(2)),
    "gen_decode_rate": ("decode rate", _pct(2)),
    # comparisons
    "baseline": ("baseline", _text),
    "kl_verdict": ("KL", _text),
    "flip_verdict": ("flips", _text),
}



def sci(v) -> str:
    """Two significant digits, a short exponent: 0.0443 -> '4.4e-2'."""
    if _missing(v):
        return "-"
    if v == 0 or math.isinf(v):
        return "0" if v == 0 else ("inf" if v > 0 else "-inf")
    return re.sub(r"e([+-])0*(\d)", lambda m: "e" + ("-" if m.group(1) == "-" else "") + m.group(2), f"{v:.1e}")


def with_ci(row: dict, key: str, show: Callable, bound: Callable | None = None, unit: str = "") -> str:
    """'value [lo, hi]' from row[key], row[key_lo], row[key_hi]; the value alone where there is no interval."""
    value, lo, hi = row.get(key), row.get(f"{key}_lo"), row.get(f"{key}_hi")
    if _missing(value):
        return "-"
    if _missing(lo) or _missing(hi):
        return show(value) + unit
    bound = bound or show
    return f"{show(value)}{unit} [{bound(lo)}, {bound(hi)}]"


def _pct_value(v) -> str:
    return f"{100 * v:.2f}"


def _flips(row: dict) -> str:
    n, positions = row.get("n_flips"), row.get("n_compared")
    return "-" if _missing(n) or _missing(positions) else f"{n}/{positions}"


def criterion_text(row: dict) -> str:
    """A row's criterion as tables show it; a flush baseline as 'flush n=4'."""
    if row.get("criterion") == FLUSH_CELL and not _missing(row.get("flush_every")):
        return flush_label(row["flush_every"])
    return _text(row.get("criterion"))


ROW_COLUMNS: dict[str, tuple[str, Callable[[dict], str]]] = {
    "criterion": ("criterion", criterion_text),    "rate_ci": ("rate [95% CI]", lambda r: with_ci(r, "recompute_rate", _pct_value, unit="%")),
    "kl_ci": ("KL [95% CI]", lambda r: with_ci(r, "kl", sci)),
    "flip_ci": ("flip [95% CI]", lambda r: with_ci(r, "flip_rate", _pct_value, unit="%")),
    "flips": ("flips", _flips),
    "gain_vs_uniform_ci": ("vs uniform [95% CI]", lambda r: with_ci(r, "gain_vs_uniform", _times, _times_bound)),
    "gain_vs_random_ci": ("vs random [95% CI]", lambda r: with_ci(r, "gain_vs_random", _times, _times_bound)),
    "gain_vs_flush_ci": ("vs flush [95% CI]", lambda r: with_ci(r, "gain_vs_flush", _times, _times_bound)),
    "gen_match_ci": ("tokens = fp32 [95% CI]", lambda r: with_ci(r, "gen_match_tokens", _num(".1f"))),
    # comparisons
    "kl_ratio_ci": ("KL reduction [95% CI]", lambda r: with_ci(r, "kl_ratio", _times, _times_bound)),
    "flips_pair": ("flips rule vs base", lambda r: f"{r['flips_test']} vs {r['flips_base']}"),
    "flip_p": ("McNemar p", lambda r: f"{r['flip_p']:.2g}"),
}
"""Columns rendered from the whole row (a value with its interval, counts with their n)."""


def _times_bound(v) -> str:
    """A ratio's interval end, three significant digits kept (3.20, not 3.2)."""
    return "-" if _missing(v) else ("inf" if math.isinf(v) else f"{v:#.3g}".rstrip("."))


EVAL_COLUMNS = ("format", "criterion", "tau", "count_from", "rate_ci", "kl_ci", "flip_ci", "flips", "ppl_test",
                "nan_rate", "logit_absdiff_p99", "seconds")
GENERATION_COLUMNS = ("gen_match_ci", "gen_identical", "gen_prefill_rate", "gen_decode_rate")
DEMO_COLUMNS = ("format", "criterion", "tau", "rate_ci", "kl_ci", "flip_ci", "kl_gain")
HEADLINE_COLUMNS = ("format", "shuffle", "max_rate", "criterion", "tau", "recompute_rate", "kl", "kl_uniform",
                    "gain_vs_uniform_ci", "kl_random", "gain_vs_random_ci", "random_match", "kl_oracle")
FLUSH_HEADLINE_COLUMNS = ("kl_flush", "flush_match", "gain_vs_flush_ci")
"""The headline's flush baseline (sweeps with flush rows): the best flush within the cap's FP32 work."""
COMPARISON_COLUMNS = ("format", "criterion", "tau", "baseline", "kl_ratio_ci", "kl_verdict", "flips_pair", "flip_p",
                      "flip_verdict")
TEXT_COLUMNS = ("format", "criterion", "count_from", "shuffle", "random_match", "flush_match", "baseline",
                "kl_verdict", "flip_verdict")


def has_flush(rows: Sequence[dict]) -> bool:
    return any(r.get("criterion") == FLUSH_CELL for r in rows)


def eval_columns(rows: Sequence[dict], columns: Sequence[str] = EVAL_COLUMNS) -> tuple[str, ...]:
    """`columns`, with "FP32 work" after the rate when some row flushes (a flush baseline, or a policy file's
    flush_every); without flushes FP32 work is the rate."""
    columns = tuple(columns)
    if all(_missing(r.get("flush_every")) for r in rows) or "fp32_work" in columns:
        return columns
    at = columns.index("rate_ci") + 1 if "rate_ci" in columns else len(columns)
    return (*columns[:at], "fp32_work", *columns[at:])


def headline_columns(rows: Sequence[dict]) -> tuple[str, ...]:
    """HEADLINE_COLUMNS, and the flush baseline's when the sweep has flush rows."""
    return HEADLINE_COLUMNS + (FLUSH_HEADLINE_COLUMNS if has_flush(rows) else ())


def interval_line(rows: Sequence[dict]) -> str:
    """One line above the table: n windows x tokens, and how the intervals were computed."""
    from .uncertainty import RESAMPLES, SEED

    r = rows[0]
    n = r.get("n_windows") or r.get("n_seq")
    head = f"n = {n} windows x {r.get('seq_len')} tokens ({r.get('n_positions')} positions) per cell"
    if not n or n < 2:
        return head + "; one window: no intervals"
    return (f"{head};\n[95% CI]: percentile bootstrap over the {n} windows ({RESAMPLES} resamples, seed {SEED})"
            + ("; few windows give rough intervals" if n < 8 else ""))


def format_table(rows: Sequence[dict], columns: Sequence[str] = EVAL_COLUMNS, *, markdown: bool = False) -> str:
    """Rows as an aligned text table (or a markdown table); unknown or missing values show as '-'."""
    headers = [(ROW_COLUMNS.get(c) or COLUMNS.get(c, (c, _text)))[0] for c in columns]
    body = [[ROW_COLUMNS[c][1](row) if c in ROW_COLUMNS else COLUMNS.get(c, (c, _text))[1](row.get(c))
             for c in columns] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]
    numeric = [i for i, c in enumerate(columns) if c not in TEXT_COLUMNS]

    def line(cells):
        padded = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return ("| " + " | ".join(padded) + " |") if markdown else "  ".join(padded).rstrip()

    if markdown:
        rule = "|" + "|".join(("-" * (w + 1) + ":") if i in numeric else ("-" * (w + 2))
                              for i, w in enumerate(widths)) + "|"
    else:
        rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in body)])


def with_kl_gain(rows: Sequence[dict]) -> list[dict]:
    """Copies of the rows with `kl_gain` = KL of uniform at the same format / the row's KL."""
    uniform = {r["format"]: r["kl"] for r in rows if r["criterion"] == NO_LOOKAHEAD}
    return [{**r, "kl_gain": _ratio(uniform.get(r["format"]), r["kl"])} for r in rows]


def best_lamp(rows: Sequence[dict], fmt: str, max_rate: float, criteria: Sequence[str] = LAMP_CRITERIA):
    """The deployable-rule row of format `fmt` with the lowest KL at a recompute rate <= max_rate (or None)."""
    candidates = [r for r in rows if r["format"] == fmt and r["criterion"] in criteria
                  and r["recompute_rate"] <= max_rate and not _missing(r["kl"])]
    return min(candidates, key=lambda r: (r["kl"], r["recompute_rate"]), default=None)


def matching(rows: Sequence[dict], best: dict, criterion: str):
    """The random/oracle row that took its counts from `best` (same format, rule and tau), or None."""
    for r in rows:
        if (r["format"], r["criterion"], r.get("count_from"), r["tau"]) == (
                best["format"], criterion, best["criterion"], best["tau"]):
            return r
    return None


def headline(rows: Sequence[dict], max_rates: Sequence[float] = (0.05, 0.10)) -> list[dict]:
    """Per format and rate cap: the best LAMP rule against uniform, and against random/oracle at its counts.

    Random and oracle are matched exactly (the row that took its counts from the best rule at the same tau); when
    the sweep has no such row, random's KL is interpolated (log-log, between the random rows of the same format
    whose rates bracket the best rule's) and `random_match` says "interpolated". With flush rows, `kl_flush` is
    the lowest KL of a flush row of that format whose FP32 work is within the cap (`flush_match` names it), and
    `gain_vs_flush` KL(flush) / KL(best) with its paired interval.
    """
    out = []
    for fmt in dict.fromkeys(r["format"] for r in rows):
        uniform = next((r for r in rows if r["format"] == fmt and r["criterion"] == NO_LOOKAHEAD), None)
        for cap in max_rates:
            best = best_lamp(rows, fmt, cap)
            if best is None:
                continue
            random, oracle = matching(rows, best, RANDOM_BASELINE), matching(rows, best, ORACLE_BASELINE)
            kl_u = uniform["kl"] if uniform else None
            kl_r, how = (random["kl"], "same counts") if random else (_interpolate(rows, fmt, best), "interpolated")
            out.append({"format": fmt, "shuffle": best["shuffle"], "max_rate": cap, "criterion": best["criterion"],
                        "tau": best["tau"], "recompute_rate": best["recompute_rate"], "kl": best["kl"],
                        "flip_rate": best["flip_rate"], "kl_uniform": kl_u, "gain_vs_uniform": _ratio(kl_u, best["kl"]),
                        "kl_random": kl_r, "gain_vs_random": _ratio(kl_r, best["kl"]),
                        "random_match": how if kl_r is not None else None,
                        "kl_oracle": oracle["kl"] if oracle else None,
                        "flip_uniform": uniform["flip_rate"] if uniform else None,
                        "flip_random": random["flip_rate"] if random else None,
                        **_gain_interval("gain_vs_uniform", best, uniform),
                        **_gain_interval("gain_vs_random", best, random),
                        **_flush_columns(rows, fmt, cap, best)})
    return out


def best_flush(rows: Sequence[dict], fmt: str, max_work: float):
    """The flush row of format `fmt` with the lowest KL at an FP32 work <= max_work (or None)."""
    candidates = [r for r in rows if r["format"] == fmt and r["criterion"] == FLUSH_CELL
                  and not _missing(r.get("fp32_work")) and r["fp32_work"] <= max_work and not _missing(r["kl"])]
    return min(candidates, key=lambda r: (r["kl"], r["fp32_work"]), default=None)


def _flush_columns(rows: Sequence[dict], fmt: str, cap: float, best: dict) -> dict:
    """The headline's flush baseline: none without flush rows; "none within the cap" when all spend more."""
    if not has_flush([r for r in rows if r["format"] == fmt]):
        return {}
    flush = best_flush(rows, fmt, cap)
    if flush is None:
        return {"flush_match": "none within cap"}
    return {"kl_flush": flush["kl"], "gain_vs_flush": _ratio(flush["kl"], best["kl"]),
            "flush_match": f"n={flush['flush_every']} ({100 * flush['fp32_work']:.3g}%)",
            **_gain_interval("gain_vs_flush", best, flush)}


def _gain_interval(name: str, best: dict, base: dict | None) -> dict:
    """name_lo, name_hi: the paired interval of KL(base) / KL(best) on the same windows (none without them)."""
    if base is None or "windows" not in best or "windows" not in base:
        return {}
    c = compare_cells(best, base)
    return {f"{name}_lo": c["kl_ratio_lo"], f"{name}_hi": c["kl_ratio_hi"]}


def baselines(rows: Sequence[dict], row: dict) -> list[tuple[str, dict]]:
    """The baselines of a LAMP row measured in the same sweep: uniform at its format, and random (then oracle)
    with its counts at the same tau."""
    out = []
    uniform = next((r for r in rows if r["format"] == row["format"] and r["criterion"] == NO_LOOKAHEAD), None)
    if uniform is not None:
        out.append((NO_LOOKAHEAD, uniform))
    if row["criterion"] in LAMP_CRITERIA:
        for criterion in SAME_COUNT_BASELINES:
            match = matching(rows, row, criterion)
            if match is not None:
                out.append((f"{criterion} (same counts)", match))
    return out


def comparisons(rows: Sequence[dict]) -> list[dict]:
    """Every LAMP row (a look-ahead rule, budget, or the --policy cell) against its baselines on the same windows:
    the KL reduction KL(baseline) / KL(rule) with its paired 95% interval, McNemar's test on the flips, and a
    verdict: 'within noise' when the interval holds 1 (no change), or p >= 0.05 for flips."""
    out = []
    for row in rows:
        if row["criterion"] not in (*DEPLOYABLE, POLICY_CELL) or "windows" not in row:
            continue
        for name, base in baselines(rows, row):
            if "windows" not in base or len(base["windows"]["kl"]) != len(row["windows"]["kl"]):
                continue
            c = compare_cells(row, base)
            out.append({"format": row["format"], "criterion": row["criterion"], "tau": row["tau"], "baseline": name,
                        **c, "kl_verdict": _kl_verdict(c), "flip_verdict": _flip_verdict(c)})
    return out


def _kl_verdict(c: dict) -> str:
    if c["kl_at_rounding"]:
        return "within FP32 rounding"
    if _missing(c["kl_ratio_lo"]):
        return "no interval"
    if c["kl_within_noise"]:
        return "within noise"
    return "lower KL" if c["kl_ratio_lo"] > 1 else "higher KL"


def _flip_verdict(c: dict) -> str:
    if c["flip_within_noise"]:
        return "within noise"
    return "fewer flips" if c["only_test"] < c["only_base"] else "more flips"


def _interpolate(rows: Sequence[dict], fmt: str, best: dict):
    """KL of random recomputation at best's rate, log-log between the bracketing random rows (None if none)."""
    pts = sorted((r["recompute_rate"], r["kl"]) for r in rows if r["format"] == fmt
                 and r["criterion"] == RANDOM_BASELINE and r["recompute_rate"] > 0 and not _missing(r["kl"])
                 and r["kl"] > 0)
    return loglog_interpolate(pts, best["recompute_rate"])


def loglog_interpolate(points: Sequence[tuple[float, float]], x: float) -> float | None:
    """y at x, linear in log-log between the sorted points (x_i, y_i > 0) that bracket x; None outside them."""
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1 and x0 < x1:
            w = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return math.exp((1 - w) * math.log(y0) + w * math.log(y1))
    return None


def _ratio(num, den):
    if _missing(num) or _missing(den):
        return None
    if den == 0:
        return math.inf if num > 0 else None
    return num / den


def _missing(v) -> bool:
    return v is None or v == "" or (isinstance(v, float) and math.isnan(v))
