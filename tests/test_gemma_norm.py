"""Gemma's RMSNorm multiplies by (1 + w), not by w: the layer_norm look-ahead weighs by the scale the model
computes (a graph value), so a Gemma model selects exactly what a Llama-style RMSNorm model with weight 1 + w does.

Oracles: HF's own Gemma/Gemma2/Gemma3 RMSNorm module (its value, and autograd's Jacobian of it), and a twin of the
model whose every RMSNorm is transformers' LlamaRMSNorm holding the weight 1 + w (same logits, bit for bit).
"""

import copy

import pytest
import torch
from torch import fx
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm

import lampc
from tiny_models import tiny_llama
from lampc.capture import capture
from lampc.graph_view import module_path
from lampc.lookahead.norms import rms_norm_column_norms
from lampc.passes.linear_sites import find_rms_norms

pytestmark = pytest.mark.slow  # captures and compiles whole (tiny) models

KINDS = ("gemma", "gemma2", "gemma3_text")
TIGHTNESS = 3.0  # as tests/test_sensitivities.py: the bound is within this factor of the exact column norm
FP32_SLACK = 1e-5  # the bound is attained where the Jacobian's signs agree; both sides are float32 sums of ~32 terms


def tiny_gemma(kind: str, *, weights: str = "init", seed: int = 0):
    """A random 2-layer Gemma-family model; weights="init" keeps HF's zero-initialised norm weights (scale 1),
    "random" draws them (scales 1 + w spread around 1, some negative)."""
    config = AutoConfig.for_model(kind, vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, intermediate_size=64, head_dim=8)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    if weights == "random":
        with torch.no_grad():
            for module in _norms(model).values():
                module.weight.copy_(torch.randn(module.weight.shape) * 0.7)
    return model


def _norms(model) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in model.named_modules() if type(m).__name__.endswith("RMSNorm")}


def llama_norm_twin(model):
    """A copy of `model` whose every Gemma RMSNorm is a LlamaRMSNorm (y = w' * x̃) with w' = 1 + w."""
    twin = copy.deepcopy(model)
    for name, norm in _norms(twin).items():
        parent_name, _, child = name.rpartition(".")
        replacement = LlamaRMSNorm(norm.weight.shape[0], eps=norm.eps)
        with torch.no_grad():
            replacement.weight.copy_(1.0 + norm.weight.float())
        setattr(twin.get_submodule(parent_name), child, replacement)
    assert not any(type(m).__name__.startswith("Gemma") for m in _norms(twin).values())
    return twin


def _value(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    """Evaluate a node that depends on parameters only (a norm's scale), op by op."""
    if node.op == "get_attr":
        return gm.get_parameter(node.target) if node.target in dict(gm.named_parameters()) else getattr(gm, node.target)
    args = [(_value(gm, a) if isinstance(a, fx.Node) else a) for a in node.args]
    return node.target(*args, **node.kwargs)


@pytest.fixture(scope="module", params=KINDS)
def captured(request):
    """(model with random norm weights, its captured graph), once per kind."""
    model = tiny_gemma(request.param, weights="random")
    return model, capture(model).graph_module


def test_the_scale_found_is_the_one_the_model_multiplies_by(captured):
    model, gm = captured
    norms, found = _norms(model), find_rms_norms(gm)
    assert {module_path(first) for *_, first in found} == set(norms)
    for x, gamma, eps, first in found:
        norm = norms[module_path(first)]
        assert eps == norm.eps
        assert torch.equal(_value(gm, gamma), 1.0 + norm.weight), module_path(first)


def test_sensitivity_at_the_found_scale_bounds_autograd_of_the_models_norm(captured):
    """The column-norm bound with the graph's (gamma, eps) holds against autograd's Jacobian of HF's own module, and
    is tight (weighing by the raw weight w, as before, is not a bound: 0 at initialisation)."""
    model, gm = captured
    norms = _norms(model)
    g = torch.Generator().manual_seed(3)
    for _, gamma, eps, first in find_rms_norms(gm):
        norm = norms[module_path(first)]  # computes in float32 whatever its input (x.float())
        x = torch.randn(norm.weight.shape[0], generator=g)
        x[[1, 5]] = torch.tensor([40.0, -25.0])  # massive activations
        exact = torch.autograd.functional.jacobian(norm, x).abs().sum(dim=0)  # column i: d out / d x_i
        bound = rms_norm_column_norms(x, _value(gm, gamma), eps)
        assert torch.all(bound >= exact * (1 - FP32_SLACK)), module_path(first)
        assert torch.all(bound <= TIGHTNESS * exact), module_path(first)


@pytest.mark.parametrize("kind,weights", [("gemma", "init"), ("gemma2", "random"), ("gemma3_text", "init")])
def test_gemma_selects_entry_for_entry_what_its_llama_norm_twin_selects(kind, weights):
    model = tiny_gemma(kind, weights=weights)
    twin = llama_norm_twin(model)
    ids = torch.randint(0, 100, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, twin(input_ids=ids).logits)  # the twin is the same model
    runs = []
    for m in (model, twin):
        compiled = lampc.compile(m, kinds=["layer_norm"], format="m4", criterion="strict", tau=0.05)
        compiled.keep_selections()
        with torch.no_grad():
            logits = compiled(ids).logits
        runs.append((compiled, logits, compiled.selections()))
    (gemma, gemma_logits, gemma_sel), (llama, llama_logits, llama_sel) = runs
    assert [(s.module, s.consumer) for s in gemma.sites] == [(s.module, s.consumer) for s in llama.sites]
    assert len(gemma.sites) == 4 and sorted(gemma_sel) == sorted(llama_sel) == [0, 1, 2, 3]
    for site in gemma_sel:
        assert torch.equal(gemma_sel[site], llama_sel[site]), f"site {site}"
    assert sum(int(s.sum()) for s in gemma_sel.values()) > 0  # the rule selects something: the test can fail
    assert torch.equal(gemma_logits, llama_logits)


class TwoScaleRMSNorm(torch.nn.Module):
    """An RMSNorm that multiplies by two parameter values (w and a gain): no single scale to weigh by."""

    def __init__(self, n, eps=1e-6):
        super().__init__()
        self.weight, self.gain, self.eps = torch.nn.Parameter(torch.ones(n)), torch.nn.Parameter(torch.ones(n)), eps

    def forward(self, x):
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * (x * self.gain)


def test_a_norm_with_two_scales_is_skipped_with_the_reason():
    """The negative twin: a norm whose scale is no single value is left alone, and says why."""
    model = tiny_llama()
    for layer in model.model.layers:
        layer.post_attention_layernorm = TwoScaleRMSNorm(64)
    compiled = lampc.compile(model, kinds=["layer_norm"], format="m4", criterion="strict", tau=0.05)
    skipped = {s.module: s.reason for s in compiled.skips}
    for layer in (0, 1):
        reason = skipped[f"model.layers.{layer}.post_attention_layernorm"]
        assert reason.startswith("the RMSNorm multiplies by 2 parameter values (")
    assert {s.module for s in compiled.sites} == {"model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"}
