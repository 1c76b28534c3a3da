"""Sweep rows rendered: compact text or markdown tables, the headline comparison (best LAMP rule against uniform
and random at the same counts), and the two plots (matplotlib, Agg backend).

    print(format_table(rows, EVAL_COLUMNS))
    print(format_table(headline(rows), HEADLINE_COLUMNS, markdown=True))
    plot_kl_vs_rate(rows, "kl_vs_rate.png")
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

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
    "shuffle": ("shuffled", lambda v: "yes" if v else "no"),
    # generation (lampc eval --generate)
    "gen_match_tokens": ("tokens = fp32", _num(".1f")),
    "gen_identical": ("identical", _pct(0)),
    "gen_prefill_rate": ("prefill rate", _pct(2)),
    "gen_decode_rate": ("decode rate", _pct(2)),
}

EVAL_COLUMNS = ("format", "criterion", "tau", "count_from", "recompute_rate", "kl", "flip_rate", "top1_match",
                "ppl_test", "nan_rate", "logit_absdiff_p99", "seconds")
GENERATION_COLUMNS = ("gen_match_tokens", "gen_identical", "gen_prefill_rate", "gen_decode_rate")
DEMO_COLUMNS = ("format", "criterion", "tau", "recompute_rate", "kl", "flip_rate", "kl_gain")
HEADLINE_COLUMNS = ("format", "shuffle", "max_rate", "criterion", "tau", "recompute_rate", "kl", "kl_uniform",
                    "gain_vs_uniform", "kl_random", "gain_vs_random", "random_match", "kl_oracle")


def format_table(rows: Sequence[dict], columns: Sequence[str] = EVAL_COLUMNS, *, markdown: bool = False) -> str:
    """Rows as an aligned text table (or a markdown table); unknown or missing values show as '-'."""
    headers = [COLUMNS.get(c, (c, _text))[0] for c in columns]
    body = [[COLUMNS.get(c, (c, _text))[1](row.get(c)) for c in columns] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]
    numeric = [i for i, c in enumerate(columns)
               if c not in ("format", "criterion", "count_from", "shuffle", "random_match")]

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
    """Per format and rate cap: the best LAMP rule against uniform, and against random/oracle at its counts.

    Random and oracle are matched exactly (the row that took its counts from the best rule at the same tau); when
    the sweep has no such row, random's KL is interpolated (log-log, between the random rows of the same format
    whose rates bracket the best rule's) and `random_match` says "interpolated".
    """
    out = []
    for fmt in dict.fromkeys(r["format"] for r in rows):
        uniform = next((r for r in rows if r["format"] == fmt and r["criterion"] == "uniform"), None)
        for cap in max_rates:
            best = best_lamp(rows, fmt, cap)
            if best is None:
                continue
            random, oracle = matching(rows, best, "random"), matching(rows, best, "oracle")
            kl_u = uniform["kl"] if uniform else None
            kl_r, how = (random["kl"], "same counts") if random else (_interpolate(rows, fmt, best), "interpolated")
            out.append({"format": fmt, "shuffle": best["shuffle"], "max_rate": cap, "criterion": best["criterion"],
                        "tau": best["tau"], "recompute_rate": best["recompute_rate"], "kl": best["kl"],
                        "flip_rate": best["flip_rate"], "kl_uniform": kl_u, "gain_vs_uniform": _ratio(kl_u, best["kl"]),
                        "kl_random": kl_r, "gain_vs_random": _ratio(kl_r, best["kl"]),
                        "random_match": how if kl_r is not None else None,
                        "kl_oracle": oracle["kl"] if oracle else None,
                        "flip_uniform": uniform["flip_rate"] if uniform else None,
                        "flip_random": random["flip_rate"] if random else None})
    return out


def _interpolate(rows: Sequence[dict], fmt: str, best: dict):
    """KL of random recomputation at best's rate, log-log between the bracketing random rows (None if none)."""
    pts = sorted((r["recompute_rate"], r["kl"]) for r in rows if r["format"] == fmt and r["criterion"] == "random"
                 and r["recompute_rate"] > 0 and not _missing(r["kl"]) and r["kl"] > 0)
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


# ---- plots -----------------------------------------------------------------------------------------------------

