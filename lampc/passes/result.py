"""What a pass reports: the sites it rewrote and the candidates it skipped, each skip with its reason."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import fx


@dataclass(frozen=True)
class Site:
    """One composition producer -> consumer that a pass rewrote.

    index:    position among the model's sites (stable: graph order), used for stats and random seeds
    kind:     "attention", "layer_norm", "logits" or "gelu"
    module:   module path of the producer, e.g. "transformer.h.3.attn"
    producer: the producer's op, e.g. "matmul"
    consumer: the consumer's op, e.g. "softmax"
    rule:     the site policy's format and look-ahead rule in words
    nodes:    names of the nodes the rewrite inserted
    """

    index: int
    kind: str
    module: str
    producer: str
    consumer: str
    rule: str
    nodes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Skip:
    """A candidate left alone, and why."""

    kind: str
    module: str
    node: str
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PassResult:
    """The graph after a pass, whether it changed, and what it found."""

    graph_module: fx.GraphModule
    modified: bool
    sites: list[Site] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)

    def merge(self, other: "PassResult") -> "PassResult":
        return PassResult(
            other.graph_module,
            self.modified or other.modified,
            self.sites + other.sites,
            self.skips + other.skips,
        )
