"""Graph passes: SDPA expansion, site finding and the LAMP rewrites.

`run_passes(gm, policy)` applies, in order: `expand_sdpa` (SDPA -> math form), then one rewrite per enabled
site kind, then (sites="all") the lowering of every other matmul. Each pass returns a `PassResult` (graph, modified, sites, skips); the results are merged.
"""

from __future__ import annotations

from torch import fx

from ..policy import Policy
from .attention import find_attention, match_attention, rewrite_attention
from .expand_sdpa import expand_sdpa
from .linear_sites import find_linear_sites, rewrite_linear_sites
from .logits import rewrite_logits
from .lower_all import lower_all_matmuls
from .result import PassResult, Site, Skip


def run_passes(gm: fx.GraphModule, policy: Policy) -> PassResult:
    """All of lampc's passes over a captured graph, under `policy`, in graph order of site kinds:
    SDPA expansion, attention, layer_norm and activation sites, logits, then (sites="all") every other matmul."""
    result = expand_sdpa(gm)
    if policy.attention is not None:
        result = result.merge(rewrite_attention(gm, policy.attention, first_index=len(result.sites)))
    linear = {kind: getattr(policy, kind) for kind in ("layer_norm", "gelu") if getattr(policy, kind) is not None}
    if linear:
        result = result.merge(rewrite_linear_sites(gm, linear, first_index=len(result.sites)))
    if policy.logits is not None:
        result = result.merge(rewrite_logits(gm, policy.logits, index=len(result.sites)))
    if policy.sites == "all":
        result = result.merge(lower_all_matmuls(gm, policy.unguarded()))
    return result


__all__ = ["PassResult", "Site", "Skip", "expand_sdpa", "find_attention", "match_attention", "rewrite_attention",
           "run_passes", "find_linear_sites", "rewrite_linear_sites", "rewrite_logits", "lower_all_matmuls"]
