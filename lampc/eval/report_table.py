"""Sweep rows as compact text or markdown tables, and the headline comparison (best LAMP rule vs uniform/random).

    print(format_table(rows, EVAL_COLUMNS))
    print(format_table(headline(rows), HEADLINE_COLUMNS, markdown=True))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from .sweep import LAMP_CRITERIA


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
    "kl": ("KL", _num(".2e")),
    "flip_rate": ("flip", _pct(2)),
    "top1_match": ("top-1 match", _pct(2)),
    "ppl_ref": ("ppl fp32", _num(".3f")),
    "ppl_test": ("ppl", _num(".3f")),
    "nan_rate": ("NaN", _pct(1)),
    "logit_absdiff_p99": ("|dlogit| p99", _num(".2e")),
    "kl_gain": ("KL reduction vs uniform", _times),
    "seconds": ("s", _num(".1f")),
    # headline rows
    "max_rate": ("rate cap", _pct(0)),
    "kl_uniform": ("KL uniform", _num(".2e")),
    "gain_vs_uniform": ("vs uniform", _times),
    "kl_random": ("KL random", _num(".2e")),
    "gain_vs_random": ("vs random", _times),
    "kl_oracle": ("KL oracle", _num(".2e")),
    "shuffle": ("shuffled", lambda v: "yes" if v else "no"),
}

EVAL_COLUMNS = ("format", "criterion", "tau", "count_from", "recompute_rate", "kl", "flip_rate", "top1_match",
                "ppl_test", "nan_rate", "logit_absdiff_p99", "seconds")
DEMO_COLUMNS = ("format", "criterion", "tau", "recompute_rate", "kl", "flip_rate", "kl_gain")
HEADLINE_COLUMNS = ("format", "shuffle", "max_rate", "criterion", "tau", "recompute_rate", "kl", "kl_uniform",
                    "gain_vs_uniform", "kl_random", "gain_vs_random", "kl_oracle")


def format_table(rows: Sequence[dict], columns: Sequence[str] = EVAL_COLUMNS, *, markdown: bool = False) -> str:
    """Rows as an aligned text table (or a markdown table); unknown or missing values show as '-'."""
    headers = [COLUMNS.get(c, (c, _text))[0] for c in columns]
    body = [[COLUMNS.get(c, (c, _text))[1](row.get(c)) for c in columns] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]
    numeric = [i for i, c in enumerate(columns) if c not in ("format", "criterion", "count_from", "shuffle")]

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
    uniform = {r["format"]: r["kl"] for r in rows if r["criterion"] == "uniform"}
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
    """Per format and rate cap: the best LAMP rule against uniform, and random/oracle at exactly its counts."""
    out = []
    for fmt in dict.fromkeys(r["format"] for r in rows):
        uniform = next((r for r in rows if r["format"] == fmt and r["criterion"] == "uniform"), None)
        for cap in max_rates:
            best = best_lamp(rows, fmt, cap)
            if best is None:
                continue
            random, oracle = matching(rows, best, "random"), matching(rows, best, "oracle")
            kl_u = uniform["kl"] if uniform else None
            kl_r = random["kl"] if random else None
            out.append({"format": fmt, "shuffle": best["shuffle"], "max_rate": cap, "criterion": best["criterion"],
                        "tau": best["tau"], "recompute_rate": best["recompute_rate"], "kl": best["kl"],
                        "flip_rate": best["flip_rate"], "kl_uniform": kl_u, "gain_vs_uniform": _ratio(kl_u, best["kl"]),
                        "kl_random": kl_r, "gain_vs_random": _ratio(kl_r, best["kl"]),
                        "kl_oracle": oracle["kl"] if oracle else None,
                        "flip_uniform": uniform["flip_rate"] if uniform else None,
                        "flip_random": random["flip_rate"] if random else None})
    return out


def _ratio(num, den):
    if _missing(num) or _missing(den):
        return None
    if den == 0:
        return math.inf if num > 0 else None
    return num / den


def _missing(v) -> bool:
    return v is None or v == "" or (isinstance(v, float) and math.isnan(v))
