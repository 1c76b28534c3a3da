"""A site's typed configuration: its producer, rule, execution and the facts its matcher found, side by side.

It is what a rewritten node's tag carries (`node.meta["lampc"].config`, lampc/passes/driver.py) and what the ops
receive, each only the parts it reads, as their texts (lampc/config/codec.py):

    lowp_scores(q, k_t, scale, 'emulate m4')                                 the producer
    lamp_select(s_hat, ..., 'emulate m4', 'strict tau=0.1', 'softcap=none biased=0', 'fused=0 dense_above=0.25', 3)
    recompute_scores(s_hat, sel, q, k_t, scale, 'fused=0 dense_above=0.25')  the execution

Loads no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from .execution import Execution
from .facts import SiteFacts
from .producer import Producer, decode_producer
from .rule import Rule


class SiteTexts(NamedTuple):
    producer: str
    rule: str
    facts: str
    execution: str


@dataclass(frozen=True)
class SiteConfig:
    producer: Producer
    rule: Rule
    execution: Execution = Execution()
    facts: SiteFacts = SiteFacts()

    @property
    def label(self) -> str:
        """'m4/bk1/emulate strict tau=0.1', with the facts if any: what `lampc show` and listings print."""
        parts = (self.producer.label, self.rule.label, self.facts.label, self.execution.numbers_label)
        return " ".join(w for w in parts if w)

    @property
    def texts(self) -> "SiteTexts":
        """Each part as the text its ops receive."""
        return SiteTexts(self.producer.to_text(), self.rule.to_text(), self.facts.to_text(), self.execution.to_text())

    @classmethod
    def from_texts(cls, producer: str, rule: str, facts: str | None = None, execution: str | None = None):
        """The inverse of `texts` (in its order: producer, rule, facts, execution); a part not given at its
        defaults."""
        return cls(decode_producer(producer), Rule.from_text(rule),
                   execution=Execution() if execution is None else Execution.from_text(execution),
                   facts=SiteFacts() if facts is None else SiteFacts.from_text(facts))
