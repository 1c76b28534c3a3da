"""Recompute-rate statistics from the selection taps: per site, per head, per kind, overall."""

from __future__ import annotations


def _rate(selected: int, visible: int) -> float:
    return selected / visible if visible else 0.0


def collect_stats(sites, taps) -> dict:
    """Totals since the last reset. Denominators are visible entries only."""
    per_site, kinds = [], {}
    total_selected = total_visible = 0
    for site in sites:
        tap = taps.get(site.index)
        selected = tap.selected.tolist() if tap is not None and tap.selected is not None else []
        visible = tap.visible.tolist() if tap is not None and tap.visible is not None else []
        s, v = int(sum(selected)), int(sum(visible))
        per_site.append({
            "site": site.index, "kind": site.kind, "module": site.module, "calls": tap.calls if tap else 0,
            "selected": s, "visible": v, "rate": _rate(s, v),
            "per_head": [_rate(a, b) for a, b in zip(selected, visible)],
            **_tiles(tap),
        })
        kind = kinds.setdefault(site.kind, {"selected": 0, "visible": 0, "site_rates": []})
        kind["selected"] += s
        kind["visible"] += v
        kind["site_rates"].append(_rate(s, v))
        total_selected += s
        total_visible += v
    by_kind = {
        k: {"selected": d["selected"], "visible": d["visible"], "rate": _rate(d["selected"], d["visible"]),
            "layer_mean_rate": sum(d["site_rates"]) / len(d["site_rates"]) if d["site_rates"] else 0.0}
        for k, d in kinds.items()
    }
    overall = {"selected": total_selected, "visible": total_visible, "rate": _rate(total_selected, total_visible),
               "layer_mean_rate": sum(p["rate"] for p in per_site) / len(per_site) if per_site else 0.0}
    return {"overall": overall, "by_kind": by_kind, "sites": per_site}


def _tiles(tap) -> dict:
    """A site's tile counts where its tap has them (granularity="tile", streaming sites): tiles holding a
    recomputed entry, tiles holding a visible entry, and their ratio."""
    if tap is None or getattr(tap, "tiles_selected", None) is None:
        return {}
    selected, visible = int(tap.tiles_selected.sum()), int(tap.tiles_visible.sum())
    return {"tiles_selected": selected, "tiles_visible": visible, "tile_rate": _rate(selected, visible)}


class TapTotals:
    """The running totals of several taps of one site (the same site in several step graphs), summed."""

    def __init__(self, taps):
        taps = [t for t in taps if t.selected is not None]
        self.calls = sum(t.calls for t in taps)
        self.selected = sum((t.selected for t in taps[1:]), taps[0].selected.clone()) if taps else None
        self.visible = sum((t.visible for t in taps[1:]), taps[0].visible.clone()) if taps else None
        tiled = [t for t in taps if getattr(t, "tiles_selected", None) is not None]
        self.tiles_selected = sum(t.tiles_selected for t in tiled) if tiled else None
        self.tiles_visible = sum(t.tiles_visible for t in tiled) if tiled else None


def merge_taps(tap_maps) -> dict[int, TapTotals]:
    """{site: TapTotals} over several {site: tap} maps (one per graph of the same phase)."""
    by_site: dict[int, list] = {}
    for taps in tap_maps:
        for site, tap in taps.items():
            by_site.setdefault(site, []).append(tap)
    return {site: TapTotals(taps) for site, taps in by_site.items()}
