"""Whether a tensor is a traced stand-in (torch.export, FakeTensor propagation) rather than values."""

from __future__ import annotations

from torch import Tensor


def is_fake(t: Tensor) -> bool:
    """A FakeTensor, a FunctionalTensor (torch.export's tracing) or a meta tensor: shapes without values, which a
    graph module must not count (the statistics taps) or keep (the weight casts)."""
    return type(t).__name__ in ("FakeTensor", "FunctionalTensor") or t.device.type == "meta"
