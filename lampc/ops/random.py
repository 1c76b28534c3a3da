"""The random baseline's draws: a graph value, drawn by a `lampc_draws_<site>` module from its model's streams.

At a site whose rule draws (`site.rule.draws`: criterion random), the rewrite inserts a call of a `RandomDraws`
module before the selection, and the selection op takes its result as its `draws` argument:

    draws_3 = lampc_draws_3(q, k_t)                       # u ~ U[0, 1), shaped like the scores (B, H, T, L)
    sel_3   = lampc.lamp_select(s_hat, q, k_t, ..., 3, draws_3)   # the rule reads u; the op draws nothing

(at a linear site `lampc_draws_<site>(y_hat)`, shaped like the producer's output). So an op's result depends only on
its arguments; the one state is the module's `RandomStreams`: one stream per (seed, site), per thread.

A compiled model gives every draws module of its graphs (the full-sequence graph and the prefill/decode step graphs)
its own `RandomStreams` (`share_streams`), so two models with the same seed draw the same streams, one model's
calls do not advance another's, and a site's full-sequence and cached-step calls continue one stream. Within a
model, each thread draws from its own streams, started from the seed the first time the thread calls the model (and
again after `reset()`): a thread's draws depend only on the calls that thread made, in its order, so N threads
calling one model at once get what N sequential runs of the same calls get, whatever the schedule.

Where the draws still follow the schedule: a thread pool that runs several tasks on one worker thread carries the
worker's streams from task to task, so a task's draws depend on which tasks that worker ran before it (the pool's
choice). Give each task its own thread (or its own compiled model) for draws that depend on the task alone.

Outside a compiled model (a rewritten graph run on its own, or a selection op called directly with draws=None on a
drawing rule), the draws come from this module's own streams, `OUTSIDE` (`reset_random` restarts them). A saved
model's modules are saved without their streams: the loaded model gives them its own, from the seed.
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor, fx, nn

from ..numerics.tracing import is_fake


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

    def draw(self, seed: int, site: int, shape, device) -> Tensor:
        """This thread's next uniforms of one site, shaped `shape`: drawn on the CPU (the same stream on every
        device), then moved to `device`."""
        return torch.rand(shape, generator=self.generator(seed, site), device="cpu").to(device)

    def reset(self) -> None:
        """Restart every thread's streams from the seed."""
        self._epoch += 1


OUTSIDE = RandomStreams()
"""The streams of draws made outside a compiled model (see module docstring)."""


def scores_shape(q: Tensor, k_t: Tensor) -> list:
    """The shape of q @ k_t (batch dimensions broadcast)."""
    batch = torch.broadcast_shapes(q.shape[:-2], k_t.shape[:-2])
    return [*batch, q.shape[-2], k_t.shape[-1]]


class RandomDraws(nn.Module):
    """`lampc_draws_<site>(q, k_t)` (a softmax site: shaped like q @ k_t) or `(y_hat)` (a linear site: shaped like
    y_hat): this call's uniform draws of the site's random baseline, from `streams` (None: OUTSIDE). While the
    graph is traced (torch.export, FakeTensor, meta) it returns an empty tensor of the shape and draws nothing."""

    def __init__(self, site: int, seed: int, streams: RandomStreams | None = None):
        super().__init__()
        self.site, self.seed, self.streams = site, seed, streams

    @torch.compiler.disable  # torch.compile runs the draws eagerly: the stream's, never values traced into a graph
    def forward(self, like: Tensor, k_t: Tensor | None = None) -> Tensor:
        shape = list(like.shape) if k_t is None else scores_shape(like, k_t)
        if is_fake(like):
            return like.new_empty(shape)
        return (self.streams or OUTSIDE).draw(self.seed, self.site, shape, like.device)

    def __getstate__(self) -> dict:
        """Saved without its streams (a thread-local map does not pickle): a loaded model shares its own."""
        return {**self.__dict__, "streams": None}


def share_streams(gm: fx.GraphModule, streams: RandomStreams) -> None:
    """Every draws module of `gm` draws from `streams` from now on (a compiled model's, for each of its graphs)."""
    for module in gm.modules():
        if isinstance(module, RandomDraws):
            module.streams = streams


def outside_draws(seed: int, site: int, like: Tensor) -> Tensor:
    """The fallback of a selection op called with draws=None on a drawing rule: the next uniforms of OUTSIDE's
    stream of (seed, site), shaped like `like`."""
    return OUTSIDE.draw(seed, site, like.shape, like.device)


def reset_random() -> None:
    """Restart the random baseline's draws made outside a compiled model, in every thread (each thread's streams
    start again from the seed on its next draw; compiled models: their own reset_random())."""
    OUTSIDE.reset()
