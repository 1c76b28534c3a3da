"""One driver for every site kind: find, allocate indices, emit, tap, tag, replace, lint, recompile.

A site kind is data: a `SiteKind` with a `find` (the graph -> its matches in graph order, and the candidates it
skipped, each with its reason) and an `emit` (one match -> the nodes that replace it, inserted through an
`Emission`). `rewrite_sites` does everything else, the same way for every kind:

    for each kind, in order:                    (attention, linear sites, logits, lowered matmuls)
        matches, skips = kind.find(gm)
        for each match:
            index   = the next site index       (graph order; stats, random streams and export tags use it)
            emitted = kind.emit(Emission(gm, kind, index, like=...), match)   # every call tagged meta["lampc"]
            lampc_tap_<index>(selection, mask)  # after the selection: recompute-rate statistics
            old.replace_all_uses_with(new)      # for each replacement
            erase what the match left unused
    lint, recompile

Kinds that create no site (matmuls lowered with no look-ahead; the export-time unfusing, which keeps each site's
index) set `index_of`. Every node a rewrite inserts carries one `SiteTag` in `node.meta["lampc"]`: its site, kind
and role. docs/DESIGN.md, "Adding a site kind", walks through writing one.

An emitter may add graph values as well as calls, the way onnxscript's rewriter adds initializers; each node is
tagged like every other inserted node:

    em.add_module(name, module, args, role=...)   a call of a submodule the graph module gains (a weight's cast)
    em.buffer(name, tensor, role=...)             a get_attr of a buffer the graph module gains (a quantized weight)
    em.prepare_weight(w, "w_low")                 the op's keyword argument for the site producer's own form of the
                                                  weight operand w ({} when w is no model parameter or the producer
                                                  prepares none): ProducerImpl.prepare_weight adds it
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import fx

from ..graph_view import module_path
from ..producers import implementation
from ..ops import RandomDraws, SelectionTap
from ..config import SiteConfig, SiteTexts
from ..policy import SiteOverride, SitePolicy
from .graph import insert_call
from .result import PassResult, Site, Skip
from .weights import parameter_behind

ROLES = ("operand", "producer", "draws", "selection", "recompute", "fused", "tap", "output")
"""What an inserted node is to its site: a view or transpose of an operand, the low-precision producer, the random
baseline's draws, the look-ahead's selection, the FP32 recompute, the fused op (producer + selection + recompute),
the statistics tap, or a value computed from the recompute that replaces the original (e.g. the scores plus an
ALiBi bias)."""


@dataclass(frozen=True)
class SiteTag:
    """`node.meta["lampc"]` of every node a rewrite inserted: readers (export, show, respec, tests) take a site's
    configuration from here, typed, never from the op's text arguments."""

    site: int | None  # None: a lowered matmul, no site
    kind: str  # the site's kind: attention, layer_norm, gelu, logits; "lowered" for a lowered matmul
    role: str
    module: str = ""  # the producer's module path
    config: SiteConfig | None = None  # the site's producer, rule, execution and facts


@dataclass
class Emitted:
    """What `SiteKind.emit` inserted for one match, and what the driver does with it.

    replacements: original node -> the node that takes over its uses
    nodes:        the site's main nodes, reported in `Site.nodes` (the tap's name is appended)
    selection:    the look-ahead's selection, recorded by the tap (None: no tap, e.g. a lowered matmul)
    mask:         the additive or boolean mask the tap counts visible entries with (None: all visible)
    per_head:     the tap counts per head (dim 1) rather than one total
    tap_after:    the tap goes right after this node (default: the last of `nodes`)
    erase:        original nodes to remove once unused, in this order
    producer, consumer, rule: the `Site` record's words
    """

    replacements: dict[fx.Node, fx.Node]
    nodes: tuple[fx.Node, ...] = ()
    selection: fx.Node | None = None
    mask: Any = None
    per_head: bool = False
    tap_after: fx.Node | None = None
    erase: tuple[fx.Node | None, ...] = ()
    kind: str = ""  # the Site's kind when one SiteKind finds several (layer_norm and gelu); default: the SiteKind's
    producer: str = ""
    consumer: str = ""
    rule: str = ""


