"""Look-ahead at elementwise consumers: |f'(y)|, the whole (diagonal) Jacobian of an activation.

gelu (tanh form, GPT-2's gelu_new): f(y) = ½·y·(1 + tanh(u)), u = √(2/π)·(y + 0.044715·y³)
    f'(y) = ½·(1 + tanh u) + ½·y·(1 − tanh² u)·√(2/π)·(1 + 3·0.044715·y²)
gelu (erf form): f'(y) = Φ(y) + y·φ(y)
silu: f'(y) = s·(1 + y·(1 − s)), s = sigmoid(y)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu_tanh_derivative(y: Tensor) -> Tensor:
    u = _SQRT_2_OVER_PI * (y + 0.044715 * y.pow(3))
    t = torch.tanh(u)
    return 0.5 * (1.0 + t) + 0.5 * y * (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * y * y)


def gelu_erf_derivative(y: Tensor) -> Tensor:
    cdf = 0.5 * (1.0 + torch.erf(y / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * y * y) / math.sqrt(2.0 * math.pi)
    return cdf + y * pdf


def silu_derivative(y: Tensor) -> Tensor:
    s = torch.sigmoid(y)
    return s * (1.0 + y * (1.0 - s))


DERIVATIVES = {"gelu_tanh": gelu_tanh_derivative, "gelu": gelu_erf_derivative, "silu": silu_derivative}
