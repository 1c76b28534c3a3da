"""SelectionTap: the graph's window onto each site's selection, for recompute-rate statistics.

A rewritten graph calls `lampc_tap_<site>(selected, mask)` after each look-ahead. The tap adds the number of
selected and of visible entries per head to running totals (visible entries only: the recompute rate of causal
attention is over the causally visible scores). It returns nothing and changes no value; it is skipped while the
graph is being traced (export, torch.compile) and can be switched off for timing.

Threads may run one compiled model at once (and one may reset its statistics while another runs it): every tap
updates and resets its totals under one lock, so no count is lost or added to a total being reset.
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor, nn

from ..lookahead.softmax import visible_from_mask
from ..numerics.tracing import is_fake


_TOTALS = threading.Lock()  # module-level, not per tap: a tap is pickled with its graph, a lock cannot be


class SelectionTap(nn.Module):
    def __init__(self, site: int, is_causal: bool = False, per_head: bool = True):
        super().__init__()
        self.site = site
        self.is_causal = is_causal
        self.per_head = per_head  # attention: counts per head (dim 1); other sites: one total
        self.enabled = True
        self.keep_last = False
        self.last_selection: Tensor | None = None
        self.reset()

    def reset(self) -> None:
        with _TOTALS:
            self.selected = None  # int64 per head, accumulated over calls
            self.visible = None
            self.calls = 0

    def forward(self, selected: Tensor, mask: Tensor | None) -> None:
        if not self.enabled or torch.compiler.is_compiling() or is_fake(selected):
            return None
        visible = visible_from_mask(mask, selected.shape, self.is_causal, selected.device)
        if self.per_head and selected.dim() >= 3:
            dims = [d for d in range(selected.dim()) if d != 1]
            per_head_selected = (selected & visible).sum(dim=dims).cpu()
            per_head_visible = visible.sum(dim=dims).cpu()
        else:
            per_head_selected = (selected & visible).sum().reshape(1).cpu()
            per_head_visible = torch.tensor([visible.numel()])
        with _TOTALS:
            if self.selected is None or self.selected.shape != per_head_selected.shape:
                self.selected = torch.zeros_like(per_head_selected)
                self.visible = torch.zeros_like(per_head_visible)
            self.selected += per_head_selected
            self.visible += per_head_visible
            self.calls += 1
        if self.keep_last:
            self.last_selection = selected.detach().clone()
        return None


def graph_taps(gm) -> dict[int, SelectionTap]:
    """The statistics taps of a rewritten graph, by site index."""
    return {m.site: m for m in gm.children() if isinstance(m, SelectionTap)}
