"""The random baseline's generators: one stream per (seed, site), owned by the compiled model that draws from it.

A compiled model runs its graphs inside `random_streams(its own dict)`, so two models with the same seed draw the
same stream and a thread running one model does not advance another's. Ops called directly, outside any compiled
model, draw from this module's own streams (`reset_random` restarts them).
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar

import torch

_GENERATORS: dict[tuple[int, int], torch.Generator] = {}  # ops called outside a compiled model
_ACTIVE_STREAMS: ContextVar[dict | None] = ContextVar("lampc_random_streams", default=None)


def random_generator(seed: int, site: int) -> torch.Generator:
    """The seeded generator of one site's random baseline; it advances across calls. Inside a compiled model's call
    (`random_streams`) the generators are that model's own: two models with the same seed draw the same stream,
    and a thread running one model does not advance another's."""
    streams = _ACTIVE_STREAMS.get()
    streams = _GENERATORS if streams is None else streams
    key = (seed, site)
    if key not in streams:
        streams[key] = torch.Generator().manual_seed((seed * 1_000_003 + site) % 2**63)
    return streams[key]


@contextmanager
def random_streams(streams: dict):
    """Within this block (this thread or task), the random baseline draws from `streams` (a model's own dict)."""
    token = _ACTIVE_STREAMS.set(streams)
    try:
        yield
    finally:
        _ACTIVE_STREAMS.reset(token)


def reset_random() -> None:
    """Restart the random baseline of ops called outside a compiled model (compiled models: reset_random())."""
    _GENERATORS.clear()
