"""FP32 work: the share of a site's accumulation done in FP32, the one axis on which recomputing and flushing compare.

    fp32_work(compiled, compiled.stats())     # 0.25 for flush n=4 at K = 64 (block_k 1); the recompute rate for a rule
    flushes_per_entry(k=64, flush_every=4, block_k=1)   # 16

Two ways of spending FP32 on a K-term dot product (an attention score: K = head_dim):

- **Recomputing** (LAMP and its baselines) redoes a selected entry's whole dot product in FP32: K FP32
  multiply-adds for that entry, none for the others. Per entry on average: K x the recompute rate.
- **Flushing** (`flush_every = n`, the static two-level rule of vLLM's and FlashAttention-3's FP8 attention) adds
  the low-precision accumulator into an FP32 one after every chunk of n x block_k terms: ceil(K / (n x block_k))
  FP32 additions for *every* entry, and no recompute.

FP32 work counts those FP32 operations per accumulated term, one unit each: an entry's
`ceil(K / (n x block_k)) / K + (1 if recomputed)`, averaged over entries, then over sites as the recompute rate
is (the mean over sites: over layers at attention, the paper's rate). Without a flush it *is* the recompute rate;
flush n = 1 at block_k = 1 is 1.0 (every addition in FP32, as recomputing every entry is); n x block_k >= K is one
chunk, 1/K (its one flush adds the dot product, accumulated in low precision, to FP32's +0). A recompute's
multiplies count nothing extra and a flush's promotion of its accumulator nothing at all, so the measure is, if
anything, generous to flushing. It covers the sites whose recompute rate is counted (with sites="all", matmuls
lowered without a look-ahead flush too, uncounted).
"""

from __future__ import annotations

from torch import fx


def flushes_per_entry(k: int, flush_every: int | None, block_k: int = 1) -> int:
    """FP32 additions of one K-term entry under flush_every (0 without flushes): one per chunk of n x block_k."""
    if flush_every is None:
        return 0
    return -(-k // (flush_every * block_k))


def fp32_work(compiled, stats: dict) -> float | None:
    """FP32 work of a compiled model (module docstring): per site, flushes per term plus its recompute rate;
    the mean over sites. None when a flushed site's K cannot be read from the graph."""
    rates = {s["site"]: s["rate"] for s in stats["sites"]}
    works = []
    for site in compiled.sites:
        policy = compiled.policy.site_policy(site.kind, site.index)
        flush = 0.0
        if policy.flush_every is not None:
            k = inner_size(compiled.graph_module, site)
            if k is None:
                return None
            flush = flushes_per_entry(k, policy.flush_every, policy.block_k) / k
        works.append(flush + rates.get(site.index, 0.0))
    return sum(works) / len(works) if works else 0.0


def inner_size(graph_module: fx.GraphModule, site) -> int | None:
    """K of a site's producer: the last dimension of the first operand (q of q·kᵀ, x of x·W) of the first node
    the rewrite inserted, from the graph's recorded shapes; None where none is recorded or it is symbolic."""
    nodes = {node.name: node for node in graph_module.graph.nodes}
    for name in site.nodes:
        node = nodes.get(name)
        operand = node.args[0] if node is not None and node.args else None
        value = operand.meta.get("val") if isinstance(operand, fx.Node) else None
        if value is not None and getattr(value, "dim", lambda: 0)() >= 2:
            k = value.shape[-1]
            return k if isinstance(k, int) else None  # a torch.SymInt: no static K
    return None
