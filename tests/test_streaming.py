"""The streaming attention site (SitePolicy.streaming, lampc/lookahead/streaming.py) against the materialised one:
the same selection, entry for entry, and the same output to FP32 rounding, for every rule it streams, on random
scores with every mask form, then on GPT-2, Llama (GQA), Gemma2 (soft cap, sliding window) and Bloom (ALiBi), with
padding, prefill and decode."""

from __future__ import annotations

import pytest
import torch

import lampc
from lampc.lookahead import streaming
from lampc.lookahead.streaming import materialised_attention, streaming_attention
from lampc.policy import SitePolicy
from lampc.producers import implementation

from tiny_models import padded_batch, tiny_gpt2, tiny_llama, tiny_windowed

RULES = {
    "uniform": dict(criterion="uniform"),
    "strict": dict(criterion="strict", tau=0.05),
    "strict_models": dict(criterion="strict", tau=0.002),
    "relaxed": dict(criterion="relaxed", tau=0.3),
    "strict_tiles": dict(criterion="strict", tau=0.05, granularity="tile", tile=(4, 16)),
    "running_max": dict(criterion="running_max", tau=0.3, granularity="tile", tile=(8, 32)),
    "running_max_entries": dict(criterion="running_max", tau=0.5, tile=(1, 16)),
    "length_scaling": dict(criterion="strict", tau=0.05, length_scaling=True, l_ref=64),
    "error_scale_l1": dict(criterion="strict", tau=0.05, error_scale="l1"),
    "recompute_bf16": dict(criterion="strict", tau=0.05, recompute_format="bf16"),
}

OUTPUT_TOLERANCE = 2e-6
"""|streaming − materialised| of attention outputs (values ~1): the online softmax sums in another order."""


def _inputs(seed=0, batch=2, heads=3, rows=24, keys=300, depth=16):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, rows, depth, generator=g) * 1.5
    k_t = torch.randn(batch, heads, depth, keys, generator=g)
    v = torch.randn(batch, heads, keys, 8, generator=g)
    mask = torch.zeros(batch, 1, rows, keys)
    mask[-1, ..., :37] = torch.finfo(torch.float32).min  # left padding of the last sequence
    mask[-1, :, :3] = torch.finfo(torch.float32).min  # padded query rows: nothing visible
    return q, k_t, v, mask


MASKS = {
    "none": lambda mask: (None, False),
    "additive": lambda mask: (mask, False),
    "boolean": lambda mask: (mask == 0, False),
    "causal": lambda mask: (None, True),
    "alibi": lambda mask: (mask + torch.linspace(-3.0, 0.0, mask.shape[-1]), False),
}


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Chunks of 64 keys: every input below spans several, the last one partial; the chunk steps eager (the
    reference) unless a test turns the switch on (test_fused_chunk_steps_equal_the_reference)."""
    monkeypatch.setattr(streaming, "CHUNK_KEYS", 64)
    monkeypatch.setattr(streaming, "FUSED", False)


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("rule", RULES)
def test_streaming_equals_materialised(rule, mask_kind):
    q, k_t, v, mask = _inputs()
    mask, causal = MASKS[mask_kind](mask)
    site = SitePolicy(format="m4", biased=mask_kind == "alibi", **RULES[rule])
    producer = implementation(site.producer)
    got = streaming_attention(q, k_t, v, 0.25, mask, causal, site, producer, keep_selection=True)
    want = materialised_attention(q, k_t, v, 0.25, mask, causal, site, producer, keep_selection=True)
    differ = got.selection != want.selection
    if differ.any():  # only where an entry's weight is within FP32 rounding of its threshold
        weight, threshold = _terms(q, k_t, mask, causal, site, producer)
        assert site.rule.terms is not None and site.granularity == "entry", int(differ.sum())
        assert ((weight - threshold).abs() <= 1e-5 * threshold)[differ].all()
        assert int(differ.sum()) <= 2
    else:
        assert torch.equal(got.counts, want.counts)
    finite = torch.isfinite(want.out)  # boolean masks leave rows with no key NaN, in both forms
    assert torch.equal(finite, torch.isfinite(got.out))
    same_rows = finite & ~differ.any(dim=-1, keepdim=True)  # a row with another selection has other values
    assert (got.out[same_rows] - want.out[same_rows]).abs().max() <= OUTPUT_TOLERANCE
    if site.rule.looks_ahead:
        assert int(got.counts[:, 0].sum()) > 0  # the rule picks some
        if site.granularity == "entry" and not site.rule.tiled:
            assert int(got.counts[:, 0].sum()) < int(got.counts[:, 1].sum())


def _terms(q, k_t, mask, causal, site, producer):
    """The materialised rule's (weight, threshold) per entry: where a disagreement may sit."""
    from lampc.lookahead.error_scale import producer_error_scale
    from lampc.lookahead.softmax import softmax_rows, visible_from_mask

    s_hat = producer.scores(q, k_t, 0.25)
    visible = visible_from_mask(mask, s_hat.shape, causal, s_hat.device)
    bias = streaming._bias(mask, visible, site)
    rows = softmax_rows(s_hat, visible, site, bias=bias, error_scale=producer_error_scale(site, q, k_t, s_hat, 0.25))
    weight, threshold = site.rule.terms(rows, site)
    return weight, torch.as_tensor(threshold).expand(weight.shape)


