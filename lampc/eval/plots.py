"""The sweep's two figures, built as matplotlib `Figure`s (no pyplot state) that tests read back and files save.

    fig = kl_vs_rate_figure(rows)     # one panel per format: KL against recompute rate, per rule
    fig = kl_vs_m_figure(rows)        # uniform KL against mantissa bits, with each rule's best at rate <= 5%
    plot_kl_vs_rate(rows, "kl_vs_rate.png"); plot_kl_vs_m(rows, "kl_vs_m.png")

What a paper needs from them: every cell is a point (the --policy cell too); a point at 0 (no entry recomputed,
or KL 0 at FP32) stays visible on a symmetric-log axis whose linear part around 0 is said in a note; error bars
are the rows' 95% intervals (kl_lo/kl_hi, recompute_rate_lo/_hi), uniform's as a shaded band; each point is labelled
with its tau; the x label names the site kinds the rates are over; mantissa ticks are whole bits. Flush baselines
(lampc eval --flush-every) recompute nothing: they are drawn at their FP32 work (lampc.eval.fp32_work; a rule's is
its rate), labelled n=..., one dotted series per format, and in kl_vs_m one series per n.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, SymmetricalLogLocator

from ..criteria import COUNT_SOURCES, CRITERIA, DISPLAY_ORDER, LAMP_RULES, NO_LOOKAHEAD, SAME_COUNT_BASELINES
from ..site_kinds import KINDS
from .grid import FLUSH_CELL, POLICY_CELL, flush_label

POLICY_STYLE = ("C1", "*")
"""The --policy cell's colour and marker (per-site rules, no one criterion): after the rules, before the baselines."""


def _style(name: str) -> tuple[str, str]:
    return CRITERIA[name].display.colour, CRITERIA[name].display.marker


STYLE = {**{name: _style(name) for name in DISPLAY_ORDER if name not in SAME_COUNT_BASELINES},
         POLICY_CELL: POLICY_STYLE,
         **{name: _style(name) for name in DISPLAY_ORDER if name in SAME_COUNT_BASELINES}}
"""Colour and marker per criterion (its `display` in lampc/criteria.py); the order is the legend's."""

LINE_STYLES = {"": "-", **{name: CRITERIA[name].display.line for name in DISPLAY_ORDER if name in COUNT_SOURCES}}
"""random/oracle's line: that of the rule they count from ("": a series that counts from none)."""

KL_LABEL = "mean KL(P_fp32 || P_test)"
RATE_CAP = 0.05  # kl_vs_m: each rule's best KL at a recompute rate at most this
FLUSH_STYLE = ("0.45", "D", ":")
"""The flush baselines' colour, marker and line: grey as uniform, which they are plus FP32 additions."""
FLUSH_AXIS_NOTE = ("flush n: drawn at its FP32 work, ceil(K / (n x block_k)) / K of the accumulation; rules at "
                   "their rate")


def rate_axis_label(rows: Sequence[dict]) -> str:
    """The x label, from the site kinds of the rows (row["site_kinds"], comma-separated)."""
    kinds = list(dict.fromkeys(k for r in rows for k in str(r.get("site_kinds") or "").split(",") if k))
    if not kinds:
        return "recompute rate (% of visible entries, mean over sites)"
    what = " + ".join(KINDS[k].counts if k in KINDS else k for k in kinds)  # what a rate counts at each kind
    per_layer = all(k in KINDS and KINDS[k].per_layer for k in kinds)  # attention alone: one site per layer
    return f"recompute rate (% of visible {what} entries, {'layer' if per_layer else 'site'} mean)"


