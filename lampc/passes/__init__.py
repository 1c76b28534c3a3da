"""Graph passes: SDPA expansion, then every site kind through one driver.

`run_passes(gm, policy)` applies `expand_sdpa` (SDPA -> math form), then `rewrite_sites` (lampc/passes/driver.py)
over the enabled site kinds in order: attention, the linear sites (layer_norm and activations, in graph order),
logits, then (sites="all") every other matmul, lowered with no look-ahead. It returns a `PassResult` (graph,
modified, sites, skips).
"""

from __future__ import annotations

from torch import fx

from ..capture import CAPTURE_LOCK
from ..policy import Policy
from ..site_kinds import LINEAR_KINDS
from .attention import attention_sites, find_attention, match_attention
from .driver import Emission, Emitted, SiteKind, SiteTag, rewrite_sites
from .expand_sdpa import expand_sdpa
from .linear_sites import find_linear_sites, linear_sites
from .logits import find_logits, logits_site
from .lower_all import lowered_matmuls
from .result import PassResult, Site, Skip
from .softmax_site import unfuse_sites


def site_kinds(policy: Policy) -> list[SiteKind]:
    """The site kinds `policy` enables, in the order their sites are numbered."""
    kinds = []
    if policy.attention is not None:
        kinds.append(attention_sites(policy.attention))
    linear = {kind: getattr(policy, kind) for kind in LINEAR_KINDS if getattr(policy, kind) is not None}
    if linear:
        kinds.append(linear_sites(linear))
    if policy.logits is not None:
        kinds.append(logits_site(policy.logits))
    if policy.sites == "all":
        kinds.append(lowered_matmuls(policy.unguarded()))
    return kinds


def run_passes(gm: fx.GraphModule, policy: Policy) -> PassResult:
    """All of lampc's passes over a captured graph, under `policy`. They infer shapes with fake tensors, which
    torch's process-wide symbolic tracing state would mix up with a capture in another thread: they take turns."""
    with CAPTURE_LOCK:
        result = expand_sdpa(gm)
        return result.merge(rewrite_sites(gm, site_kinds(policy), first_index=len(result.sites),
                                          per_site=policy.per_site))


__all__ = ["Emission", "Emitted", "PassResult", "Site", "SiteKind", "SiteTag", "Skip", "attention_sites",
           "expand_sdpa", "find_attention", "find_linear_sites", "find_logits", "linear_sites", "logits_site",
           "lowered_matmuls", "match_attention", "rewrite_sites", "run_passes", "site_kinds", "unfuse_sites"]
