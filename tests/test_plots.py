"""lampc.eval.plots, read back from the matplotlib Figure: which points are drawn, the labels, ticks, error bars and
tau annotations (hand-made rows, no model: the figure is what a paper would get from results.json)."""

import math

import matplotlib
import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer

from lampc.eval.plots import kl_vs_m_figure, kl_vs_rate_figure, plot_kl_vs_m, plot_kl_vs_rate, rate_axis_label

INFO = {"dataset": "persuasion", "shuffle": False, "n_seq": 8, "seq_len": 64, "site_kinds": "attention"}


def row(fmt, criterion, tau, rate, kl, *, m_bits=4, count_from="", ci=0.2, **extra):
    out = {**INFO, "format": fmt, "m_bits": m_bits, "criterion": criterion, "tau": tau, "count_from": count_from,
           "recompute_rate": rate, "kl": kl, "flip_rate": 0.0}
    if ci is not None:
        out.update(kl_lo=kl * (1 - ci), kl_hi=kl * (1 + ci), recompute_rate_lo=rate * (1 - ci),
                   recompute_rate_hi=rate * (1 + ci))
    return {**out, **extra}


def grid(fmt="m4", m_bits=4, scale=1.0):
    return [row(fmt, "uniform", None, 0.0, 1e-2 * scale, m_bits=m_bits),
            row(fmt, "strict", 5.0, 0.0, 1e-2 * scale, m_bits=m_bits),  # selects nothing: rate 0
            row(fmt, "strict", 1.0, 0.02, 3e-3 * scale, m_bits=m_bits),
            row(fmt, "strict", 0.2, 0.07, 8e-4 * scale, m_bits=m_bits),
            row(fmt, "random", 1.0, 0.02, 9e-3 * scale, m_bits=m_bits, count_from="strict"),
            row(fmt, "random", 0.2, 0.07, 7e-3 * scale, m_bits=m_bits, count_from="strict")]


def points(ax) -> set[tuple[float, float]]:
    """Every (x, y) of the axes' data lines (error bar caps and bars are not Line2D data of a series)."""
    out = set()
    for line in ax.get_lines():
        for x, y in zip(*line.get_data()):
            out.add((round(float(x), 9), round(float(y), 12)))
    return out


def test_the_policy_cell_is_a_point_with_its_label():
    rows = grid() + [row("m4", "policy", None, 0.04, 1.5e-3, rule="strict, one tau per site (12 sites)")]
    ax = kl_vs_rate_figure(rows).axes[0]
    assert (4.0, 1.5e-3) in points(ax)
    assert any("policy" in t for t in ax.get_legend_handles_labels()[1])
    assert any("per-site" in t.get_text() for t in ax.texts)


def test_zero_rate_points_are_drawn_at_zero_on_a_symlog_axis():
    ax = kl_vs_rate_figure(grid()).axes[0]
    assert ax.get_xscale() == "symlog"
    assert (0.0, 1e-2) in points(ax)  # strict at tau 5 recomputed nothing: still on the plot
    assert any("0%" in t.get_text() for t in ax.texts)  # the note says where 0 is
    positive = [r for r in grid() if r["recompute_rate"] > 0]
    ax = kl_vs_rate_figure(positive).axes[0]
    assert ax.get_xscale() == "log"  # no zero: a plain log axis


def test_a_grid_of_uniform_cells_alone_plots_its_lines():
    """`lampc eval --criterion uniform`: no rule has a rate, so the rate axis is linear and empty of points."""
    rows = [row("m4", "uniform", None, 0.0, 1e-2), row("m7", "uniform", None, 0.0, 2e-4, m_bits=7)]
    fig = kl_vs_rate_figure(rows)
    assert [ax.get_xscale() for ax in fig.axes] == ["linear", "linear"]
    assert [line.get_ydata()[0] for line in fig.axes[0].get_lines()] == [1e-2]  # the uniform line
    assert kl_vs_m_figure(rows).axes[0].get_xticks().tolist() == [4, 7]