class Emission:
    """The graph edits of one site: `call` inserts at the graph's current insertion point, with the provenance of
    the match's anchor node, a fake value, and the site's tag."""

    def __init__(self, gm: fx.GraphModule, kind: str, index: int | None, like: fx.Node,
                 override: SiteOverride | None = None):
        self.gm, self.graph, self.kind, self.index, self.like = gm, gm.graph, kind, index, like
        self.module = module_path(like)
        self.override = override
        self.config: SiteConfig | None = None

    def configure(self, policy: SitePolicy, kind: str | None = None) -> SiteTexts:
        """The site's configuration from here on: the nodes inserted after this carry `policy.config` (and `kind`,
        when one SiteKind finds several) in their tags. Returns the parts' texts, for the ops' arguments."""
        self.config = policy.config
        if kind is not None:
            self.kind = kind
        return self.config.texts

    def site_policy(self, kind: str, base: SitePolicy) -> SitePolicy:
        """This site's SitePolicy: its kind's `base`, with the policy's per-site override for this index if any
        (ValueError if that override is for another kind or module: a policy calibrated on another model)."""
        override = self.override
        if override is None:
            return base
        if override.kind != kind or (override.module is not None and override.module != self.module):
            raise ValueError(
                f"Policy.per_site: site {self.index} is the {kind} site of {self.module or '(top level)'} in this "
                f"model, but its override is for the {override.kind} site of {override.module or 'any module'}; "
                "was the policy calibrated on another model, or with other site kinds?")
        return override.apply(base)

    def call(self, target, args: tuple, kwargs: dict | None = None, *, role: str, name: str | None = None) -> fx.Node:
        node = insert_call(self.graph, target, args, kwargs, like=self.like, name=name)
        self.tag(node, role)
        return node

    def add_module(self, name: str, module: torch.nn.Module, args: tuple, *, role: str) -> fx.Node:
        """Call the submodule `name` at the insertion point, registering `module` under that name first; a module
        of the same type already there is called instead (a graph value is named after what it computes: the
        sites that read one weight share its cast). Another type under that name is a ValueError."""
        existing = getattr(self.gm, name, None)
        if existing is None:
            self.gm.add_submodule(name, module)
        elif type(existing) is not type(module):
            raise ValueError(f"Emission.add_module: {name!r} is already a {type(existing).__name__} in this graph "
                             f"module, not a {type(module).__name__}")
        node = insert_call(self.graph, name, args, like=self.like, module=self.gm.get_submodule(name))
        self.tag(node, role)
        return node

    def buffer(self, name: str, tensor: torch.Tensor, *, role: str) -> fx.Node:
        """A get_attr of `tensor`, registered as the graph module's buffer `name` (saved with the graph), at the
        insertion point; the same tensor under the same name is one buffer, another tensor there a ValueError."""
        existing = getattr(self.gm, name, None)
        if existing is None:
            self.gm.register_buffer(name, tensor)
        elif existing is not tensor:
            raise ValueError(f"Emission.buffer: {name!r} is already another value of this graph module")
        node = self.graph.get_attr(name)
        fake_mode = next((v.fake_mode for v in (n.meta.get("val") for n in self.graph.nodes)
                          if hasattr(v, "fake_mode")), None)
        if fake_mode is not None:
            node.meta["val"] = fake_mode.from_tensor(tensor)
        self.tag(node, role)
        return node

    def prepare_weight(self, w, argument: str) -> dict:
        """{argument: the node of the site producer's own form of w} when w is a model parameter (maybe through
        views) and the producer prepares one (ProducerImpl.prepare_weight, inserted at the insertion point);
        else {}. The emitters pass it as the producer op's keyword arguments."""
        name = parameter_behind(self.gm, w)
        if name is None or self.config is None:
            return {}
        node = implementation(self.config.producer).prepare_weight(self, w, name)
        return {} if node is None else {argument: node}

    def tag(self, node: fx.Node, role: str) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        node.meta["lampc"] = SiteTag(self.index, self.kind, role, self.module, self.config)

    def draws(self, policy: SitePolicy, *operands: fx.Node) -> tuple[fx.Node, ...]:
        """The selection op's trailing `draws` argument at the insertion point: `(lampc_draws_<index>(*operands),)`
        where the site's rule draws (a RandomDraws submodule: the uniforms shaped like q @ k_t for operands q, k_t,
        like the producer's output for one operand; lampc/ops/random.py), else ()."""
        if not policy.rule.draws:
            return ()
        return (self.add_module(f"lampc_draws_{self.index}", RandomDraws(self.index, policy.seed), operands,
                                role="draws"),)

    def tap(self, selection: fx.Node, mask, per_head: bool) -> fx.Node:
        """Call `lampc_tap_<index>(selection, mask)` at the insertion point (a SelectionTap submodule)."""
        name = f"lampc_tap_{self.index}"
        rule = self.config.rule if self.config is not None else None
        tiled = rule is not None and rule.granularity == "tile" and per_head
        self.gm.add_submodule(name, SelectionTap(self.index, False, per_head=per_head,
                                                 tile=rule.tile if tiled else None))
        node = self.graph.call_module(name, (selection, mask))
        node.meta["nn_module_stack"] = self.like.meta.get("nn_module_stack", {})
        self.tag(node, "tap")
        return node


