"""Producers: each producer type's implementation, registered for it (lampc/producers/registry.py).

    registry.py   ProducerImpl (what every producer implements), register, implementation(p)
    emulated.py   Emulated: the bit-exact m-bit accumulator
    native.py     Native: the real bf16/fp16 GEMM
    cast_weight.py CastWeight: the native producer's weight cast, a module of the rewritten graph

Importing this package registers every implementation.
"""

from . import emulated, native  # noqa: F401 (registers the implementations)
from .registry import ProducerImpl, implementation, register

__all__ = ["ProducerImpl", "implementation", "register"]
