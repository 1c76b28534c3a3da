"""The attention pass on Hugging Face GPT-2: sites, skips, idempotence, numerics, stats, bad input."""

import json

import pytest
import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.modeling_outputs import CausalLMOutput

import lampc
from lampc.lookahead.softmax import first_order_error, visible_from_mask
from lampc.passes import attention_sites, rewrite_sites
from lampc.policy import SitePolicy
from tiny_models import padded_batch, tiny_gpt2

pytestmark = pytest.mark.slow  # whole-model integration tests: `-m "not slow"` leaves them out


@pytest.fixture(scope="module")
def gpt2():
    return tiny_gpt2(score_gain=6.0)


@pytest.fixture(scope="module")
def batch():
    return padded_batch(97)


def test_sites_found_with_module_paths(gpt2):
    compiled = lampc.compile(gpt2)
    assert [s.module for s in compiled.sites] == ["transformer.h.0.attn", "transformer.h.1.attn"]
    assert all(s.kind == "attention" and s.producer == "matmul" and s.consumer == "softmax" for s in compiled.sites)
    assert compiled.skips == []


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_m23_equals_the_uncompiled_model(attn, batch):
    model = tiny_gpt2(score_gain=6.0, attn=attn)
    ids, mask = batch
    compiled = lampc.compile(model, format="m23", criterion="uniform")
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        got = compiled(ids, mask).logits
    assert (got - ref).abs().max() <= 1e-5
    assert len(compiled.sites) == 2


def test_low_precision_is_visible_and_lamp_reduces_the_error(gpt2, batch):
    ids, mask = batch
    with torch.no_grad():
        ref = gpt2(input_ids=ids, attention_mask=mask).logits
        uniform = lampc.compile(gpt2, format="m2", criterion="uniform")(ids, mask).logits
        lamp = lampc.compile(gpt2, format="m2", criterion="strict", tau=0.05)(ids, mask).logits
    real = mask.bool()
    err_uniform = (uniform - ref).abs()[real].max()
    err_lamp = (lamp - ref).abs()[real].max()
    assert err_uniform > 1e-3
    assert err_lamp < err_uniform


def test_target_tau_two_equals_uniform(gpt2, batch):
    ids, mask = batch
    a = lampc.compile(gpt2, format="m3", criterion="target", tau=2.0)
    b = lampc.compile(gpt2, format="m3", criterion="uniform")
    with torch.no_grad():
        assert torch.equal(a(ids, mask).logits, b(ids, mask).logits)
    assert a.stats()["overall"]["selected"] == 0


def test_random_matches_strict_counts_and_never_selects_masked(gpt2, batch):
    ids, mask = batch
    strict = lampc.compile(gpt2, format="m3", criterion="strict", tau=0.05)
    rand = lampc.compile(gpt2, format="m3", criterion="random", tau=0.05)
    for c in (strict, rand):
        c.keep_selections()
        with torch.no_grad():
            c(ids, mask)
    for site in strict.sites:
        s_sel, r_sel = strict.selections()[site.index], rand.selections()[site.index]
        assert s_sel.sum() > 0
        assert torch.equal(r_sel.sum(-1), s_sel.sum(-1))
        causal = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).tril()
        visible = causal & mask.bool()[:, None, None, :]
        assert not r_sel[~visible.expand_as(r_sel)].any()


