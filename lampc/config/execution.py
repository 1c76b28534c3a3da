"""How a site's ops run, and the numbers of the steps around its producer: the fused or streaming form, when the
recompute goes dense, what format the recompute and the softmax's exponentials use, and K smoothing.

    fused:            one op per softmax site over one score buffer, look-aheads through torch.compile
    dense_above:      the recompute rate above which the FP32 recompute is one matmul instead of a gather
    streaming:        the attention site as one op over key tiles with an online softmax (lampc/lookahead/streaming.py)
    exp_format:       the softmax's exponentials rounded to this format (None: FP32)
    recompute_format: the selected entries recomputed in this format instead of FP32 (None: FP32)
    smooth_k:         the keys less their mean before the producer (the softmax is unchanged; SageAttention's)

(SitePolicy's docstring says each in full.) Loads no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..formats import Format, parse as parse_format
from .codec import Record


@dataclass(frozen=True)
class Execution(Record):
    CODE_ALL_FIELDS = True
    CODE_WHEN_SET = ("streaming", "exp_format", "recompute_format", "smooth_k")

    fused: bool = False
    dense_above: float = 0.25
    streaming: bool = False
    exp_format: Format | None = None
    recompute_format: Format | None = None
    smooth_k: bool = False

    def __post_init__(self) -> None:
        for name in ("fused", "streaming", "smooth_k"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"SitePolicy.{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("exp_format", "recompute_format"):
            value = getattr(self, name)
            if value is not None:
                try:
                    fmt = parse_format(value)
                except (ValueError, TypeError) as err:
                    raise ValueError(f"SitePolicy.{name}: {err}") from None
                object.__setattr__(self, name, None if fmt.is_identity else fmt)
        if self.streaming and self.fused:
            raise ValueError("SitePolicy.streaming=True is a one-op form of its own: leave fused=False")
        if (isinstance(self.dense_above, bool) or not isinstance(self.dense_above, (int, float))
                or not 0.0 <= self.dense_above <= 1.0):
            raise ValueError(f"SitePolicy.dense_above must be a rate in [0, 1], got {self.dense_above!r}")
        object.__setattr__(self, "dense_above", float(self.dense_above))

    @property
    def label(self) -> str:
        form = "streaming" if self.streaming else "fused" if self.fused else "unfused"
        return f"{form} dense>{self.dense_above:g}"

    @property
    def numbers_label(self) -> str:
        """The settings here that change values, in a few words ('' at the defaults): listings print it."""
        words = (["streaming"] if self.streaming else []) + (["smooth_k"] if self.smooth_k else [])
        if self.recompute_format is not None:
            words.append(f"recompute {self.recompute_format.name}")
        if self.exp_format is not None:
            words.append(f"exp {self.exp_format.name}")
        return " ".join(words)