def test_streaming_with_a_soft_cap_equals_materialised():
    q, k_t, v, mask = _inputs(seed=3)
    site = SitePolicy(format="m4", criterion="strict", tau=0.02, softcap=5.0)
    producer = implementation(site.producer)
    got = streaming_attention(q * 3, k_t, v, 0.25, mask, False, site, producer, keep_selection=True)
    want = materialised_attention(q * 3, k_t, v, 0.25, mask, False, site, producer, keep_selection=True)
    assert torch.equal(got.selection, want.selection)
    assert (got.out - want.out).abs().max() <= OUTPUT_TOLERANCE


@pytest.mark.parametrize("rule", ["strict", "relaxed", "strict_tiles", "running_max", "length_scaling"])
def test_fused_chunk_steps_equal_the_reference(rule, monkeypatch):
    q, k_t, v, mask = _inputs(seed=5)
    site = SitePolicy(format="m4", **RULES[rule])
    producer = implementation(site.producer)
    reference = streaming_attention(q, k_t, v, 0.25, mask, False, site, producer, keep_selection=True)
    monkeypatch.setattr(streaming, "FUSED", True)
    fused = streaming_attention(q, k_t, v, 0.25, mask, False, site, producer, keep_selection=True)
    differ = fused.selection != reference.selection  # inductor's exp may round apart in the last bit
    assert int(differ.sum()) <= 2
    same_rows = ~differ.any(dim=-1, keepdim=True)
    assert (fused.out - reference.out).abs().masked_select(same_rows).max() <= OUTPUT_TOLERANCE


def test_chunks_are_whole_tiles(monkeypatch):
    monkeypatch.setattr(streaming, "CHUNK_KEYS", 50)
    assert streaming.chunk_keys(SitePolicy(tile=(4, 16))) == 64  # rounded up to a multiple of the tile's keys
    q, k_t, v, mask = _inputs(keys=130)
    site = SitePolicy(format="m4", criterion="strict", tau=0.05, granularity="tile", tile=(4, 16))
    producer = implementation(site.producer)
    got = streaming_attention(q, k_t, v, 0.25, mask, False, site, producer, keep_selection=True)
    want = materialised_attention(q, k_t, v, 0.25, mask, False, site, producer, keep_selection=True)
    assert torch.equal(got.selection, want.selection)


