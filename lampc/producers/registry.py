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

    matmul(x, w, bias, w_low) RN(x @ w + bias) as float32: the linear sites' and lowered matmuls' producer
    scores(q, k_t, scale, k_low) RN(RN(q @ k_t) · scale) as float32: the softmax sites' producer
    scores_low(q, k_t, scale, k_low) the same scores in the producer's own dtype, for the fused softmax site to
                             read while widening them; None where the producer has no dtype of its own (emulated)
    scores_with_fp32(q, k_t, scale) (ŝ, the FP32 scores) from one device kernel, for the fused site on a GPU to
                             recompute without a second matmul (lampc/ops/cuda_site.py); None where the producer
                             has no such kernel (the default)
    prepare_weight(em, w, name) the producer's own form of a weight operand, added to the graph at rewrite time
                             (the native cast); the ops above receive it as w_low / k_low (None: not prepared, the
                             op works from the FP32 operand alone)
    gamma(k)                 γ of the per-entry error bound of a K-term product (docs/NUMERICS.md §9)
    floor(k, scale)          α of that bound: the subnormal floor
    hardware_dtype           the torch dtype its GEMMs run in on the device (compile warns where that dtype is
                             slow, lampc/api.py); None for a producer that emulates its numbers in FP32
    """

    hardware_dtype = None

    def __init__(self, p: Producer):
        self.p = p

    def matmul(self, x: Tensor, w: Tensor, bias: Tensor | None, w_low: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def scores(self, q: Tensor, k_t: Tensor, scale: float, k_low: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def scores_low(self, q: Tensor, k_t: Tensor, scale: float, k_low: Tensor | None = None) -> Tensor | None:
        return None

    def scores_with_fp32(self, q: Tensor, k_t: Tensor, scale: float) -> tuple[Tensor, Tensor] | None:
        return None

    def prepare_weight(self, em, w, name: str):
        """The node computing this producer's form of the weight operand `w` (an fx node: the model parameter
        `name`, maybe through views), added through `em` (lampc/passes/driver.py: Emission.add_module, .buffer) at
        its insertion point; None (the default): the op takes the FP32 operand only. Called by the emitters
        (Emission.prepare_weight) for every weight operand that is a model parameter."""
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