_STYLE = {"strict": ("C0", "o"), "relaxed": ("C2", "s"), "target": ("C4", "D"), "random": ("C3", "x"),
          "oracle": ("k", "^")}


def plot_kl_vs_rate(rows: list[dict], path: str | Path) -> None:
    """One panel per format: KL against recompute rate for each rule; uniform as a horizontal dashed line."""
    plt = _pyplot()
    formats = list(dict.fromkeys(r["format"] for r in rows))
    fig, axes = plt.subplots(1, len(formats), figsize=(5.2 * len(formats), 4.2), squeeze=False)
    for ax, fmt in zip(axes[0], formats):
        cells = [r for r in rows if r["format"] == fmt]
        for r in cells:
            if r["criterion"] == "uniform" and _positive(r["kl"]):
                ax.axhline(r["kl"], color="0.4", ls="--", lw=1.2, label=f"uniform {fmt}")
            elif r["criterion"] == "uniform" and r["kl"] == 0.0:
                ax.text(0.02, 0.02, "uniform: KL = 0", transform=ax.transAxes, fontsize=8, color="0.4")
        series = dict.fromkeys((r["criterion"], r["count_from"]) for r in cells if r["criterion"] in _STYLE)
        for crit, source in sorted(series, key=lambda k: (list(_STYLE).index(k[0]), k[1])):
            pts = sorted((100 * r["recompute_rate"], r["kl"]) for r in cells if (r["criterion"], r["count_from"])
                         == (crit, source) and _positive(r["kl"]) and r["recompute_rate"] > 0)
            if pts:
                color, marker = _STYLE[crit]
                ls = {"": "-", "strict": "-", "relaxed": "--", "target": ":"}[source]
                label = f"{crit} (counts of {source})" if source else crit
                ax.plot(*zip(*pts), color=color, marker=marker, ls=ls, lw=1.2, ms=5, label=label)
        ax.set_yscale("log")
        _log_percent_axis(ax, [100 * r["recompute_rate"] for r in cells if r["recompute_rate"] > 0])
        ax.set_xlabel("recompute rate (% of visible QK^T entries, layer mean)")
        ax.set_ylabel("mean KL(P_fp32 || P_test)")
        ax.set_title(f"{fmt}: {_subtitle(cells)}", fontsize=10)
        _grid_and_legend(ax)
    _save(plt, fig, path)


def plot_kl_vs_m(rows: list[dict], path: str | Path) -> None:
    """Uniform KL against mantissa bits, with each rule's best KL at a recompute rate <= 5%."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    series = {"uniform": [(r["m_bits"], r["kl"]) for r in rows if r["criterion"] == "uniform"]}
    for crit in LAMP_CRITERIA:
        best = {}
        for r in rows:
            if r["criterion"] == crit and r["recompute_rate"] <= 0.05 and _positive(r["kl"]):
                best[r["m_bits"]] = min(best.get(r["m_bits"], math.inf), r["kl"])
        if best:
            series[f"{crit}, best at rate <= 5%"] = sorted(best.items())
    for name, pts in series.items():
        pts = sorted(p for p in pts if _positive(p[1]))
        if pts:
            ax.plot(*zip(*pts), marker="o", ls="--" if name == "uniform" else "-", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("accumulator mantissa bits m")
    ax.set_ylabel("mean KL(P_fp32 || P_test)")
    ax.set_title(_subtitle(rows), fontsize=10)
    _grid_and_legend(ax)
    _save(plt, fig, path)


def _grid_and_legend(ax) -> None:
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _save(plt, fig, path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _log_percent_axis(ax, percents: list[float]) -> None:
    """Log x axis labelled in %, spanning at least one decade around the points."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_xscale("log")
    if percents:
        lo, hi = min(percents), max(percents)
        mid = math.sqrt(lo * hi)
        ax.set_xlim(min(lo / 1.5, mid / 3.2), max(hi * 1.5, mid * 3.2))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}%"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _positive(x) -> bool:
    return isinstance(x, float) and x > 0 and math.isfinite(x)


def _subtitle(rows: list[dict]) -> str:
    r = rows[0]
    shuffled = ", shuffled" if r["shuffle"] else ""
    return f"{r['dataset']}{shuffled}, {r['n_seq']} x {r['seq_len']} tokens"
