"""Tiles of a softmax site's scores: granularity="tile", the running-maximum test, and the tile counts.

A tile is `tile = (rows, keys)` entries of the (…, T, L) scores, the tiles starting at row 0 and key 0 (the last
ones partial). Granularity "tile" recomputes a tile whole when the rule selects any entry of it:

    entry selection (T=4, L=6)        tiles (2, 3)           promoted
    . x . | . . .                     [x] [ ]                x x x | . . .
    . . . | . . .                                            x x x | . . .
    . . . | . . .                     [ ] [x]                . . . | x x x
    . . . | . x .                                            . . . | x x x

(only visible entries are recomputed: a promoted tile's masked entries stay unselected).

The running-maximum test (criterion "running_max", LampAttention's) reads the keys in tile order as a streaming
kernel does: for each row, m_j is the low-precision maximum of its logits in key tile j and M_j the running
maximum of the tiles before it (−inf before the first); the entries of tile j in that row weigh exp(m_j − M_j),
and the tile passes when some row of it weighs more than tau: a tile whose maximum comes within ln(1/tau) of the
running maximum (or moves it) holds probabilities that matter. All functions are plain torch on (…, T, L)
tensors, usable on one chunk of keys that starts at a multiple of `keys` (lampc/lookahead/streaming.py).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _padded(x: Tensor, tile: tuple[int, int], value) -> Tensor:
    """x (…, T, L) padded with `value` to whole tiles."""
    rows, keys = tile
    pad_t, pad_l = -x.shape[-2] % rows, -x.shape[-1] % keys
    if pad_t or pad_l:
        x = torch.nn.functional.pad(x, (0, pad_l, 0, pad_t), value=value)
    return x


def _tiled(x: Tensor, tile: tuple[int, int], value) -> Tensor:
    """x (…, T, L) as (…, nT, rows, nL, keys), padded with `value`."""
    rows, keys = tile
    x = _padded(x, tile, value)
    return x.reshape(*x.shape[:-2], x.shape[-2] // rows, rows, x.shape[-1] // keys, keys)


def tile_reduce(x: Tensor, tile: tuple[int, int], how: str) -> Tensor:
    """(…, nT, nL): the max or the sum of x (…, T, L) over each tile."""
    tiled = _tiled(x, tile, float("-inf") if how == "max" else 0.0)
    return tiled.amax(dim=(-3, -1)) if how == "max" else tiled.sum(dim=(-3, -1))


def tile_any(selected: Tensor, tile: tuple[int, int]) -> Tensor:
    """(…, nT, nL): whether each tile holds a True entry of `selected` (…, T, L)."""
    return _tiled(selected.to(torch.uint8), tile, 0).amax(dim=(-3, -1)).bool()


def expand_tiles(per_tile: Tensor, tile: tuple[int, int], shape) -> Tensor:
    """(…, nT, nL) -> (…, T, L): every entry takes its tile's value."""
    rows, keys = tile
    full = per_tile.repeat_interleave(rows, dim=-2).repeat_interleave(keys, dim=-1)
    return full[..., :shape[-2], :shape[-1]]


def promote_tiles(selected: Tensor, visible: Tensor, tile: tuple[int, int]) -> Tensor:
    """Granularity "tile": every visible entry of a tile that holds a selected entry."""
    selected = selected.expand(visible.shape) if selected.dim() < visible.dim() else selected
    return expand_tiles(tile_any(selected, tile), tile, selected.shape) & visible.expand(selected.shape)


def running_max_weight(logits: Tensor, usable: Tensor, tile: tuple[int, int],
                       before: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(weight (…, T, L), running maximum after these keys (…, T, 1)): each usable entry weighs exp(m_j − M_j)
    (module docstring), 0 elsewhere. `before`: the running maximum of earlier chunks (None: −inf)."""
    keys = tile[1]
    masked = _padded(logits.masked_fill(~usable, float("-inf")), (1, keys), float("-inf"))
    per_tile = masked.reshape(*masked.shape[:-1], -1, keys).amax(dim=-1)  # (…, T, nL): m_j
    seed = torch.full_like(per_tile[..., :1], float("-inf")) if before is None else before
    running = torch.cummax(torch.cat([seed, per_tile], dim=-1), dim=-1).values  # M before tile j, then after all
    weight = torch.exp(per_tile - running[..., :-1]).nan_to_num(nan=0.0)  # −inf − (−inf): no usable entry yet
    full = weight.repeat_interleave(keys, dim=-1)[..., :logits.shape[-1]]
    return full.masked_fill(~usable, 0.0), running[..., -1:]


def counted_tiles(counted: Tensor, score: Tensor, usable: Tensor, tile: tuple[int, int], top) -> Tensor:
    """The random and oracle baselines at granularity "tile": in each row of tiles, as many tiles as `counted` (the
    count_from rule's selection) touches, those with the highest tile score (the max of the draws, or the sum of
    the true errors, over the tile's usable entries), expanded to their usable entries. `top(score, usable,
    count)`: the per-row selection of lookahead/softmax.py (ties to the lowest index)."""
    count = tile_any(counted & usable, tile).sum(dim=-1, keepdim=True)  # (…, nT, 1)
    tiles_usable = tile_any(usable, tile)
    chosen = top(score, tiles_usable, count)
    return expand_tiles(chosen, tile, usable.shape) & usable


def tile_counts(selected: Tensor, visible: Tensor, tile: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """(tiles holding a selected visible entry, tiles holding a visible entry), each (…, nT, nL) bool."""
    visible = visible.expand(selected.shape)
    return tile_any(selected & visible, tile), tile_any(visible, tile)