@dataclass(frozen=True)
class SiteKind:
    """A kind of site, as data.

    name:     "attention", "linear", "logits", ... (Emitted.kind may refine it per site)
    find:     gm -> (matches in graph order, skips)
    emit:     (Emission, match) -> Emitted; inserts the site's nodes (the kind's policy is bound into it)
    anchor:   match -> the node whose provenance the inserted nodes take (module path, stack trace)
    index_of: match -> the index the emitted nodes carry, for kinds that create no site (None: a new site)
    """

    name: str
    find: Callable[[fx.GraphModule], tuple[list, list[Skip]]]
    emit: Callable[[Emission, Any], Emitted]
    anchor: Callable[[Any], fx.Node]
    index_of: Callable[[Any], int | None] | None = field(default=None)


def rewrite_sites(gm: fx.GraphModule, kinds: Sequence[SiteKind], first_index: int = 0,
                  per_site: Sequence[SiteOverride] = ()) -> PassResult:
    """Rewrite every match of every kind, in order; one index per new site, counting from `first_index`.
    per_site: the policy's per-site overrides; one that names no site found is an error."""
    sites, skips, index, changed = [], [], first_index, False
    overrides = {o.site: o for o in per_site}
    for kind in kinds:
        matches, kind_skips = kind.find(gm)
        skips += kind_skips
        for match in matches:
            new_site = kind.index_of is None
            emission = Emission(gm, kind.name, index if new_site else kind.index_of(match), kind.anchor(match),
                                override=overrides.pop(index, None) if new_site else None)
            emitted = kind.emit(emission, match)
            tap = _add_tap(emission, emitted)
            for old, new in emitted.replacements.items():
                old.replace_all_uses_with(new)
            for dead in emitted.erase:
                if dead is not None and not dead.users:
                    gm.graph.erase_node(dead)
            changed = True
            if new_site:
                names = tuple(n.name for n in emitted.nodes) + ((tap.name,) if tap is not None else ())
                sites.append(Site(index, emitted.kind or kind.name, emission.module, emitted.producer,
                                  emitted.consumer, emitted.rule, names))
                index += 1
    if overrides:
        raise ValueError(f"Policy.per_site names site(s) {sorted(overrides)}, but this model has "
                         f"{index - first_index} site(s) of the enabled kinds, numbered {first_index} to {index - 1}")
    if changed:
        gm.graph.lint()
        gm.recompile()
    return PassResult(gm, changed, sites, skips)


def _add_tap(emission: Emission, emitted: Emitted) -> fx.Node | None:
    if emitted.selection is None:
        return None
    after = emitted.tap_after or emitted.nodes[-1]
    with emission.graph.inserting_after(after):
        return emission.tap(emitted.selection, emitted.mask, emitted.per_head)
