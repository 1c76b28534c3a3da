"""A compile that lowers nothing it was asked to is an error, not an FP32 model reporting a perfect KL.

An attention lampc does not match (scores scaled by a learned tensor) must raise NoSitesError naming the reason;
skipped candidates beside found sites give one warning with their count and first reason. The forms an audit found
unmatched are matched now, on small random configs: Falcon's in-place `scores /= sqrt(d)`, Gemma2's logit
soft-capping, Bloom's ALiBi through baddbmm.
"""

import warnings

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig
from transformers.modeling_outputs import CausalLMOutput

import lampc
from tiny_models import tiny_gpt2


def tiny(kind: str, **config):
    cfg = AutoConfig.for_model(kind, vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               **config)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()


GEMMA2 = dict(num_key_value_heads=2, intermediate_size=64, head_dim=8, attn_logit_softcapping=5.0)


class TemperatureAttentionLM(nn.Module):
    """One attention layer whose scores are scaled by a learned tensor (a per-head temperature): a form lampc does
    not match (its look-ahead assumes a number), so compiling it must not silently give an FP32 model."""

    def __init__(self, vocab=50, width=16, heads=2):
        super().__init__()
        self.config = PretrainedConfig(vocab_size=vocab, n_positions=32)
        self.embed, self.heads = nn.Embedding(vocab, width), heads
        self.qkv, self.head = nn.Linear(width, 3 * width), nn.Linear(width, vocab)
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        b, t = input_ids.shape
        q, k, v = self.qkv(self.embed(input_ids)).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.temperature
        causal = torch.full((t, t), float("-inf")).triu(1)
        out = torch.matmul(torch.softmax(scores + causal, dim=-1), v).transpose(1, 2).reshape(b, t, -1)
        return CausalLMOutput(logits=self.head(out))


@pytest.mark.slow
def test_unmatched_attention_raises_with_the_reason():
    model = TemperatureAttentionLM().eval()
    with pytest.raises(lampc.NoSitesError, match=r"no attention site found .*scaled by a tensor"):
        lampc.compile(model, format="m4", criterion="strict", tau=0.1)
    compiled = lampc.compile(model, format="m4", criterion="strict", tau=0.1, allow_no_sites=True)
    assert compiled.sites == [] and len(compiled.skips) == 1


@pytest.mark.slow
def test_a_kind_without_candidates_is_named():
    from test_attention_pass import SoftmaxHeadLM

    with pytest.raises(lampc.NoSitesError, match="no logits site found"):
        lampc.compile(SoftmaxHeadLM().eval(), kinds=["logits"], criterion="budget", budget=1)