def test_zero_kl_points_are_drawn_too():
    rows = grid(fmt="m23", m_bits=23, scale=0.0)  # FP32 everywhere: every KL is 0
    ax = kl_vs_rate_figure(rows).axes[0]
    assert (2.0, 0.0) in points(ax) and ax.get_yscale() == "linear"


@pytest.mark.parametrize("kinds, words, absent", [
    ("attention", ["QK^T"], ["logits"]),
    ("attention,logits", ["QK^T", "logits"], []),
    ("logits", ["logits"], ["QK^T"]),
    ("attention,layer_norm,logits,gelu", ["QK^T", "layer_norm", "logits", "gelu"], []),
])
def test_the_x_label_names_the_site_kinds_in_the_rows(kinds, words, absent):
    rows = [{**r, "site_kinds": kinds} for r in grid()]
    label = kl_vs_rate_figure(rows).axes[0].get_xlabel()
    assert label == rate_axis_label(rows)
    for w in words:
        assert w in label
    for w in absent:
        assert w not in label


def test_error_bars_span_the_intervals():
    ax = kl_vs_rate_figure(grid()).axes[0]
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert bars and all(c.has_yerr and c.has_xerr for c in bars)
    segments = [seg for c in bars for coll in c.lines[2] for seg in coll.get_segments()]
    # strict at tau 1: KL 3e-3 with [2.4e-3, 3.6e-3], rate 2% with [1.6%, 2.4%]
    vertical = [tuple(np.round(s[:, 1], 12)) for s in segments if s[0, 0] == s[1, 0] == pytest.approx(2.0)]
    assert (2.4e-3, 3.6e-3) in vertical
    horizontal = [tuple(np.round(s[:, 0], 9)) for s in segments if s[0, 1] == s[1, 1] == pytest.approx(3e-3)]
    assert (1.6, 2.4) in horizontal
    assert any(isinstance(p, matplotlib.patches.Rectangle) or "Polygon" in type(p).__name__ for p in ax.patches)
    rows = [row("m4", "strict", 1.0, 0.02, 3e-3, ci=None)]  # no interval (one window): no error bar
    ax = kl_vs_rate_figure(rows).axes[0]
    assert not any(c.has_yerr for c in ax.containers if isinstance(c, ErrorbarContainer))


def test_points_carry_their_tau():
    ax = kl_vs_rate_figure(grid()).axes[0]
    labels = {t.get_text() for t in ax.texts}
    assert {"τ=5", "τ=1", "τ=0.2"} <= labels


def test_kl_vs_m_has_integer_ticks_error_bars_and_taus():
    rows = grid("m4", 4) + grid("m7", 7, scale=1 / 64) + grid("m23", 23, scale=0.0)
    fig = kl_vs_m_figure(rows)
    ax = fig.axes[0]
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert (23.0, 0.0) in points(ax)  # m23's KL of 0 is drawn, not dropped by a log axis
    assert any(isinstance(c, ErrorbarContainer) and c.has_yerr for c in ax.containers)
    assert "τ=1" in {t.get_text() for t in ax.texts}  # the best strict row at a rate <= 5%: tau 1 (2%, 3e-3)
    assert ax.get_xlabel() == "accumulator mantissa bits m"


def test_the_files_are_pngs(tmp_path):
    rows = grid("m4", 4) + grid("m7", 7, scale=0.01)
    plot_kl_vs_rate(rows, tmp_path / "a.png")
    plot_kl_vs_m(rows, tmp_path / "b.png")
    for name in ("a.png", "b.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_non_finite_kl_is_left_out_and_said():
    rows = grid() + [row("m4", "strict", 0.1, 0.1, math.inf, ci=None)]
    ax = kl_vs_rate_figure(rows).axes[0]
    assert all(math.isfinite(y) for _, y in points(ax))
    assert any("not finite" in t.get_text() for t in ax.texts)
