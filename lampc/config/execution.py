"""How a site's ops run, not what they compute: the fused form, and when the FP32 recompute goes dense.

    fused:       one op per softmax site over one score buffer, look-aheads through torch.compile (SitePolicy.fused)
    dense_above: the recompute rate above which the FP32 recompute is one matmul instead of a gather

Loads no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from .codec import Record


@dataclass(frozen=True)
class Execution(Record):
    CODE_ALL_FIELDS = True

    fused: bool = False
    dense_above: float = 0.25

    def __post_init__(self) -> None:
        if not isinstance(self.fused, bool):
            raise ValueError(f"SitePolicy.fused must be a bool, got {self.fused!r}")
        if (isinstance(self.dense_above, bool) or not isinstance(self.dense_above, (int, float))
                or not 0.0 <= self.dense_above <= 1.0):
            raise ValueError(f"SitePolicy.dense_above must be a rate in [0, 1], got {self.dense_above!r}")
        object.__setattr__(self, "dense_above", float(self.dense_above))

    @property
    def label(self) -> str:
        return ("fused" if self.fused else "unfused") + f" dense>{self.dense_above:g}"
