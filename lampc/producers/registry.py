"""Producer types -> their implementations: what a site's ops call to run its matmul in low precision.

The ops never ask which producer a site has; they ask the registry for its implementation and call it:

    implementation(Emulated("m4")).scores(q, k_t, scale)    # lampc/producers/emulated.py
    implementation(Native("bf16")).matmul(x, w, bias)         # lampc/producers/native.py

A new producer type (lampc/config/producer.py) registers its implementation here with `@register(Type)`;
docs/DESIGN.md, "Adding a producer", walks through it.
"""

from __future__ import annotations

from torch import Tensor

from ..config.producer import Producer


class ProducerImpl:
    """What every producer implements, for one producer value `p` (its format and settings).

    matmul(x, w, bias)       RN(x @ w + bias) as float32: the linear sites' and lowered matmuls' producer
    scores(q, k_t, scale)    RN(RN(q @ k_t) · scale) as float32: the softmax sites' producer
    scores_low(q, k_t, scale) the same scores in the producer's own dtype, for the fused softmax site to read
                             while widening them; None where the producer has no dtype of its own (emulated)
    gamma(k)                 γ of the per-entry error bound of a K-term product (docs/NUMERICS.md §9)
    floor(k, scale)          α of that bound: the subnormal floor
    hardware_dtype           the torch dtype its GEMMs run in on the device (compile warns where that dtype is
                             slow, lampc/api.py); None for a producer that emulates its numbers in FP32
    """

    hardware_dtype = None

    def __init__(self, p: Producer):
        self.p = p

    def matmul(self, x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
        raise NotImplementedError

    def scores(self, q: Tensor, k_t: Tensor, scale: float) -> Tensor:
        raise NotImplementedError

    def scores_low(self, q: Tensor, k_t: Tensor, scale: float) -> Tensor | None:
        return None

    def gamma(self, k: int) -> float:
        raise NotImplementedError

    def floor(self, k: int, scale: float) -> float:
        raise NotImplementedError


_IMPLEMENTATIONS: dict[type, type[ProducerImpl]] = {}


def register(producer_type: type):
    """Class decorator: the ProducerImpl subclass below implements `producer_type`."""
    def add(impl: type[ProducerImpl]) -> type[ProducerImpl]:
        _IMPLEMENTATIONS[producer_type] = impl
        return impl
    return add


def implementation(p: Producer) -> ProducerImpl:
    """The implementation registered for p's type, bound to p (TypeError for a type nobody registered)."""
    impl = _IMPLEMENTATIONS.get(type(p))
    if impl is None:
        raise TypeError(f"no producer implementation registered for {type(p).__name__}; registered: "
                        f"{', '.join(t.__name__ for t in _IMPLEMENTATIONS)}")
    return impl(p)
