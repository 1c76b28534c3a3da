"""What a matcher found out about the model at one site: facts, not choices (a user's policy cannot set them).

    softcap: the model's logit soft-capping c (Gemma2's `attn_logit_softcapping`): the consumer is
             softmax(c·tanh(s/c) + mask), and the look-ahead differentiates through the cap (docs/NUMERICS.md §6)
    biased:  the site's mask carries a finite additive bias the softmax sees (Bloom's ALiBi through baddbmm)

Loads no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .codec import Record


@dataclass(frozen=True)
class SiteFacts(Record):
    CODE_ALL_FIELDS = True

    softcap: float | None = None
    biased: bool = False

    def __post_init__(self) -> None:
        if self.softcap is not None and (isinstance(self.softcap, bool) or not isinstance(self.softcap, (int, float))
                                         or not math.isfinite(self.softcap) or self.softcap <= 0):
            raise ValueError(f"SitePolicy.softcap must be a positive number (or None), got {self.softcap!r}")
        if self.softcap is not None:
            object.__setattr__(self, "softcap", float(self.softcap))
        if not isinstance(self.biased, bool):
            raise ValueError(f"SitePolicy.biased must be a bool, got {self.biased!r}")

    @property
    def label(self) -> str:
        words = ([f"softcap {self.softcap:g}"] if self.softcap is not None else []) + (["biased"] if self.biased
                                                                                       else [])
        return " ".join(words)
