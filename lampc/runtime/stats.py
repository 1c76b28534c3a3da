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
