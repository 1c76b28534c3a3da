"""The random baseline's generators: one stream per (seed, site), per thread, owned by the compiled model.

A compiled model runs its graphs inside `random_streams(its own RandomStreams)`, so two models with the same seed
draw the same streams and one model's calls do not advance another's. Within a model, each thread draws from its
own streams, started from the seed the first time the thread calls the model (and again after `reset()`): a
thread's draws depend only on the calls that thread made, in its order, so N threads calling one model at once get
what N sequential runs of the same calls get, whatever the schedule.

Where the draws still follow the schedule: a thread pool that runs several tasks on one worker thread carries the
worker's streams from task to task, so a task's draws depend on which tasks that worker ran before it (the pool's
choice). Give each task its own thread (or its own compiled model) for draws that depend on the task alone.

Ops called directly, outside any compiled model, draw from this module's own streams (`reset_random` restarts them).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from contextvars import ContextVar

import torch


class RandomStreams:
    """The random baseline's generators of one compiled model: {(seed, site): generator}, one map per thread."""

    def __init__(self):
        self._epoch = 0  # reset() starts a new epoch: every thread's map is dropped on its next draw
        self._local = threading.local()

    def generator(self, seed: int, site: int) -> torch.Generator:
        """The calling thread's generator of one site; it advances across that thread's calls."""
        local = self._local
        if getattr(local, "epoch", None) != self._epoch:
            local.epoch, local.streams = self._epoch, {}
        key = (seed, site)
        if key not in local.streams:
            local.streams[key] = torch.Generator().manual_seed((seed * 1_000_003 + site) % 2**63)
        return local.streams[key]

    def reset(self) -> None:
        """Restart every thread's streams from the seed."""
        self._epoch += 1


_OUTSIDE = RandomStreams()  # ops called outside a compiled model
_ACTIVE_STREAMS: ContextVar[RandomStreams | None] = ContextVar("lampc_random_streams", default=None)


def random_generator(seed: int, site: int) -> torch.Generator:
    """The seeded generator of one site's random baseline: the active model's (see `random_streams`), this thread's."""
    streams = _ACTIVE_STREAMS.get()
    return (_OUTSIDE if streams is None else streams).generator(seed, site)


@contextmanager
def random_streams(streams: RandomStreams):
    """Within this block (this thread or task), the random baseline draws from `streams` (a model's own)."""
    token = _ACTIVE_STREAMS.set(streams)
    try:
        yield
    finally:
        _ACTIVE_STREAMS.reset(token)


def reset_random() -> None:
    """Restart the random baseline of ops called outside a compiled model, in every thread (each thread's streams
    start again from the seed on its next draw; compiled models: their own reset_random())."""
    _OUTSIDE.reset()
