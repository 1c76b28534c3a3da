"""Recompute rates per window: what each sequence of a batch had recomputed, read from the statistics taps.

`compiled.stats()` sums the taps over every call and every sequence of a batch. For intervals over windows
(lampc.eval.uncertainty) the sweep needs each window's own rate, so `WindowRates` listens to the same taps (a forward
hook on each SelectionTap, the tap itself unchanged) and splits each call's selection by its leading (batch) dim:

    with WindowRates(compiled) as rates:
        for batch in batches:
            compiled(batch)
    rates.per_window()        # [layer-mean rate of window 0, of window 1, ...] (None if a site is not per window)
    rates.keys_per_row()      # mean visible keys per attention row (None without attention sites)

A window's rate is the tap's: selected & visible entries over visible entries at each site, averaged over sites
(a site without a tap counts as 0, as in `compiled.stats()`), so with windows of one length the mean of the
per-window rates is the sweep's `recompute_rate`.
"""

from __future__ import annotations

import torch

from ..lookahead.softmax import visible_from_mask
from ..ops.tap import is_fake
from ..site_kinds import KINDS


class WindowRates:
    """Per-window selected / visible counts of every site of a compiled model's full-sequence graph."""

    def __init__(self, compiled):
        self.sites = list(compiled.sites)
        self.taps = compiled.taps
        self.counts: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {s.index: [] for s in self.sites}
        self.attention_rows = 0  # query rows (batch x heads x queries) seen at attention sites
        self.attention_keys = 0  # their visible keys
        self.split_ok = True  # False once a call's selection could not be split by window
        self._per_head = {s.index: KINDS[s.kind].per_head for s in self.sites}  # rows of one query's keys
        self._handles = []

    def __enter__(self) -> "WindowRates":
        for index, tap in self.taps.items():
            self._handles.append(tap.register_forward_hook(self._hook(index), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, index: int):
        def record(tap, args, kwargs, _output):
            selected = args[0] if args else kwargs["selected"]
            mask = args[1] if len(args) > 1 else kwargs.get("mask")
            if not tap.enabled or torch.compiler.is_compiling() or is_fake(selected):  # as the tap skips
                return
            self._record(index, tap, selected, mask)

        return record

    @torch.no_grad()
    def _record(self, index: int, tap, selected: torch.Tensor, mask) -> None:
        visible = visible_from_mask(mask, selected.shape, tap.is_causal, selected.device)  # as the tap counts
        if selected.dim() == 0:
            self.split_ok = False
            return
        b = selected.shape[0]  # the batch: one row per window (B·H for a (B·H, T, L) layout, batch-major)
        chosen = (selected & visible).reshape(b, -1).sum(dim=1).cpu()
        if tap.per_head and selected.dim() >= 3:
            seen = visible.reshape(b, -1).sum(dim=1).cpu()
        else:  # the tap counts every entry of a non-per-head site
            seen = torch.full((b,), selected[0].numel(), dtype=torch.long)
        self.counts[index].append((chosen, seen))
        if self._per_head[index]:
            self.attention_rows += selected.numel() // max(selected.shape[-1], 1)
            self.attention_keys += int(seen.sum())

    def per_window(self, n_windows: int) -> list[float] | None:
        """The layer-mean recompute rate of each window, or None when a site's calls do not split into
        `n_windows` windows (a selection whose leading dim is not the batch)."""
        if not self.split_ok:
            return None
        site_rates = []
        for site in self.sites:
            calls = self.counts[site.index]
            if not calls:
                site_rates.append(torch.zeros(n_windows, dtype=torch.float64))
                continue
            chosen = torch.cat([c for c, _ in calls]).double()
            seen = torch.cat([v for _, v in calls]).double()
            if chosen.numel() != n_windows:
                return None
            site_rates.append(torch.where(seen > 0, chosen / seen.clamp(min=1), torch.zeros_like(seen)))
        if not site_rates:
            return [0.0] * n_windows
        return torch.stack(site_rates).mean(dim=0).tolist()

    def keys_per_row(self) -> float | None:
        """Mean number of visible keys per attention row (query position and head), None without attention."""
        return self.attention_keys / self.attention_rows if self.attention_rows else None
