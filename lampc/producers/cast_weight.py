"""CastWeight: a weight's low-precision copy as a graph value, cast once and reused while the weight is unchanged.

The native producer (lampc/producers/native.py) runs its GEMMs on operands in the format's dtype. An activation is
cast at every call, as autocast does; a weight is the same at every call, so a rewritten graph casts it through a
module of its own and hands the copy to the op (ProducerImpl.prepare_weight):

    y_hat = lampc.lowp_matmul(x, w, b, 'native bf16', ...)          y_hat = lampc.lowp_matmul(x, w, b, 'native bf16',
                                                         ->                   ..., w_low=lampc_cast_bf16_fc_weight(w))

The module keeps the copy with the stamp of the weight it was cast from (version, storage, shape), so an in-place
update (an optimizer step), a `.data =` swap and a resize recast it at the next call; a view of the weight (the
transpose aten.linear needs) reads the same copy. It holds no reference to the weight and registers no tensor: the
copy is no parameter or buffer (not in state_dict, not pickled, not moved by `.to()`: a device move recasts it).
While the graph is traced (torch.export, torch.compile) it returns a plain cast and keeps nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..numerics.tracing import is_fake


class CastWeight(nn.Module):
    """weight -> weight.to(dtype), from a copy cast once per version of the weight (see module docstring)."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype
        self._cast: tuple[tuple, Tensor] | None = None  # (stamp of the weight, its copy): one attribute, so a
        # thread never pairs one weight's stamp with another's copy

    def forward(self, w: Tensor) -> Tensor:
        if torch.compiler.is_compiling() or is_fake(w):
            return w.to(self.dtype)
        base = w if w._base is None else w._base  # a transpose or view of the weight: cast the weight itself
        if not base.is_contiguous():
            return w.to(self.dtype)
        stamp = (base._version, base.data_ptr(), tuple(base.shape), base.device)  # updates, swaps, resizes, moves
        cast = self._cast
        if cast is None or cast[0] != stamp:
            cast = (stamp, base.detach().to(self.dtype))
            self._cast = cast
        return cast[1].as_strided(w.shape, w.stride(), w.storage_offset() - base.storage_offset())

    def extra_repr(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def __getstate__(self):
        """Pickled (saved with its graph) without the copy: a loaded graph casts again at its first call."""
        return {**self.__dict__, "_cast": None}