def kl_vs_rate_figure(rows: Sequence[dict]) -> Figure:
    """One panel per format: KL against recompute rate for each rule; uniform as a dashed line with its band."""
    formats = list(dict.fromkeys(r["format"] for r in rows))
    fig = Figure(figsize=(5.6 * len(formats), 4.4))
    axes = fig.subplots(1, len(formats), squeeze=False)[0]
    for ax, fmt in zip(axes, formats):
        cells = [r for r in rows if r["format"] == fmt]
        shown = [r for r in cells if _finite(r["kl"])]
        for r in shown:
            if r["criterion"] == NO_LOOKAHEAD:
                ax.axhline(r["kl"], color="0.4", ls="--", lw=1.2, label=f"uniform {fmt}")
                if _finite(r.get("kl_lo")) and _finite(r.get("kl_hi")):
                    ax.axhspan(r["kl_lo"], r["kl_hi"], color="0.4", alpha=0.12, lw=0)
        series = dict.fromkeys((r["criterion"], r.get("count_from") or "") for r in shown if r["criterion"] in STYLE)
        for crit, source in sorted(series, key=lambda k: (list(STYLE).index(k[0]), k[1])):
            members = sorted((r for r in shown if (r["criterion"], r.get("count_from") or "") == (crit, source)),
                             key=lambda r: r["recompute_rate"])
            _series(ax, members, x=lambda r: 100 * r["recompute_rate"], x_ci="recompute_rate", x_scale=100,
                    label=f"{crit} (counts of {source})" if source else crit, crit=crit,
                    ls=LINE_STYLES.get(source, "-"))
        flushes = sorted((r for r in shown if r["criterion"] == FLUSH_CELL and _finite(r.get("fp32_work"))),
                         key=lambda r: r["fp32_work"])
        _series(ax, flushes, x=lambda r: 100 * r["fp32_work"], x_ci=None, x_scale=100, label="flush (FP32 work)",
                crit=FLUSH_CELL, ls=FLUSH_STYLE[2])
        xs = [100 * r["recompute_rate"] for r in shown if r["criterion"] in STYLE]
        notes = [_zero_or_log(ax, "x", xs + [100 * r["fp32_work"] for r in flushes], percent=True),
                 _zero_or_log(ax, "y", [r["kl"] for r in shown]), _dropped_note(cells),
                 FLUSH_AXIS_NOTE if flushes else None]
        _notes_below(ax, notes)
        ax.set_xlabel(rate_axis_label(cells))
        ax.set_ylabel(KL_LABEL)
        ax.set_title(f"{fmt}: {_subtitle(cells)}", fontsize=10)
        _grid_and_legend(ax)
    fig.tight_layout()
    return fig


def kl_vs_m_figure(rows: Sequence[dict]) -> Figure:
    """Uniform KL against mantissa bits, with each rule's best KL at a recompute rate <= RATE_CAP."""
    fig = Figure(figsize=(5.6, 4.4))
    ax = fig.subplots()
    series = {NO_LOOKAHEAD: sorted((r for r in rows if r["criterion"] == NO_LOOKAHEAD and _finite(r["kl"])),
                                   key=lambda r: r["m_bits"])}
    for crit in (*(name for name in DISPLAY_ORDER if name in LAMP_RULES), POLICY_CELL):
        best: dict[int, dict] = {}
        for r in rows:
            if r["criterion"] == crit and r["recompute_rate"] <= RATE_CAP and _finite(r["kl"]):
                if r["m_bits"] not in best or r["kl"] < best[r["m_bits"]]["kl"]:
                    best[r["m_bits"]] = r
        if best:
            name = f"{crit} (per-site τ)" if crit == POLICY_CELL else f"{crit}, best at rate <= {100 * RATE_CAP:g}%"
            series[name] = [best[m] for m in sorted(best)]
    for n in dict.fromkeys(r["flush_every"] for r in rows if r["criterion"] == FLUSH_CELL):
        series[flush_label(n)] = sorted((r for r in rows if r["criterion"] == FLUSH_CELL and r["flush_every"] == n
                                         and _finite(r["kl"])), key=lambda r: r["m_bits"])
    for name, members in series.items():
        crit = members[0]["criterion"] if members else NO_LOOKAHEAD
        ls = "--" if crit == NO_LOOKAHEAD else FLUSH_STYLE[2] if crit == FLUSH_CELL else "-"
        _series(ax, members, x=lambda r: r["m_bits"], x_ci=None, x_scale=1, label=name, crit=crit, ls=ls,
                color="0.3" if crit == NO_LOOKAHEAD else None)
    _notes_below(ax, [_zero_or_log(ax, "y", [r["kl"] for members in series.values() for r in members])])
    bits = sorted({int(r["m_bits"]) for members in series.values() for r in members})
    ax.xaxis.set_major_locator(FixedLocator(bits))  # a tick at each measured format, whole bits only
    ax.xaxis.set_minor_locator(FixedLocator([]))
    ax.set_xlabel("accumulator mantissa bits m")
    ax.set_ylabel(KL_LABEL)
    ax.set_title(_subtitle(rows), fontsize=10)
    _grid_and_legend(ax)
    fig.tight_layout()
    return fig


def plot_kl_vs_rate(rows: list[dict], path: str | Path) -> None:
    kl_vs_rate_figure(rows).savefig(path, dpi=150)


def plot_kl_vs_m(rows: list[dict], path: str | Path) -> None:
    kl_vs_m_figure(rows).savefig(path, dpi=150)