def test_oracle_first_order_error_not_above_strict(gpt2, batch):
    """At equal per-row counts the oracle's first-order error is never higher than strict's."""
    ids, mask = batch
    compiled = lampc.compile(gpt2, format="m3", criterion="strict", tau=0.05)
    site = SitePolicy(format="m3", criterion="strict", tau=0.05)
    oracle = SitePolicy(format="m3", criterion="oracle", tau=0.05)
    q_k = _capture_q_k(gpt2, ids, mask)
    for q, k_t, scale, add_mask in q_k:
        s_hat = torch.ops.lampc.lowp_scores(q, k_t, scale, site.config.texts.producer)
        s_fp32 = torch.matmul(q, k_t) * scale
        strict_sel = torch.ops.lampc.lamp_select(s_hat, q, k_t, scale, add_mask, False, *site.config.texts, 0)
        oracle_sel = torch.ops.lampc.lamp_select(s_hat, q, k_t, scale, add_mask, False, *oracle.config.texts, 0)
        visible = visible_from_mask(add_mask, s_hat.shape, False, "cpu")
        assert torch.equal(oracle_sel.sum(-1), strict_sel.sum(-1))
        e_o = first_order_error(s_hat, s_fp32, visible, oracle_sel)
        e_s = first_order_error(s_hat, s_fp32, visible, strict_sel)
        assert torch.all(e_o <= e_s + 1e-6)
    assert compiled.sites


