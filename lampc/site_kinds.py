"""The site kinds, each declared once: what its producer and consumer are, how its statistics count, and what its
recompute rate counts.

    kind        producer               consumer                        statistics   a rate counts
    attention   q·kᵀ (matmul/baddbmm)  softmax, per head               per head     QK^T entries
    layer_norm  a linear layer         layer_norm / rms_norm           per site     layer_norm inputs
    logits      the lm_head (linear)   softmax over the vocabulary     per site     logits
    gelu        a linear layer         gelu / gelu_tanh / silu         per site     gelu inputs

`Policy` has one field per kind, in this order (Policy.attention, .layer_norm, .logits, .gelu; tests/
test_site_kinds.py checks it); a `Site`'s, a `Skip`'s and a `SiteTag`'s `kind` is one of these names. The driver
(lampc/passes/driver.py) also names three `SiteKind`s that are no site kind of a policy: LINEAR (the one pass that
finds the layer_norm and gelu sites, in graph order), LOWERED (the tag of a matmul lowered with no look-ahead,
sites="all") and UNFUSE (export's rewrite of fused softmax sites into their steps, each keeping its index).

Kind names are compared here only: everywhere else code asks an entry (`KINDS[kind].per_head`) or the names derived
below (`SITE_KINDS`, `LINEAR_KINDS`); tests/test_vocabulary.py checks it. Loads no torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    """One site kind.

    name:       the Policy field and the `kind` of its sites
    producer:   "matmul" (q·kᵀ of two activations) or "linear" (an activation times a weight)
    softmax:    its consumer is a softmax: the softmax look-ahead and its criteria (target, ...) apply; otherwise the
                consumer is elementwise or a norm (the linear sites' look-ahead, lampc/lookahead/components.py)
    per_head:   its statistics count per head (the tap's dim 1): a row of its selection is one query's keys in one
                head, what the visible-keys-per-row notes average
    per_layer:  one site per layer, and the mean of its sites' rates is the paper's layer mean (attention's); plots
                of this kind alone say "layer mean", of any other "site mean"
    counts:     what its recompute rate counts, in a plot's axis label
    """

    name: str
    producer: str
    softmax: bool
    per_head: bool
    per_layer: bool
    counts: str


ATTENTION, LAYER_NORM, LOGITS, GELU = "attention", "layer_norm", "logits", "gelu"
"""The kinds' names, for code that is about one kind (its pass, its matcher)."""

KINDS = {kind.name: kind for kind in (
    Kind(ATTENTION, producer="matmul", softmax=True, per_head=True, per_layer=True, counts="QK^T"),
    Kind(LAYER_NORM, producer="linear", softmax=False, per_head=False, per_layer=False, counts="layer_norm inputs"),
    Kind(LOGITS, producer="linear", softmax=True, per_head=False, per_layer=False, counts="logits"),
    Kind(GELU, producer="linear", softmax=False, per_head=False, per_layer=False, counts="gelu inputs"),
)}

SITE_KINDS = tuple(KINDS)
"""Every site kind's name, in the order of Policy's fields."""

LINEAR_KINDS = tuple(name for name, kind in KINDS.items() if kind.producer == "linear" and not kind.softmax)
"""Site kinds whose producer is a linear layer and whose consumer is no softmax: the linear sites' pass finds them."""

LINEAR, LOWERED, UNFUSE = "linear", "lowered", "unfuse"
"""The driver's SiteKind names that are no site kind of a policy (see the module docstring)."""

PASS_KINDS = (LINEAR, LOWERED, UNFUSE)
