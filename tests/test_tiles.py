"""Tile granularity and the running-maximum test (lampc/lookahead/tiles.py) against plain loops over tiles."""

from __future__ import annotations

import math

import pytest
import torch

from lampc.lookahead.softmax import select
from lampc.lookahead.tiles import promote_tiles, running_max_weight, tile_counts
from lampc.policy import SitePolicy

SHAPES = [(1, 1, 7, 13), (2, 3, 16, 32), (1, 2, 5, 40)]
TILES = [(1, 1), (2, 4), (4, 16), (3, 5), (8, 64)]


def _random(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    selected = torch.rand(shape, generator=g) < 0.03
    visible = torch.rand(shape, generator=g) < 0.8
    logits = torch.randn(shape, generator=g) * 3
    return selected, visible, logits


def _tile_slices(shape, tile):
    rows, keys = tile
    for r in range(0, shape[-2], rows):
        for k in range(0, shape[-1], keys):
            yield slice(r, r + rows), slice(k, k + keys)


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("shape", SHAPES)
def test_promote_tiles_is_every_visible_entry_of_a_tile_with_a_selected_one(shape, tile):
    selected, visible, _ = _random(shape)
    want = torch.zeros(shape, dtype=torch.bool)
    for index in range(math.prod(shape[:-2])):
        b = torch.unravel_index(torch.tensor(index), shape[:-2])
        for rows, keys in _tile_slices(shape, tile):
            if selected[b][rows, keys].any():
                want[b][rows, keys] = visible[b][rows, keys]
    assert torch.equal(promote_tiles(selected, visible, tile), want)
    chosen, seen = tile_counts(selected, visible, tile)
    assert int(chosen.sum()) == sum(bool((selected & visible)[b][r, k].any())
                                    for b in [torch.unravel_index(torch.tensor(i), shape[:-2])
                                              for i in range(math.prod(shape[:-2]))]
                                    for r, k in _tile_slices(shape, tile))
    assert int(seen.sum()) >= int(chosen.sum())


@pytest.mark.parametrize("keys", [1, 4, 7, 64])
def test_running_max_weight_against_a_scalar_loop(keys):
    _, usable, logits = _random((2, 2, 6, 30), seed=4)
    before = torch.randn(2, 2, 6, 1)
    weight, after = running_max_weight(logits, usable, (1, keys), before)
    for index in torch.cartesian_prod(*(torch.arange(n) for n in logits.shape[:-1])):
        i = tuple(index.tolist())
        running = float(before[i])
        for start in range(0, 30, keys):
            part = [float(logits[i][k]) for k in range(start, min(start + keys, 30)) if usable[i][k]]
            tile_max = max(part) if part else -math.inf
            w = 0.0 if tile_max == -math.inf else math.exp(tile_max - running)
            for k in range(start, min(start + keys, 30)):
                expected = w if usable[i][k] else 0.0
                assert float(weight[i][k]) == pytest.approx(expected, rel=1e-6), (i, k)
            running = max(running, tile_max)
        assert float(after[i]) == running


def test_running_max_passes_the_first_tile_and_tiles_that_move_the_maximum():
    logits = torch.tensor([[[[5.0, 1.0, 0.0, 9.0, -3.0, -4.0]]]])
    usable = torch.ones_like(logits, dtype=torch.bool)
    site = SitePolicy(criterion="running_max", tau=0.5, granularity="tile", tile=(1, 2))
    # tiles: [5, 1] first (no running maximum yet); [0, 9] moves it; [-3, -4] is e^-12 of it
    assert select(logits, usable, site).tolist() == [[[[True, True, True, True, False, False]]]]


def test_tile_granularity_recomputes_whole_tiles_of_the_rules_selection():
    _, visible, logits = _random((1, 2, 16, 32), seed=7)
    entries = select(logits, visible, SitePolicy(criterion="strict", tau=0.3))
    tiles = select(logits, visible, SitePolicy(criterion="strict", tau=0.3, granularity="tile", tile=(4, 8)))
    assert entries.any() and torch.equal(tiles, promote_tiles(entries, visible, (4, 8)))
    assert (tiles | ~entries).all() and tiles.sum() > entries.sum()  # a superset


@pytest.mark.parametrize("criterion", ["random", "oracle"])
def test_random_and_oracle_tiles_take_count_froms_tile_counts(criterion):
    g = torch.Generator().manual_seed(11)
    s_hat = torch.randn(1, 2, 12, 40, generator=g) * 3
    visible = torch.rand(s_hat.shape, generator=g) < 0.9
    draws, s_fp32 = torch.rand(s_hat.shape, generator=g), s_hat + 0.05 * torch.randn(s_hat.shape, generator=g)
    tile = (4, 8)
    strict = select(s_hat, visible, SitePolicy(criterion="strict", tau=0.3, granularity="tile", tile=tile))
    site = SitePolicy(criterion=criterion, tau=0.3, granularity="tile", tile=tile)
    got = select(s_hat, visible, site, draws=draws, s_fp32=s_fp32)
    # a plain loop: per row of tiles, count strict's tiles, rank the tiles by their score, take that many
    p = torch.softmax(s_fp32.masked_fill(~visible, float("-inf")), dim=-1)
    error = (2 * p * (1 - p) * (s_fp32 - s_hat).abs()).masked_fill(~visible, 0.0)
    want = torch.zeros_like(visible)
    for h in range(2):
        for r in range(0, 12, 4):
            tiles = [(k, visible[0, h, r:r + 4, k:k + 8]) for k in range(0, 40, 8)]
            count = sum(bool((strict[0, h, r:r + 4, k:k + 8]).any()) for k, _ in tiles)
            scores = []
            for k, vis in tiles:
                if not vis.any():
                    continue
                part = (draws if criterion == "random" else error)[0, h, r:r + 4, k:k + 8]
                scores.append((-(part[vis].max() if criterion == "random" else part[vis].sum()).item(), k))
            for _, k in sorted(scores)[:count]:
                want[0, h, r:r + 4, k:k + 8] = visible[0, h, r:r + 4, k:k + 8]
    assert torch.equal(got, want) and got.any()
