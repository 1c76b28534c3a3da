"""SelectionTap: the graph's window onto each site's selection, for recompute-rate statistics.

A rewritten graph calls `lampc_tap_<site>(selected, mask)` after each look-ahead. The tap adds the number of
selected and of visible entries per head to running totals (visible entries only: the recompute rate of causal
attention is over the causally visible scores). It returns nothing and changes no value; it is skipped while the
graph is being traced (export, torch.compile) and can be switched off for timing.

A streaming attention site (lampc.lamp_attention) has no T x L selection: its tap takes the op's per-head counts
(int64 (H, 4): selected, visible, tiles selected, tiles visible) instead. With granularity="tile" a materialised
site's tap counts tiles too (`tile`); the statistics then report tiles promoted beside entries.

Threads may run one compiled model at once (and one may reset its statistics while another runs it): every tap
updates and resets its totals under one lock, so no count is lost or added to a total being reset.
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor, nn

from ..lookahead.softmax import visible_from_mask
from ..lookahead.tiles import tile_counts
from ..numerics.tracing import is_fake


_TOTALS = threading.Lock()  # module-level, not per tap: a tap is pickled with its graph, a lock cannot be


class SelectionTap(nn.Module):
    def __init__(self, site: int, is_causal: bool = False, per_head: bool = True, tile: tuple | None = None):
        super().__init__()
        self.site = site
        self.is_causal = is_causal
        self.per_head = per_head  # attention: counts per head (dim 1); other sites: one total
        self.tile = tile  # (rows, keys): count the tiles too (granularity="tile"); None: entries only
        self.enabled = True
        self.keep_last = False
        self.last_selection: Tensor | None = None
        self.reset()

    def reset(self) -> None:
        with _TOTALS:
            self.selected = None  # int64 per head, accumulated over calls
            self.visible = None
            self.tiles_selected = None  # int64 per head, where tiles are counted (tile, or a streaming site)
            self.tiles_visible = None
            self.calls = 0

    def forward(self, selected: Tensor, mask: Tensor | None) -> None:
        if not self.enabled or torch.compiler.is_compiling() or is_fake(selected):
            return None
        if selected.dtype == torch.int64:  # a streaming site's counts
            counts = selected.cpu()
            totals = [counts[:, 0], counts[:, 1], counts[:, 2], counts[:, 3]]
        else:
            totals = self._count(selected, mask)
        with _TOTALS:
            if self.selected is None or self.selected.shape != totals[0].shape:
                self.selected = torch.zeros_like(totals[0])
                self.visible = torch.zeros_like(totals[1])
                self.tiles_selected, self.tiles_visible = (None, None) if len(totals) == 2 else (
                    torch.zeros_like(totals[2]), torch.zeros_like(totals[3]))
            self.selected += totals[0]
            self.visible += totals[1]
            if len(totals) == 4:
                self.tiles_selected += totals[2]
                self.tiles_visible += totals[3]
            self.calls += 1
        if self.keep_last and selected.dtype == torch.bool:
            self.last_selection = selected.detach().clone()
        return None

    def _count(self, selected: Tensor, mask: Tensor | None) -> list[Tensor]:
        """[selected visible, visible] per head (or one total), and the same for tiles when `tile` is set."""
        visible = visible_from_mask(mask, selected.shape, self.is_causal, selected.device)
        if not (self.per_head and selected.dim() >= 3):
            return [(selected & visible).sum().reshape(1).cpu(), torch.tensor([visible.numel()])]
        dims = [d for d in range(selected.dim()) if d != 1]
        totals = [(selected & visible).sum(dim=dims).cpu(), visible.sum(dim=dims).cpu()]
        if self.tile is not None:
            tiles_selected, tiles_visible = tile_counts(selected, visible, self.tile)
            totals += [tiles_selected.sum(dim=dims).cpu(), tiles_visible.sum(dim=dims).cpu()]
        return totals


def graph_taps(gm) -> dict[int, SelectionTap]:
    """The statistics taps of a rewritten graph, by site index."""
    return {m.site: m for m in gm.children() if isinstance(m, SelectionTap)}
