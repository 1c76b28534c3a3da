"""layer_norm, activation and logits sites: found with the right module paths, skipped with reasons, and the
layer_norm look-ahead of a compiled GPT-2 against an independent re-implementation of one block."""

import math

import pytest
import torch
import torch.nn.functional as F

import lampc
from reference.lamp_reference import lp_matmul_ref, round_mantissa
from tiny_models import padded_batch, tiny_gpt2, tiny_llama

pytestmark = pytest.mark.slow  # whole-model integration tests: `-m "not slow"` leaves them out

ALL_KINDS = ["attention", "layer_norm", "gelu", "logits"]


def test_gpt2_site_kinds_and_module_paths():
    compiled = lampc.compile(tiny_gpt2(), kinds=ALL_KINDS, criterion="budget", budget=0.1)
    found = {(s.kind, s.module) for s in compiled.sites}
    for layer in (0, 1):
        assert ("attention", f"transformer.h.{layer}.attn") in found
        assert ("layer_norm", f"transformer.h.{layer}.attn.c_proj") in found  # -> ln_2
        assert ("layer_norm", f"transformer.h.{layer}.mlp.c_proj") in found  # -> next ln_1 / ln_f
        assert ("gelu", f"transformer.h.{layer}.mlp.c_fc") in found
    assert ("logits", "lm_head") in found
    assert len(compiled.sites) == 9
    (skip,) = compiled.skips
    assert skip.module == "transformer.h.0.ln_1" and "embedding" in skip.reason


def test_llama_rms_norm_and_silu_sites():
    compiled = lampc.compile(tiny_llama(), kinds=ALL_KINDS, criterion="budget", budget=0.1)
    found = {(s.kind, s.module, s.consumer) for s in compiled.sites}
    assert ("layer_norm", "model.layers.0.self_attn.o_proj", "rms_norm(residual + .)") in found
    assert ("layer_norm", "model.layers.1.mlp.down_proj", "rms_norm(residual + .)") in found
    assert ("gelu", "model.layers.0.mlp.gate_proj", "silu") in found
    assert [s.module for s in compiled.skips] == ["model.layers.0.input_layernorm"]


def test_target_rule_is_refused_at_linear_sites():
    """Refused when the policy is built, before any capture (it needs the consumer's softmax); also as the count
    source of a baseline."""
    model = tiny_gpt2()
    with pytest.raises(ValueError, match="Policy.layer_norm: criterion 'target' applies to softmax sites only"):
        lampc.compile(model, kinds=["layer_norm"], criterion="target", tau=1.5)
    with pytest.raises(ValueError, match=r"Policy.gelu: criterion 'oracle' \(count_from='target'\) applies to softmax"):
        lampc.compile(model, kinds=["gelu"], criterion="oracle", count_from="target", tau=1.5)


@pytest.mark.parametrize("model_fn,vocab", [(tiny_gpt2, 97), (tiny_llama, 100)])
def test_all_kinds_and_all_matmuls_at_m23_equal_fp32(model_fn, vocab):
    model = model_fn()
    ids, mask = padded_batch(vocab)
    compiled = lampc.compile(model, kinds=ALL_KINDS, sites="all", format="m23", criterion="strict", tau=0.1)
    with torch.no_grad():
        assert (compiled(ids, mask).logits - model(input_ids=ids, attention_mask=mask).logits).abs().max() <= 1e-5
    low = [n for n in compiled.graph_module.graph.nodes if "lampc" in n.meta and n.meta["lampc"].kind == "lowered"]
    assert low, "sites='all' lowers the matmuls that are no site (QKV projection, p @ v)"


def test_sites_all_lowers_every_matmul():
    compiled = lampc.compile(tiny_gpt2(), sites="all", format="m4")
    targets = {str(n.target) for n in compiled.graph_module.graph.nodes if n.op == "call_function"}
    assert not targets & {"aten.addmm.default", "aten.matmul.default", "aten.linear.default", "aten.mm.default"}