def _capture_q_k(model, ids, mask):
    """(q, k_t, scale, additive mask) of every attention layer, from hooks on the HF model."""
    found = []
    n_head = model.config.n_head
    for block in model.transformer.h:
        def hook(module, args, output, found=found):
            b, t, _ = output.shape
            q, k, _ = output.split(model.config.n_embd, dim=2)
            q = q.view(b, t, n_head, -1).transpose(1, 2)
            k = k.view(b, t, n_head, -1).transpose(1, 2)
            found.append((q.detach(), k.transpose(-1, -2).detach()))
        block.attn.c_attn.register_forward_hook(hook)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    for block in model.transformer.h:
        block.attn.c_attn._forward_hooks.clear()
    t = ids.shape[1]
    visible = torch.ones(t, t, dtype=torch.bool).tril() & mask.bool()[:, None, None, :]
    add_mask = torch.zeros(visible.shape).masked_fill(~visible, torch.finfo(torch.float32).min)
    scale = (model.config.n_embd // n_head) ** -0.5
    return [(q, k_t, scale, add_mask) for q, k_t in found]


def test_stats_equal_counts_by_hand(gpt2, batch):
    ids, mask = batch
    compiled = lampc.compile(gpt2, format="m3", criterion="strict", tau=0.05)
    compiled.keep_selections()
    selected_by_hand = {s.index: 0 for s in compiled.sites}
    with torch.no_grad():
        for call in range(2):
            compiled(ids, mask)
            for index, sel in compiled.selections().items():
                selected_by_hand[index] += int(sel.sum())
    t = ids.shape[1]
    visible_rows = [min(i + 1, i + 1 - (3 if b == 1 else 0)) for b in range(2) for i in range(t)]
    visible_by_hand = 2 * gpt2.config.n_head * sum(max(v, 0) for v in visible_rows)
    stats = compiled.stats()
    for site in stats["sites"]:
        assert site["calls"] == 2
        assert site["selected"] == selected_by_hand[site["site"]]
        assert site["visible"] == visible_by_hand
        assert site["rate"] == pytest.approx(selected_by_hand[site["site"]] / visible_by_hand)
        assert len(site["per_head"]) == gpt2.config.n_head
    compiled.reset_stats()
    assert compiled.stats()["overall"]["visible"] == 0


def test_pass_is_idempotent(gpt2):
    compiled = lampc.compile(gpt2)
    code_before = compiled.graph_module.code
    again = rewrite_sites(compiled.graph_module, [attention_sites(SitePolicy())])
    assert not again.modified and again.sites == []
    assert compiled.graph_module.code == code_before
    assert all(skip.reason == "already rewritten by lampc" for skip in again.skips)


class SoftmaxHeadLM(nn.Module):
    """A causal-LM-shaped model whose only softmax is over a linear layer's output (not attention)."""

    def __init__(self, vocab=31, width=8):
        super().__init__()
        self.config = PretrainedConfig(vocab_size=vocab, n_positions=32)
        self.embed = nn.Embedding(vocab, width)
        self.gate = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        x = self.embed(input_ids)
        x = x * torch.softmax(self.gate(x), dim=-1)
        return CausalLMOutput(logits=self.head(x))


def test_non_attention_softmax_is_skipped_with_a_reason_and_zero_sites_compile():
    model = SoftmaxHeadLM().eval()
    with pytest.raises(lampc.NoSitesError, match=r"no attention site found .*not matmul.*allow_no_sites=True"):
        lampc.compile(model)
    compiled = lampc.compile(model, allow_no_sites=True)
    assert compiled.sites == []
    assert len(compiled.skips) == 1
    assert "not matmul" in compiled.skips[0].reason and compiled.skips[0].module == ""
    report = compiled.report()
    json.dumps(report)
    assert report["n_sites"] == 0 and "no sites" in report["note"]
    ids = torch.randint(0, 31, (2, 5))
    with torch.no_grad():
        assert torch.equal(compiled(ids).logits, model(ids).logits)


class DataDependentMLP(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # Python control flow on a value: not capturable
            return x
        return -x


def test_untraceable_module_raises_capture_error_naming_it():
    model = tiny_gpt2()
    model.transformer.h[1].mlp = DataDependentMLP()
    with pytest.raises(lampc.CaptureError, match=r"transformer\.h\.1\.mlp"):
        lampc.compile(model)


def test_capture_rejects_non_models_and_half_precision():
    with pytest.raises(lampc.CaptureError, match="nn.Module"):
        lampc.compile("gpt2")
    with pytest.raises(lampc.CaptureError, match="float32|FP32"):
        lampc.compile(tiny_gpt2().to(torch.bfloat16))


def test_non_finite_values_propagate_as_in_fp32(batch):
    model = tiny_gpt2(score_gain=6.0)
    ids, mask = batch
    ids = ids.clone()
    ids[0, 5] = 7
    with torch.no_grad():
        model.transformer.wte.weight[7, 0] = float("nan")
        ref = model(input_ids=ids, attention_mask=mask).logits
        got = lampc.compile(model, format="m4", criterion="strict", tau=0.1)(ids, mask).logits
    assert torch.isnan(ref).any()
    assert torch.equal(torch.isnan(got), torch.isnan(ref))
    finite = ~torch.isnan(ref)
    assert (got[finite] - ref[finite]).abs().max() < 1.0


def test_bad_inputs_name_the_argument(gpt2, batch):
    compiled = lampc.compile(gpt2)
    ids, mask = batch
    with pytest.raises(TypeError, match="input_ids"):
        compiled(ids.float())
    with pytest.raises(ValueError, match="input_ids"):
        compiled(ids[0])
    with pytest.raises(ValueError, match="token ids"):
        compiled(ids + 1000)
    with pytest.raises(ValueError, match="sequence length"):
        compiled(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        compiled(ids, mask[:, :-1])
    with pytest.raises(ValueError, match="attention_mask"):
        compiled(ids, mask * 2)
    with pytest.raises(ValueError, match="unknown policy field"):
        lampc.compile(gpt2, m_bits=4)


def test_show_and_graph_exports(gpt2, batch, tmp_path):
    compiled = lampc.compile(gpt2, format="m4", criterion="strict", tau=0.1)
    with torch.no_grad():
        compiled(*batch)
    text = lampc.inspect.render(compiled)
    assert "site 0/2  attention: softmax <- matmul  @ transformer.h.0.attn" in text
    assert "lampc.lowp_scores" in text and "f32[" in text and "recompute rate" in text
    graph = compiled.to_networkx()
    assert graph.nodes["scores_lp_0"]["site"] == 0 and graph.has_edge("scores_lp_0", "selection_0")
    compiled.write_graph(str(tmp_path / "g.graphml"))
    compiled.write_graph(str(tmp_path / "g.dot"))
    assert (tmp_path / "g.dot").read_text().startswith("digraph lampc")
    with pytest.raises(ValueError, match="graphml"):
        compiled.write_graph(str(tmp_path / "g.png"))
