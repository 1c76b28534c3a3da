"""Each consumer's sensitivity against autograd's Jacobian: the bound holds, and is tight within a stated factor."""

import pytest
import torch
import torch.nn.functional as F

from lampc.lookahead.activations import gelu_erf_derivative, gelu_tanh_derivative, silu_derivative
from lampc.lookahead.norms import layer_norm_column_norms, rms_norm_column_norms

TIGHTNESS = 3.0
"""The bound is within this factor of the exact column l1 norm on every tested input (measured max ~2)."""


def _rms_norm(x, gamma, eps):
    return gamma * x / torch.sqrt(x.square().mean(-1, keepdim=True) + eps)


def _exact_column_norms(fn, x):
    jac = torch.autograd.functional.jacobian(fn, x)  # (n, n): d out_j / d x_i
    return jac.abs().sum(dim=0)


def _inputs(n, seed):
    g = torch.Generator().manual_seed(seed)
    random = torch.randn(n, generator=g, dtype=torch.float64)
    outliers = random.clone()
    outliers[[3, 17]] = torch.tensor([80.0, -45.0], dtype=torch.float64)  # massive activations
    gamma = torch.rand(n, generator=g, dtype=torch.float64) * 2 + 0.1
    gamma[5] = 12.0
    return {"random": random, "outliers": outliers}, gamma


@pytest.mark.parametrize("case", ["random", "outliers"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_layer_norm_bound_holds_and_is_tight(case, seed):
    xs, gamma = _inputs(48, seed)
    x = xs[case]
    exact = _exact_column_norms(lambda v: F.layer_norm(v, (48,), gamma, None, 1e-5), x)
    bound = layer_norm_column_norms(x, gamma, 1e-5)
    assert torch.all(bound >= exact * (1 - 1e-12))
    assert torch.all(bound <= TIGHTNESS * exact)


@pytest.mark.parametrize("case", ["random", "outliers"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rms_norm_bound_holds_and_is_tight(case, seed):
    xs, gamma = _inputs(48, seed)
    x = xs[case]
    exact = _exact_column_norms(lambda v: _rms_norm(v, gamma, 1e-6), x)
    bound = rms_norm_column_norms(x, gamma, 1e-6)
    assert torch.all(bound >= exact * (1 - 1e-12))
    assert torch.all(bound <= TIGHTNESS * exact)


def test_layer_norm_sensitivity_singles_out_outliers_and_large_gamma():
    xs, gamma = _inputs(48, 0)
    bound = layer_norm_column_norms(xs["outliers"], gamma, 1e-5)
    assert set(bound.topk(1).indices.tolist()) <= {3, 5, 17}


@pytest.mark.parametrize("fn,derivative", [
    (lambda y: F.gelu(y, approximate="tanh"), gelu_tanh_derivative),
    (lambda y: F.gelu(y), gelu_erf_derivative),
    (F.silu, silu_derivative),
])
def test_activation_derivatives_equal_autograd(fn, derivative):
    y = torch.linspace(-8, 8, 401, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(fn(y).sum(), y)
    assert torch.allclose(derivative(y.detach()), grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cap", [1.0, 5.0, 50.0])
def test_softcapped_softmax_column_norm_is_exact(cap):
    """‖∂softmax(c·tanh(s/c))/∂s_i‖₁ = 2·a_i·(1 − a_i)·(1 − tanh²(s_i/c)), a = softmax of the capped scores."""
    from lampc.lookahead.softmax import cap_gain, capped, strict_sensitivity

    g = torch.Generator().manual_seed(int(cap))
    s = torch.randn(12, generator=g, dtype=torch.float64) * 4
    s[3] = -3 * cap  # a score well beyond the cap: its gain is small
    exact = _exact_column_norms(lambda v: torch.softmax(cap * torch.tanh(v / cap), -1), s)
    a = torch.softmax(capped(s, cap), -1)
    ours = strict_sensitivity(torch.ones_like(s), a, cap_gain(s, cap))  # |ŝ| = 1: the column norm itself
    assert torch.allclose(ours, exact, rtol=1e-12, atol=1e-15)
    uncapped = 2 * a[3] * (1 - a[3])  # what the plain softmax rule would weigh entry 3 with
    assert exact[3] < 0.02 * uncapped  # beyond the cap, a score's error barely reaches the softmax
