"""Graph passes: SDPA expansion, site finding and the LAMP rewrites.

`run_passes(gm, policy)` applies, in order: `expand_sdpa` (SDPA -> math form), then one rewrite per enabled
site kind. Each pass returns a `PassResult` (graph, modified, sites, skips); the results are merged.
"""

from __future__ import annotations

from torch import fx

from ..policy import Policy
from .attention import find_attention, match_attention, rewrite_attention
from .expand_sdpa import expand_sdpa
from .result import PassResult, Site, Skip


def run_passes(gm: fx.GraphModule, policy: Policy) -> PassResult:
    """All of lampc's passes over a captured graph, under `policy`."""
    result = expand_sdpa(gm)
    if policy.attention is not None:
        result = result.merge(rewrite_attention(gm, policy.attention, first_index=len(result.sites)))
    return result


__all__ = ["PassResult", "Site", "Skip", "expand_sdpa", "find_attention", "match_attention", "rewrite_attention",
           "run_passes"]