# An independent re-implementation of the layer_norm look-ahead on one GPT-2 block (no lampc code).

def _ln_column_bound(h, gamma, eps):
    n = h.shape[-1]
    mu = h.mean(-1, keepdim=True)
    sigma = torch.sqrt(((h - mu) ** 2).mean(-1, keepdim=True) + eps)
    xh = (h - mu) / sigma
    g = gamma.abs()
    first = g * torch.abs(1 - 1 / n - xh * xh / n)
    second = g.sum() / n
    third = xh.abs() * (g * xh).abs().sum(-1, keepdim=True) / n
    return (first + second + third) / sigma


def _guarded_linear(x, w, b, residual, gamma, eps, m, budget):
    """Low-precision x @ w + b; per token the `budget` outputs with the largest c recomputed in FP32."""
    y_hat = round_mantissa(lp_matmul_ref(x, w, m) + b, m)
    h_hat = residual + y_hat
    c = _ln_column_bound(h_hat, gamma, eps) * y_hat.abs()
    top = c.topk(budget, dim=-1).indices
    chosen = torch.zeros_like(y_hat, dtype=torch.bool).scatter(-1, top, True)
    return torch.where(chosen, x @ w + b, y_hat), chosen


def _block_reference(model, ids, m, budget):
    tr, blk = model.transformer, model.transformer.h[0]
    n, heads = model.config.n_embd, model.config.n_head
    b, t = ids.shape
    x = tr.wte.weight[ids] + tr.wpe.weight[torch.arange(t)]
    a = F.layer_norm(x, (n,), blk.ln_1.weight, blk.ln_1.bias, blk.ln_1.eps)
    q, k, v = (a @ blk.attn.c_attn.weight + blk.attn.c_attn.bias).split(n, dim=-1)
    q, k, v = (z.view(b, t, heads, -1).transpose(1, 2) for z in (q, k, v))
    s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(n // heads))
    s = s.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), torch.finfo(torch.float32).min)
    o = (s.softmax(-1) @ v).transpose(1, 2).reshape(b, t, n)
    y1, sel1 = _guarded_linear(o, blk.attn.c_proj.weight, blk.attn.c_proj.bias, x, blk.ln_2.weight, blk.ln_2.eps,
                               m, budget)
    h = x + y1
    u = F.gelu(F.layer_norm(h, (n,), blk.ln_2.weight, blk.ln_2.bias, blk.ln_2.eps) @ blk.mlp.c_fc.weight
               + blk.mlp.c_fc.bias, approximate="tanh")
    y2, sel2 = _guarded_linear(u, blk.mlp.c_proj.weight, blk.mlp.c_proj.bias, h, tr.ln_f.weight, tr.ln_f.eps, m, budget)
    out = F.layer_norm(h + y2, (n,), tr.ln_f.weight, tr.ln_f.bias, tr.ln_f.eps)
    return out @ tr.wte.weight.T, [sel1, sel2]


def test_layer_norm_lookahead_matches_an_independent_block():
    model = tiny_gpt2(n_layer=1, score_gain=4.0)
    with torch.no_grad():  # a massive-activation channel, as trained models have
        model.transformer.h[0].mlp.c_proj.weight[:, 7] *= 30.0
        model.transformer.ln_f.weight[3] = 8.0
    ids = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(3))
    compiled = lampc.compile(model, kinds=["layer_norm"], format="m3", criterion="budget", budget=3)
    compiled.keep_selections()
    with torch.no_grad():
        got = compiled(ids).logits
        want, want_selections = _block_reference(model, ids, m=3, budget=3)
        plain = lampc.compile(model, kinds=["layer_norm"], format="m3", criterion="uniform")(ids).logits
    selections = compiled.selections()
    for index, want_sel in enumerate(want_selections):
        assert torch.equal(selections[index].reshape(want_sel.shape), want_sel)
    assert (got - want).abs().max() <= 1e-4
    assert (plain - want).abs().max() > 10 * (got - want).abs().max()