def _plain_online_softmax(f, v, chunk, fmt):
    """A row-by-row loop of the online softmax with the exponentials rounded by ml_dtypes (round to nearest even)."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    import numpy as np

    target = {"fp8_e4m3": ml_dtypes.float8_e4m3fn, "bf16": ml_dtypes.bfloat16}[fmt]
    out = torch.empty(*f.shape[:-1], v.shape[-1])
    for index in np.ndindex(*f.shape[:-1]):
        m, total, acc = -np.inf, np.float32(0), np.zeros(v.shape[-1], dtype=np.float32)
        row, values = f[index].numpy(), v[index[:-1]].numpy()
        for start in range(0, row.shape[0], chunk):
            part = row[start:start + chunk]
            new = max(m, float(part.max()))
            p = np.exp(part - np.float32(new)).astype(np.float32).astype(target).astype(np.float32)
            factor = np.float32(np.exp(np.float32(m - new))) if np.isfinite(m) else np.float32(0)
            total = total * factor + p.sum(dtype=np.float32)
            acc = acc * factor + p @ values[start:start + chunk]
            m = new
        out[index] = torch.from_numpy(acc / total)
    return out


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "bf16"])
def test_exp_format_rounds_the_online_exponentials(fmt):
    q, k_t, v, mask = _inputs(batch=1, heads=2, rows=6, keys=200)
    site = SitePolicy(format="fp32", criterion="uniform", streaming=True, exp_format=fmt)
    got = streaming_attention(q, k_t, v, 0.25, None, False, site, implementation(site.producer))
    want = _plain_online_softmax(torch.matmul(q, k_t) * 0.25, v, 64, fmt)
    assert (got.out - want).abs().max() <= 1e-5
    exact = streaming_attention(q, k_t, v, 0.25, None, False, SitePolicy(format="fp32", criterion="uniform"),
                                implementation(site.producer))
    assert (got.out - exact.out).abs().max() > 1e-4  # the rounding shows


def test_recompute_format_takes_the_selected_entries_from_that_format():
    import lampc.ops
    from lampc.numerics import lp_product

    q, k_t, v, mask = _inputs(batch=1)
    site = SitePolicy(format="m4", criterion="strict", tau=0.05, recompute_format="m11")
    producer = implementation(site.producer)
    s_hat = producer.scores(q, k_t, 0.25)
    selected = lampc.lookahead.softmax.select(s_hat, torch.ones_like(s_hat, dtype=torch.bool), site)
    got = lampc.ops.recompute_scores(s_hat, selected, q, k_t, 0.25, site.config.texts.execution)
    want = torch.where(selected, lp_product(q, k_t, "m11", 1, scale=0.25), s_hat)
    assert torch.equal(got, want) and selected.any()


FAMILIES = {
    "gpt2": tiny_gpt2,
    "llama_gqa": tiny_llama,
    "gemma2_softcap": lambda: tiny_windowed("gemma2", attn_logit_softcapping=2.0),
    "bloom_alibi": lambda: tiny_windowed("bloom"),
}
MODEL_RULES = ("strict_models", "relaxed", "strict_tiles", "running_max")


def _model_rule(rule: str) -> dict:
    settings = dict(RULES[rule])
    if rule == "strict_tiles":
        settings["tau"] = 0.002
    if "tile" in settings:
        settings["tile"] = (4, 4)  # the tiny models' rows are 12 long
    return settings


@pytest.mark.parametrize("rule", MODEL_RULES)
@pytest.mark.parametrize("family", FAMILIES)
def test_streaming_model_equals_materialised_with_padding(family, rule):
    model = FAMILIES[family]()
    ids, attention = padded_batch(model.config.vocab_size)
    materialised = lampc.compile(model, steps="none", **_model_rule(rule))
    streamed = lampc.compile(model, steps="none", streaming=True, **_model_rule(rule))
    assert any(n.target is torch.ops.lampc.lamp_attention.default for n in streamed.graph_module.graph.nodes)
    assert not any(n.target is torch.ops.aten.softmax.int for n in streamed.graph_module.graph.nodes)
    want, got = materialised(ids, attention_mask=attention).logits, streamed(ids, attention_mask=attention).logits
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    mine, theirs = streamed.stats()["sites"], materialised.stats()["sites"]
    assert [s["selected"] for s in mine] == [s["selected"] for s in theirs]
    assert [s["visible"] for s in mine] == [s["visible"] for s in theirs]
    assert sum(s["selected"] for s in mine) > 0
    if "granularity" in _model_rule(rule):
        assert [s["tiles_selected"] for s in mine] == [s["tiles_selected"] for s in theirs]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_streaming_decode_equals_materialised(family):
    model = FAMILIES[family]()
    ids, attention = padded_batch(model.config.vocab_size, seq=8)
    materialised = lampc.compile(model, steps="eager", criterion="strict", tau=0.002)
    streamed = lampc.compile(model, steps="eager", criterion="strict", tau=0.002, streaming=True)
    want = materialised.generate(ids, attention, max_new_tokens=5, do_sample=False)
    got = streamed.generate(ids, attention, max_new_tokens=5, do_sample=False)
    assert torch.equal(got, want)
    for phase in ("prefill", "decode"):
        mine, theirs = streamed.stats(phase)["sites"], materialised.stats(phase)["sites"]
        assert [s["selected"] for s in mine] == [s["selected"] for s in theirs], phase
        assert sum(s["visible"] for s in mine) > 0, phase


def test_decode_step_logits_agree():
    model = tiny_llama()
    ids, attention = padded_batch(model.config.vocab_size, seq=10)
    materialised = lampc.compile(model, steps="eager", criterion="strict", tau=0.002)
    streamed = lampc.compile(model, steps="eager", criterion="strict", tau=0.002, streaming=True)
    outs = []
    for compiled in (materialised, streamed):
        first = compiled(ids[:, :7], attention_mask=attention[:, :7], use_cache=True)
        outs.append(compiled(ids[:, 7:], attention_mask=attention, past_key_values=first.past_key_values).logits)
    assert (outs[0] - outs[1]).abs().max() <= 1e-4 * outs[0].abs().max()


def test_smooth_k_leaves_the_fp32_softmax_unchanged_and_shrinks_the_scores():
    model = tiny_llama()
    ids, attention = padded_batch(model.config.vocab_size)
    plain = lampc.compile(model, steps="none", format="fp32", criterion="uniform")
    smoothed = lampc.compile(model, steps="none", format="fp32", criterion="uniform", smooth_k=True)
    names = [n.name for n in smoothed.graph_module.graph.nodes]
    assert any(name.startswith("k_smooth_") for name in names)
    want = plain(ids, attention_mask=attention).logits
    assert (smoothed(ids, attention_mask=attention).logits - want).abs().max() <= 1e-4 * want.abs().max()
    streamed = lampc.compile(model, steps="none", format="fp32", criterion="uniform", smooth_k=True, streaming=True)
    assert (streamed(ids, attention_mask=attention).logits - want).abs().max() <= 1e-4 * want.abs().max()


def test_smooth_k_is_refused_under_a_soft_cap():
    with pytest.raises(ValueError, match="smooth_k.*soft cap"):
        lampc.compile(FAMILIES["gemma2_softcap"](), steps="none", smooth_k=True)


@pytest.mark.parametrize("fields, words", [
    (dict(streaming=True, criterion="target"), "needs whole sorted rows"),
    (dict(streaming=True, criterion="budget", budget=4), "needs whole sorted rows"),
    (dict(streaming=True, fused=True), "leave fused=False"),
    (dict(tile=(0, 4)), "two integers >= 1"),
    (dict(granularity="block"), "granularity must be one of entry, tile"),
    (dict(recompute_format="m99"), "recompute_format"),
])
def test_bad_streaming_fields_are_refused_by_name(fields, words):
    with pytest.raises(ValueError, match=words):
        SitePolicy(**fields)


@pytest.mark.parametrize("overrides, words", [
    (dict(kinds=["logits"], streaming=True), "logits.streaming"),
    (dict(kinds=["layer_norm"], granularity="tile"), "layer_norm.granularity"),
    (dict(sites="all", streaming=True), "sites='all'"),
])
def test_fields_where_they_mean_nothing_are_refused(overrides, words):
    with pytest.raises(ValueError, match=words):
        lampc.Policy.from_overrides(**overrides)


def test_onnx_export_refuses_a_streaming_site(tmp_path):
    from lampc.export import OnnxExportError, export_onnx

    compiled = lampc.compile(tiny_gpt2(), steps="none", streaming=True)
    with pytest.raises(OnnxExportError, match="streaming"):
        export_onnx(compiled, tmp_path / "model.onnx")


def test_a_materialised_site_too_large_for_memory_names_streaming(monkeypatch):
    from lampc.ops import softmax_site

    monkeypatch.setattr(softmax_site, "CHECK_ABOVE", 0)
    monkeypatch.setattr(softmax_site, "available_memory", lambda: 1000)  # bytes: nothing fits
    q, k_t = torch.randn(1, 2, 8, 4), torch.randn(1, 2, 4, 8)
    with pytest.raises(MemoryError, match="streaming=True"):
        torch.ops.lampc.lowp_scores(q, k_t, 0.5, "emulate m4")
    site = SitePolicy(streaming=True)
    streaming_attention(q, k_t, torch.randn(1, 2, 8, 3), 0.5, None, False, site, implementation(site.producer))