def _series(ax, members: list[dict], *, x, x_ci, x_scale, label, crit, ls, color=None) -> None:
    """One rule's points with their error bars (where the rows have intervals) and a tau label on each (n=... on a
    flush baseline's)."""
    if not members:
        return
    default_color, marker = FLUSH_STYLE[:2] if crit == FLUSH_CELL else STYLE.get(crit, ("0.3", "o"))
    color = color or default_color
    xs, ys = [x(r) for r in members], [r["kl"] for r in members]
    yerr = _errors(members, "kl", 1)
    xerr = _errors(members, x_ci, x_scale) if x_ci else None
    ax.errorbar(xs, ys, yerr=yerr, xerr=xerr, color=color, marker=marker, ls=ls, lw=1.2, ms=7 if marker == "*" else 5,
                elinewidth=0.8, capsize=2, label=label)
    below = crit in SAME_COUNT_BASELINES  # a baseline sits at its rule's rate: its label goes under the point
    for r, px, py in zip(members, xs, ys):
        text = _tau_text(r)
        if text:
            ax.annotate(text, (px, py), textcoords="offset points", xytext=(4, -9 if below else 4), fontsize=7,
                        color=color)


def _errors(members: list[dict], key: str, scale: float):
    """[[below], [above]] for errorbar, or None when no row has an interval for `key`."""
    below, above, any_ci = [], [], False
    for r in members:
        v, lo, hi = r.get(key), r.get(f"{key}_lo"), r.get(f"{key}_hi")
        if _finite(lo) and _finite(hi) and _finite(v):
            below.append(max(0.0, scale * (v - lo)))
            above.append(max(0.0, scale * (hi - v)))
            any_ci = True
        else:
            below.append(0.0)
            above.append(0.0)
    return [below, above] if any_ci else None


def _tau_text(r: dict) -> str:
    if r["criterion"] == POLICY_CELL:
        return "per-site τ"
    if r["criterion"] == FLUSH_CELL:
        return f"n={r['flush_every']}"
    if r["criterion"] == NO_LOOKAHEAD or r.get("tau") is None or r.get("tau") == "":
        return ""
    return f"τ={r['tau']:g}"


def _zero_or_log(ax, axis: str, values: list[float], percent: bool = False) -> str | None:
    """A log axis; symmetric-log (linear below the smallest positive decade) when some value is 0; linear when
    every value is 0. Returns the note that says where 0 is drawn (None on a plain log axis)."""
    set_scale = ax.set_xscale if axis == "x" else ax.set_yscale
    axis_obj = ax.xaxis if axis == "x" else ax.yaxis
    positive = [v for v in values if v > 0]
    if not positive:  # every value is 0, or there is none (a grid of uniform cells has no rate to plot)
        set_scale("linear")
        return f"every {'recompute rate' if percent else 'KL'} is 0" if values else None
    note = None
    if any(v == 0 for v in values):
        floor = 10.0 ** math.floor(math.log10(min(positive)))
        set_scale("symlog", linthresh=floor, linscale=0.4)
        if percent:
            axis_obj.set_major_locator(SymmetricalLogLocator(linthresh=floor, base=10, subs=(1.0, 2.0, 5.0)))
        what = "0% recompute (no entry selected)" if percent else "KL 0"
        note = f"{what} is drawn at 0: the {axis} axis is linear below {floor:g}{'%' if percent else ''}"
    else:
        set_scale("log")
        if percent:
            lo, hi = min(positive), max(positive)
            mid = math.sqrt(lo * hi)
            ax.set_xlim(min(lo / 1.5, mid / 3.2), max(hi * 1.5, mid * 3.2))  # at least a decade
            axis_obj.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    if percent:
        axis_obj.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
        axis_obj.set_minor_formatter(NullFormatter())
    return note


def _dropped_note(cells: list[dict]) -> str | None:
    dropped = [r for r in cells if not _finite(r["kl"])]
    if not dropped:
        return None
    return "KL not finite, not drawn: " + ", ".join(" ".join(filter(None, (r["criterion"], _tau_text(r))))
                                                    for r in dropped)


def _notes_below(ax, notes: list[str | None]) -> None:
    """The notes as small lines under the x label (inside the saved figure: tight_layout makes room)."""
    for i, note in enumerate(n for n in notes if n):
        ax.annotate(note, (0.0, 0.0), xycoords="axes fraction", textcoords="offset points", xytext=(0, -34 - 10 * i),
                    fontsize=7, color="0.35", va="top")


def _grid_and_legend(ax) -> None:
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _subtitle(rows: Sequence[dict]) -> str:
    r = rows[0]
    shuffled = ", shuffled" if r.get("shuffle") else ""
    bars = ", bars: 95% CI over windows" if any(_finite(x.get("kl_lo")) for x in rows) else ""
    return f"{r['dataset']}{shuffled}, {r['n_seq']} x {r['seq_len']} tokens{bars}"
