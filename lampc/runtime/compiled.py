"""CompiledModel: the rewritten graph behind the Hugging Face forward signature, with its statistics."""

from __future__ import annotations

import torch
from torch import Tensor, fx, nn

from ..passes.graph import to_networkx, write_graph
from ..passes.result import PassResult
from ..policy import Policy
from .report import build_report
from .stats import collect_stats
from .tap import SelectionTap


class CompiledModel(nn.Module):
    """A causal LM whose sites run in low precision under the LAMP look-ahead.

    Call it like the Hugging Face model: `compiled(input_ids, attention_mask=None)` returns an output with
    `.logits` (f32[B, T, vocab]). `sites`, `skips`, `stats()`, `reset_stats()` and `report()` tell what was
    rewritten and how much was recomputed, over all calls since the last reset.
    """

    def __init__(self, graph_module: fx.GraphModule, result: PassResult, policy: Policy, *, model_type: str,
                 max_len: int, vocab_size: int):
        super().__init__()
        self.graph_module = graph_module
        self.sites = list(result.sites)
        self.skips = list(result.skips)
        self.policy = policy
        self.model_type = model_type
        self.max_len = max_len
        self.vocab_size = vocab_size

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, **unused):
        if unused.get("use_cache"):
            raise ValueError("use_cache=True: a lampc-compiled model runs whole sequences without a KV cache")
        _check_input_ids(input_ids, self.vocab_size, self.max_len)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        _check_attention_mask(attention_mask, input_ids)
        return self.graph_module(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)

    @property
    def taps(self) -> dict[int, SelectionTap]:
        return {m.site: m for m in self.graph_module.children() if isinstance(m, SelectionTap)}

    def stats(self) -> dict:
        """Recompute rates per site (= per layer for attention), per head, per kind and overall."""
        return collect_stats(self.sites, self.taps)

    def reset_stats(self) -> None:
        for tap in self.taps.values():
            tap.reset()

    def record_stats(self, enabled: bool = True) -> None:
        """Switch the statistics taps on or off (off: no counting cost, e.g. for timing)."""
        for tap in self.taps.values():
            tap.enabled = enabled

    def keep_selections(self, enabled: bool = True) -> None:
        """Keep the last call's selection mask of every site (for inspection and tests)."""
        for tap in self.taps.values():
            tap.keep_last = enabled
            if not enabled:
                tap.last_selection = None

    def selections(self) -> dict[int, Tensor]:
        """The last call's selection per site (needs `keep_selections()`)."""
        return {site: tap.last_selection for site, tap in self.taps.items() if tap.last_selection is not None}

    def report(self) -> dict:
        """A JSON-serialisable account: policy, sites, skips, stats, versions."""
        return build_report(self)

    def to_networkx(self):
        return to_networkx(self.graph_module)

    def write_graph(self, path: str) -> None:
        """GraphML (.graphml) or DOT (.dot) of the rewritten graph."""
        write_graph(self.graph_module, path)


def _check_input_ids(input_ids, vocab_size: int, max_len: int) -> None:
    if not isinstance(input_ids, Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor of token ids, got {type(input_ids).__name__}")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"input_ids must be an integer tensor (int64), got {input_ids.dtype}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape (batch, seq), got {tuple(input_ids.shape)}")
    if not 2 <= input_ids.shape[1] <= max_len:
        raise ValueError(f"input_ids: sequence length {input_ids.shape[1]} outside [2, {max_len}] (the model's context)")
    if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
        raise ValueError(f"input_ids: token ids must be in [0, {vocab_size}), got [{input_ids.min()}, {input_ids.max()}]")


def _check_attention_mask(attention_mask, input_ids: Tensor) -> None:
    if not isinstance(attention_mask, Tensor) or attention_mask.shape != input_ids.shape:
        shape = tuple(attention_mask.shape) if isinstance(attention_mask, Tensor) else type(attention_mask).__name__
        raise ValueError(f"attention_mask must be a tensor shaped like input_ids {tuple(input_ids.shape)}, got {shape}")
    if attention_mask.dtype == torch.bool or attention_mask.is_floating_point():
        raise TypeError(f"attention_mask must be an integer tensor of 0/1 (as Hugging Face uses), got {attention_mask.dtype}")
    if attention_mask.numel() and not ((attention_mask == 0) | (attention_mask == 1)).all():
        raise ValueError("attention_mask must contain only 0 (padding) and 1 (token)")