@pytest.mark.slow
def test_skips_beside_sites_warn_once_with_count_and_first_reason():
    with pytest.warns(UserWarning, match=r"1 layer_norm candidate\(s\) left in FP32 beside 4 site\(s\); first: "
                                         r"transformer.h.0.ln_1: .*embedding"):
        lampc.compile(tiny_gpt2(), kinds=["layer_norm"], criterion="budget", budget=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lampc.compile(tiny_gpt2(), format="m4")  # every attention candidate matched: no warning


@pytest.mark.slow
def test_allow_no_sites_must_be_a_bool():
    with pytest.raises(TypeError, match="allow_no_sites must be True or False"):
        lampc.compile(tiny_gpt2(), allow_no_sites="yes")


@pytest.mark.slow
def test_qwen3_per_head_qk_norms_are_skipped_not_broken():
    """rms_norm(view(q_proj(x), heads, head_dim)) normalises per head, not the linear's features: a skip with its
    reason; the model then compiles with every kind and runs (forward and generate)."""
    model = tiny("qwen3", num_key_value_heads=2, intermediate_size=64, head_dim=8)
    with pytest.warns(UserWarning, match="layer_norm candidate"):
        compiled = lampc.compile(model, kinds="all", criterion="budget", budget=2, format="m7")
    per_head = [s for s in compiled.skips if s.module.endswith(("q_norm", "k_norm"))]
    assert len(per_head) == 4 and all("per-head norm" in s.reason for s in per_head)
    assert {s.kind for s in compiled.sites} == {"attention", "layer_norm", "gelu", "logits"}
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    logits = compiled(ids).logits
    assert torch.isfinite(logits).all()
    assert (logits - model(ids).logits).abs().max() < 0.1  # m7 with recompute: close to FP32
    assert compiled.generate(ids, max_new_tokens=3).shape == (2, 11)


@pytest.mark.slow
@pytest.mark.parametrize("head", ["BertModel", "BertForSequenceClassification", "BertForMaskedLM"])
def test_encoders_and_task_heads_compile_with_non_causal_attention(head):
    """BERT takes no use_cache: capture passes only what the forward takes; the bidirectional (padding-only) mask
    is the site's mask, and any output with .logits or .last_hidden_state comes back."""
    import transformers

    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    model = getattr(transformers, head)._from_config(config, attn_implementation="eager").eval()
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    exact = lampc.compile(model, format="m23", criterion="uniform")
    key = "last_hidden_state" if head == "BertModel" else "logits"
    assert torch.equal(exact(ids, attention_mask=mask)[key], model(ids, attention_mask=mask)[key])
    compiled = lampc.compile(model, format="m4", criterion="budget", budget=2)
    compiled(ids, attention_mask=mask)
    overall = compiled.stats()["overall"]
    # non-causal: every unpadded key is visible to every query row (padded rows included), per head and layer
    assert overall["visible"] == 2 * 4 * 8 * (8 + 5)
    assert overall["selected"] == 2 * 4 * 2 * 16  # 2 per row: 2 layers x 4 heads x 16 query rows
    with pytest.raises(lampc.CaptureError, match="cache"):
        compiled.generate(ids, max_new_tokens=2)


@pytest.mark.slow
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_falcon_in_place_scaling_is_matched(attn):
    cfg = AutoConfig.for_model("falcon", vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               new_decoder_architecture=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn).eval()
    exact = lampc.compile(model, format="m23", criterion="uniform")
    assert [s.module for s in exact.sites] == [f"transformer.h.{i}.self_attention" for i in range(2)]
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    real = mask.bool()
    got, want = exact(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits
    assert (got - want)[real].abs().max() < 1e-5  # the scale 1/sqrt(d) is kept exactly
    assert torch.equal(exact.generate(ids, mask, max_new_tokens=4),
                       model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False))
    low = lampc.compile(model, format="m4", criterion="strict", tau=0.01)
    low(ids, attention_mask=mask)
    assert 0 < low.stats()["overall"]["rate"] < 1


@pytest.mark.slow
def test_gemma2_softcapping_is_matched_and_the_look_ahead_sees_through_the_cap(tmp_path):
    from lampc.lookahead.softmax import select

    model = tiny("gemma2", **GEMMA2)
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    real = mask.bool()
    exact = lampc.compile(model, format="m23", criterion="uniform")
    assert (exact(ids, attention_mask=mask).logits - model(ids, attention_mask=mask).logits)[real].abs().max() < 1e-5
    low = lampc.compile(model, format="m3", criterion="strict", tau=1e-4)
    assert all(s.rule.endswith("through softcap 5") for s in low.sites)
    low.keep_selections()
    low(ids, attention_mask=mask)
    assert 0 < low.stats()["overall"]["rate"] < 1
    row, every = torch.tensor([[0.0, 8.0, 1.0, 1.0]]), torch.ones(1, 4, dtype=torch.bool)
    capped = lampc.SitePolicy(criterion="strict", tau=0.05, softcap=2.0)
    plain = lampc.SitePolicy(criterion="strict", tau=0.05)
    # capped at 2, the 8 no longer dominates (softmax of [0, 2.0, 0.92, 0.92]) and its error barely passes the cap
    # (gain 1 - tanh²(4) = 0.0013): the two 1s matter. The uncapped rule sees a one-hot row and picks nothing.
    assert select(row, every, capped).tolist() == [[False, False, True, True]]
    assert select(row, every, plain).tolist() == [[False, False, False, False]]
    assert low.generate(ids, mask, max_new_tokens=2).shape == (2, 10)  # decodes: tests/test_generate_families.py
    from lampc.export import OnnxExportError, export_onnx

    with pytest.raises(OnnxExportError, match="soft-capping .* no ONNX translation"):
        export_onnx(low, str(tmp_path / "g.onnx"))


@pytest.mark.parametrize("criterion, tau", [("strict", 0.05), ("relaxed", 0.3), ("target", 1.5), ("oracle", 0.05)])
def test_softcapped_rules_equal_a_scalar_loop(criterion, tau):
    """The softcapped rules against a straightforward per-entry loop over the capped row (float64)."""
    import math

    from lampc.lookahead.softmax import select

    cap = 2.0
    g = torch.Generator().manual_seed(7)
    s_hat = torch.randn(16, 6, generator=g) * 3
    s_fp32 = s_hat + torch.randn(16, 6, generator=g) * 0.05
    visible = torch.ones(16, 6, dtype=torch.bool).tril(diagonal=1)
    site = lampc.SitePolicy(criterion=criterion, tau=tau, softcap=cap)
    got = select(s_hat, visible, site, s_fp32=s_fp32)
    for r in range(16):
        keys = [j for j in range(6) if visible[r, j]]
        z = {j: cap * math.tanh(float(s_hat[r, j]) / cap) for j in keys}
        gain = {j: 1 - math.tanh(float(s_hat[r, j]) / cap) ** 2 for j in keys}
        total = sum(math.exp(v) for v in z.values())
        a = {j: math.exp(z[j]) / total for j in keys}
        if criterion == "strict":
            want = {j for j in keys if 2 * a[j] * (1 - a[j]) * gain[j] * abs(float(s_hat[r, j])) > tau}
        elif criterion == "relaxed":
            top = max(z.values())
            w = {j: abs(float(s_hat[r, j])) * gain[j] * math.exp(z[j] - top) for j in keys}
            want = {j for j in keys if w[j] > tau * max(w.values())}
        elif criterion == "target":
            order = sorted(keys, key=lambda j: -a[j])
            count = next(n for n in range(len(keys) + 1)
                         if 2 - sum(a[j] for j in order[:n]) - 2 * min(a.values()) <= tau)
            want = set(order[:count])
        else:  # oracle: strict's count, by the true first-order error through the cap
            count = sum(1 for j in keys if 2 * a[j] * (1 - a[j]) * gain[j] * abs(float(s_hat[r, j])) > tau)
            zt = {j: cap * math.tanh(float(s_fp32[r, j]) / cap) for j in keys}
            tt = sum(math.exp(v) for v in zt.values())
            p = {j: math.exp(zt[j]) / tt for j in keys}
            err = {j: 2 * p[j] * (1 - p[j]) * abs(zt[j] - z[j]) for j in keys}
            want = set(sorted(keys, key=lambda j: -err[j])[:count])
        assert {j for j in range(6) if got[r, j]} == want, r


@pytest.mark.slow
def test_bloom_alibi_through_baddbmm_is_matched():
    model = tiny("bloom", n_layer=2, n_head=4)
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    real = mask.bool()
    exact = lampc.compile(model, format="m23", criterion="uniform")
    assert [s.producer for s in exact.sites] == ["baddbmm", "baddbmm"]
    assert (exact(ids, attention_mask=mask).logits - model(ids, attention_mask=mask).logits)[real].abs().max() < 1e-5
    low = lampc.compile(model, format="m3", criterion="strict", tau=1e-3)
    assert all(s.rule.endswith("with the additive bias") for s in low.sites)
    low(ids, attention_mask=mask)
    overall = low.stats()["overall"]  # the ALiBi bias does not count as masking: causal, unpadded entries only
    assert overall["visible"] == 2 * 4 * (8 * 9 // 2 + 6 * 7 // 2) and 0 < overall["selected"] < overall["visible"]
    fused = lampc.compile(model, format="m3", criterion="strict", tau=1e-3, fused=True)
    assert torch.equal(fused(ids, attention_mask=mask).logits, low(ids, attention_mask=mask).logits)


@pytest.mark.parametrize("criterion, tau", [("strict", 0.05), ("relaxed", 0.3), ("target", 1.5)])
def test_biased_rules_equal_a_scalar_loop(criterion, tau):
    """With an additive bias b (ALiBi), the rules run on the softmax of ŝ + b; the error scale stays |ŝ|."""
    import math

    from lampc.lookahead.softmax import select

    g = torch.Generator().manual_seed(3)
    s_hat = torch.randn(16, 6, generator=g) * 2
    bias = -torch.arange(6, dtype=torch.float32).flip(0) * 0.7  # ALiBi-like: farther keys pushed down
    visible = torch.ones(16, 6, dtype=torch.bool).tril(diagonal=1)
    got = select(s_hat, visible, lampc.SitePolicy(criterion=criterion, tau=tau, biased=True),
                 bias=bias.expand(16, 6) * visible)
    for r in range(16):
        keys = [j for j in range(6) if visible[r, j]]
        z = {j: float(s_hat[r, j]) + float(bias[j]) for j in keys}
        total = sum(math.exp(v) for v in z.values())
        a = {j: math.exp(z[j]) / total for j in keys}
        if criterion == "strict":
            want = {j for j in keys if 2 * a[j] * (1 - a[j]) * abs(float(s_hat[r, j])) > tau}
        elif criterion == "relaxed":
            w = {j: abs(float(s_hat[r, j])) * math.exp(z[j] - max(z.values())) for j in keys}
            want = {j for j in keys if w[j] > tau * max(w.values())}
        else:
            order = sorted(keys, key=lambda j: -a[j])
            count = next(n for n in range(len(keys) + 1)
                         if 2 - sum(a[j] for j in order[:n]) - 2 * min(a.values()) <= tau)
            want = set(order[:count])
        assert {j for j in range(6) if got[r, j]} == want, r
