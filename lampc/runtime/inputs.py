"""The checks of a compiled model's inputs that its forward and `generate` share: token ids and the attention mask,
each refused with a message naming the argument and what was expected."""

from __future__ import annotations

import torch
from torch import Tensor


def check_input_ids(input_ids, vocab_size: int, max_len: int, *, past: int = 0, min_len: int = 2) -> None:
    """input_ids: an int64/int32 (batch, seq) tensor of ids in [0, vocab_size), min_len <= seq <= max_len - past."""
    if not isinstance(input_ids, Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor of token ids, got {type(input_ids).__name__}")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"input_ids must be an integer tensor (int64), got {input_ids.dtype}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape (batch, seq), got {tuple(input_ids.shape)}")
    if not min_len <= input_ids.shape[1] <= max_len - past:
        raise ValueError(f"input_ids: sequence length {input_ids.shape[1]} outside [{min_len}, {max_len - past}] "
                         f"(the model's context is {max_len}" + (f", {past} of it cached)" if past else ")"))
    if input_ids.shape[0] == 0:
        raise ValueError("input_ids: a batch of 0 sequences")
    if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
        raise ValueError(f"input_ids: token ids must be in [0, {vocab_size}), got [{input_ids.min()}, {input_ids.max()}]")


def check_attention_mask(attention_mask, input_ids: Tensor, past: int = 0) -> None:
    """attention_mask: an integer 0/1 tensor over the past and the new positions of each sequence."""
    expected = (input_ids.shape[0], past + input_ids.shape[1])
    if not isinstance(attention_mask, Tensor) or tuple(attention_mask.shape) != expected:
        shape = tuple(attention_mask.shape) if isinstance(attention_mask, Tensor) else type(attention_mask).__name__
        what = "shaped like input_ids" if not past else f"over the {past} cached and the new positions"
        raise ValueError(f"attention_mask must be a tensor {what} {expected}, got {shape}")
    if attention_mask.dtype == torch.bool or attention_mask.is_floating_point():
        raise TypeError(f"attention_mask must be an integer tensor of 0/1 (as Hugging Face uses), got {attention_mask.dtype}")
    odd = attention_mask[(attention_mask != 0) & (attention_mask != 1)]
    if odd.numel():
        raise ValueError(f"attention_mask must contain only 0 (padding) and 1 (token), got {odd[0].item()}")
