"""Pinned graphs: each site pattern on a small fx function, the rewritten graph as an inline expected listing, and a
negative twin that must stay untouched (with the skip's reason).

The functions are tiny modules captured with torch.export (no Hugging Face model: a capture takes a fraction of a
second). Listings show every call in graph order as `name = op(args)` (a site's configuration parts as the texts its
ops receive: 'emulate m4', 'strict tau=0.1'), and the `node.meta["lampc"]` tag of each inserted node as
`# site <index> <kind> <role>`, the producer's with the typed configuration's label (`[m4/bk1/emulate strict
tau=0.1]`). After a deliberate change of a pass:
`EXPECTTEST_ACCEPT=1 python -m pytest tests/test_pinned_graphs.py` rewrites the expectations in place; review the
diff like code.
"""

from __future__ import annotations

import math

import pytest
import torch
from expecttest import assert_expected_inline
from torch import fx, nn

from lampc.graph_view import op_name
from lampc.passes import attention_sites, linear_sites, logits_site, lowered_matmuls, rewrite_sites, unfuse_sites
from lampc.policy import SitePolicy

POLICY = SitePolicy(format="m4", criterion="strict", tau=0.1)


def capture(module: nn.Module, *args) -> fx.GraphModule:
    torch.manual_seed(0)
    return torch.export.export(module.eval(), args, strict=False).module()


def listing(gm: fx.GraphModule) -> str:
    lines = []
    for node in gm.graph.nodes:
        if node.op not in ("call_function", "call_module") or node.target == "_guards_fn":  # torch.export's guards
            continue
        args = ", ".join([_arg(a) for a in node.args] + [f"{k}={_arg(v)}" for k, v in node.kwargs.items()])
        tag = node.meta.get("lampc")
        label = f" [{tag.config.label}]" if tag is not None and tag.role in ("producer", "fused") else ""
        mark = "" if tag is None else f"    # site {tag.site} {tag.kind} {tag.role}{label}"
        lines.append(f"{node.name} = {op_name(node)}({args}){mark}")
    return "\n".join(lines)


def _arg(value) -> str:
    if isinstance(value, fx.Node):
        return value.name
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_arg(v) for v in value) + "]"
    return repr(value)


def rewrite(gm, *kinds):
    result = rewrite_sites(gm, kinds)
    return result, listing(gm)


# -- attention -------------------------------------------------------------------------------------------------

class Attention(nn.Module):
    """softmax(q·kᵀ · scale + mask): the attention site, in the forms the matcher must take."""

    def __init__(self, form: str = "mul"):
        super().__init__()
        self.form = form

    def forward(self, q, k, mask):
        s = torch.matmul(q, k.transpose(-1, -2))
        if self.form == "mul":
            s = s * 0.5
        elif self.form == "div_":  # Falcon: in place
            s /= 2.0
        elif self.form == "softcap":  # Gemma2
            s = torch.tanh(s * 0.5 / 5.0) * 5.0
        elif self.form == "not_a_cap":  # c·tanh(s/d), d != c: not a soft cap
            s = torch.tanh(s / 4.0) * 5.0
        elif self.form == "tensor_scale":
            s = s * q.new_ones(1)
        return torch.softmax(s + mask, dim=-1)


def attention_inputs():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, 4, 8, generator=g), torch.randn(1, 2, 4, 8, generator=g)
    return q, k, torch.zeros(1, 1, 4, 4)


@pytest.mark.parametrize("form", ["mul", "div_"])  # `s * 0.5`, and Falcon's in-place `s /= 2.0`: one rewrite
def test_attention_site(form):
    result, text = rewrite(capture(Attention(form), *attention_inputs()), attention_sites(POLICY))
    assert [(s.kind, s.producer, s.consumer) for s in result.sites] == [("attention", "matmul", "softmax")]
    assert_expected_inline(text, """\
transpose = transpose(k, -1, -2)
scores_lp_0 = lampc.lowp_scores(q, transpose, 0.5, 'emulate m4')    # site 0 attention producer [m4/bk1/emulate strict tau=0.1]
selection_0 = lampc.lamp_select(scores_lp_0, q, transpose, 0.5, mask, False, 'emulate m4', 'strict tau=0.1', 'softcap=none biased=0', 'fused=0 dense_above=0.25', 0)    # site 0 attention selection
scores_0 = lampc.recompute_scores(scores_lp_0, selection_0, q, transpose, 0.5, 'fused=0 dense_above=0.25')    # site 0 attention recompute
lampc_tap_0 = lampc_tap_0(selection_0, mask)    # site 0 attention tap
add = add(scores_0, mask)
softmax = softmax(add, -1)""")


def test_attention_through_a_soft_cap():
    result, text = rewrite(capture(Attention("softcap"), *attention_inputs()), attention_sites(POLICY))
    assert result.sites[0].rule.endswith("through softcap 5")
    assert_expected_inline(text, """\
transpose = transpose(k, -1, -2)
scores_lp_0 = lampc.lowp_scores(q, transpose, 0.5, 'emulate m4')    # site 0 attention producer [m4/bk1/emulate strict tau=0.1 softcap 5]
selection_0 = lampc.lamp_select(scores_lp_0, q, transpose, 0.5, mask, False, 'emulate m4', 'strict tau=0.1', 'softcap=5.0 biased=0', 'fused=0 dense_above=0.25', 0)    # site 0 attention selection
scores_0 = lampc.recompute_scores(scores_lp_0, selection_0, q, transpose, 0.5, 'fused=0 dense_above=0.25')    # site 0 attention recompute
lampc_tap_0 = lampc_tap_0(selection_0, mask)    # site 0 attention tap
div = div(scores_0, 5)
tanh = tanh(div)
mul_1 = mul(tanh, 5)
add = add(mul_1, mask)
softmax = softmax(add, -1)""")


@pytest.mark.parametrize("form, reason", [
    ("tensor_scale", "scaled by a tensor"),
    ("not_a_cap", "softmax input comes from aten.tanh"),  # 5·tanh(s/4) is no cap: 5 is taken as a scale
])
def test_attention_negative_twins_stay_untouched(form, reason):
    gm = capture(Attention(form), *attention_inputs())
    before = listing(gm)
    result, after = rewrite(gm, attention_sites(POLICY))
    assert result.sites == [] and not result.modified and after == before
    assert len(result.skips) == 1 and reason in result.skips[0].reason


def test_softmax_over_another_dimension_is_no_site():
    class Columns(nn.Module):
        def forward(self, q, k, mask):
            return torch.softmax(torch.matmul(q, k.transpose(-1, -2)) + mask, dim=-2)

    result, _ = rewrite(capture(Columns(), *attention_inputs()), attention_sites(POLICY))
    assert result.sites == [] and "not the last (key) dimension" in result.skips[0].reason


class Alibi(nn.Module):
    """Bloom: softmax(view(baddbmm(bias, q, k_t, beta, alpha)) + mask)."""

    def forward(self, q, k_t, bias, mask):
        s = bias.baddbmm(q, k_t, beta=1.0, alpha=0.5).view(1, 2, 4, -1)
        return torch.softmax(s + mask, dim=-1)


def test_alibi_attention_in_four_dimensions():
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(2, 4, 8, generator=g), torch.randn(2, 8, 4, generator=g), torch.randn(2, 1, 4, generator=g),
            torch.zeros(1, 1, 4, 4))
    result, text = rewrite(capture(Alibi(), *args), attention_sites(POLICY))
    assert result.sites[0].producer == "baddbmm" and result.sites[0].rule.endswith("with the additive bias")
    assert_expected_inline(text, """\
view_default = view(q, [1, 2, 4, -1])    # site 0 attention operand
view_default_1 = view(k_t, [1, 2, 8, -1])    # site 0 attention operand
view_default_2 = view(bias, [1, 2, 1, -1])    # site 0 attention operand
add_tensor = add(mask, view_default_2)    # site 0 attention operand
scores_lp_0 = lampc.lowp_scores(view_default, view_default_1, 0.5, 'emulate m4')    # site 0 attention producer [m4/bk1/emulate strict tau=0.1 biased]
selection_0 = lampc.lamp_select(scores_lp_0, view_default, view_default_1, 0.5, add_tensor, False, 'emulate m4', 'strict tau=0.1', 'softcap=none biased=1', 'fused=0 dense_above=0.25', 0)    # site 0 attention selection
scores_0 = lampc.recompute_scores(scores_lp_0, selection_0, view_default, view_default_1, 0.5, 'fused=0 dense_above=0.25')    # site 0 attention recompute
lampc_tap_0 = lampc_tap_0(selection_0, add_tensor)    # site 0 attention tap
scores_biased_0 = add(scores_0, view_default_2)    # site 0 attention output
add = add(scores_biased_0, mask)
softmax = softmax(add, -1)""")


def test_fused_form_and_its_unfusing():
    gm = capture(Attention(), *attention_inputs())
    rewrite_sites(gm, [attention_sites(SitePolicy(format="m4", criterion="strict", tau=0.1, fused=True))])
    assert_expected_inline(listing(gm), """\
transpose = transpose(k, -1, -2)
site_0 = lampc.lamp_scores(q, transpose, 0.5, mask, False, 'emulate m4', 'strict tau=0.1', 'softcap=none biased=0', 'fused=1 dense_above=0.25', 0)    # site 0 attention fused [m4/bk1/emulate strict tau=0.1]
scores_0 = getitem(site_0, 0)    # site 0 attention recompute
selection_0 = getitem(site_0, 1)    # site 0 attention selection
lampc_tap_0 = lampc_tap_0(selection_0, mask)    # site 0 attention tap
add = add(scores_0, mask)
softmax = softmax(add, -1)""")
    assert unfuse_sites(gm) == 1  # the new ops' names take a suffix: the fused op's getitems held theirs
    assert_expected_inline(listing(gm), """\
transpose = transpose(k, -1, -2)
scores_lp_0 = lampc.lowp_scores(q, transpose, 0.5, 'emulate m4')    # site 0 attention producer [m4/bk1/emulate strict tau=0.1]
selection_1 = lampc.lamp_select(scores_lp_0, q, transpose, 0.5, mask, False, 'emulate m4', 'strict tau=0.1', 'softcap=none biased=0', 'fused=1 dense_above=0.25', 0)    # site 0 attention selection
scores_1 = lampc.recompute_scores(scores_lp_0, selection_1, q, transpose, 0.5, 'fused=1 dense_above=0.25')    # site 0 attention recompute
lampc_tap_0 = lampc_tap_0(selection_1, mask)    # site 0 attention tap
add = add(scores_1, mask)
softmax = softmax(add, -1)""")


def test_a_second_rewrite_changes_nothing():
    gm = capture(Attention(), *attention_inputs())
    rewrite_sites(gm, [attention_sites(POLICY)])
    before = listing(gm)
    again, after = rewrite(gm, attention_sites(POLICY))
    assert not again.modified and after == before
    assert [s.reason for s in again.skips] == ["already rewritten by lampc"]


# -- linear sites ----------------------------------------------------------------------------------------------

class Block(nn.Module):
    """layer_norm(residual + linear(x)) and gelu(linear(x)); `shared` also returns the linear's output."""

    def __init__(self, shared: bool = False):
        super().__init__()
        self.up, self.down, self.norm, self.shared = nn.Linear(8, 16), nn.Linear(16, 8), nn.LayerNorm(8), shared

    def forward(self, x):
        y = self.down(torch.nn.functional.gelu(self.up(x)))
        out = self.norm(x + y)
        return (out, y) if self.shared else out


def test_layer_norm_and_gelu_sites():
    result, text = rewrite(capture(Block(), torch.randn(2, 3, 8)), linear_sites({"layer_norm": POLICY,
                                                                                 "gelu": POLICY}))
    assert [(s.index, s.kind, s.consumer) for s in result.sites] == [
        (0, "gelu", "gelu"), (1, "layer_norm", "layer_norm(residual + .)")]
    assert_expected_inline(text, """\
t_default = t(up_weight)    # site 0 gelu operand
y_lp_0 = lampc.lowp_matmul(x, t_default, up_bias, 'emulate m4', 'fused=0 dense_above=0.25')    # site 0 gelu producer [m4/bk1/emulate strict tau=0.1]
selection_0 = lampc.component_select(y_lp_0, x, t_default, up_bias, None, None, 0, 'gelu', 'emulate m4', 'strict tau=0.1', 'fused=0 dense_above=0.25', 0)    # site 0 gelu selection
y_0 = lampc.recompute_linear(y_lp_0, selection_0, x, t_default, up_bias, 'fused=0 dense_above=0.25')    # site 0 gelu recompute
lampc_tap_0 = lampc_tap_0(selection_0, None)    # site 0 gelu tap
gelu = gelu(y_0)
t_default_1 = t(down_weight)    # site 1 layer_norm operand
y_lp_1 = lampc.lowp_matmul(gelu, t_default_1, down_bias, 'emulate m4', 'fused=0 dense_above=0.25')    # site 1 layer_norm producer [m4/bk1/emulate strict tau=0.1]
selection_1 = lampc.component_select(y_lp_1, gelu, t_default_1, down_bias, x, norm_weight, 1e-05, 'layer_norm', 'emulate m4', 'strict tau=0.1', 'fused=0 dense_above=0.25', 1)    # site 1 layer_norm selection
y_1 = lampc.recompute_linear(y_lp_1, selection_1, gelu, t_default_1, down_bias, 'fused=0 dense_above=0.25')    # site 1 layer_norm recompute
lampc_tap_1 = lampc_tap_1(selection_1, None)    # site 1 layer_norm tap
add = add(x, y_1)
layer_norm = layer_norm(add, [8], norm_weight, norm_bias, 1e-05, False)""")


def test_a_linear_output_used_elsewhere_is_no_layer_norm_site():
    gm = capture(Block(shared=True), torch.randn(2, 3, 8))
    before = listing(gm)
    result, after = rewrite(gm, linear_sites({"layer_norm": POLICY}))
    assert result.sites == [] and after == before
    assert "also used outside the layer_norm" in result.skips[0].reason


def test_gelu_of_no_linear_is_no_site():
    class Scaled(nn.Module):
        def forward(self, x):
            return torch.nn.functional.gelu(x * 2.0)

    result, _ = rewrite(capture(Scaled(), torch.randn(2, 8)), linear_sites({"gelu": POLICY}))
    assert result.sites == [] and "gelu input is mul, not a linear layer" in result.skips[0].reason


# -- logits and lowered matmuls --------------------------------------------------------------------------------

class Head(nn.Module):
    def __init__(self, bias: bool = False):
        super().__init__()
        self.lm_head = nn.Linear(8, 11, bias=bias)

    def forward(self, h):
        return self.lm_head(h)


def test_logits_site():
    result, text = rewrite(capture(Head(), torch.randn(1, 3, 8)), logits_site(POLICY))
    assert result.sites[0].consumer == "softmax (next token)"
    assert_expected_inline(text, """\
lm_head_t_0 = t(lm_head_weight)    # site 0 logits operand
scores_lp_0 = lampc.lowp_scores(h, lm_head_t_0, 1, 'emulate m4')    # site 0 logits producer [m4/bk1/emulate strict tau=0.1]
selection_0 = lampc.lamp_select(scores_lp_0, h, lm_head_t_0, 1, None, False, 'emulate m4', 'strict tau=0.1', 'softcap=none biased=0', 'fused=0 dense_above=0.25', 0)    # site 0 logits selection
scores_0 = lampc.recompute_scores(scores_lp_0, selection_0, h, lm_head_t_0, 1, 'fused=0 dense_above=0.25')    # site 0 logits recompute
lampc_tap_0 = lampc_tap_0(selection_0, None)    # site 0 logits tap""")


NATIVE = SitePolicy(format="bf16", backend="native", criterion="strict", tau=0.1)


def test_native_sites_read_each_weight_through_its_cast():
    """A native producer's weight operand is read through the weight's cast (a CastWeight module, cast once while
    the weight is unchanged), passed as w_low / k_low; one module per weight, whichever sites read it."""
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.block, self.head = Block(), Head()

        def forward(self, x):
            return self.head(self.block(x))

    gm = capture(Model(), torch.randn(1, 3, 8))
    result = rewrite_sites(gm, [linear_sites({"gelu": NATIVE}), logits_site(NATIVE), lowered_matmuls(NATIVE)])
    assert [s.kind for s in result.sites] == ["gelu", "logits"]
    assert_expected_inline(listing(gm), """\
t_default = t(block_up_weight)    # site 0 gelu operand
lampc_cast_bf16_block_up_weight = lampc_cast_bf16_block_up_weight(t_default)    # site 0 gelu operand
y_lp_0 = lampc.lowp_matmul(x, t_default, block_up_bias, 'native bf16', 'fused=0 dense_above=0.25', w_low=lampc_cast_bf16_block_up_weight)    # site 0 gelu producer [bf16/native strict tau=0.1]
selection_0 = lampc.component_select(y_lp_0, x, t_default, block_up_bias, None, None, 0, 'gelu', 'native bf16', 'strict tau=0.1', 'fused=0 dense_above=0.25', 0)    # site 0 gelu selection
y_0 = lampc.recompute_linear(y_lp_0, selection_0, x, t_default, block_up_bias, 'fused=0 dense_above=0.25')    # site 0 gelu recompute
lampc_tap_0 = lampc_tap_0(selection_0, None)    # site 0 gelu tap
gelu = gelu(y_0)
t_default_1 = t(block_down_weight)    # site None lowered operand
lampc_cast_bf16_block_down_weight = lampc_cast_bf16_block_down_weight(t_default_1)    # site None lowered operand
lowered_linear_1 = lampc.lowp_matmul(gelu, t_default_1, block_down_bias, 'native bf16', 'fused=0 dense_above=0.25', w_low=lampc_cast_bf16_block_down_weight)    # site None lowered producer [bf16/native strict tau=0.1]
add = add(x, lowered_linear_1)
layer_norm = layer_norm(add, [8], block_norm_weight, block_norm_bias, 1e-05, False)
lm_head_t_1 = t(head_lm_head_weight)    # site 1 logits operand
lampc_cast_bf16_head_lm_head_weight = lampc_cast_bf16_head_lm_head_weight(lm_head_t_1)    # site 1 logits operand
scores_lp_1 = lampc.lowp_scores(layer_norm, lm_head_t_1, 1, 'native bf16', k_low=lampc_cast_bf16_head_lm_head_weight)    # site 1 logits producer [bf16/native strict tau=0.1]
selection_1 = lampc.lamp_select(scores_lp_1, layer_norm, lm_head_t_1, 1, None, False, 'native bf16', 'strict tau=0.1', 'softcap=none biased=0', 'fused=0 dense_above=0.25', 1)    # site 1 logits selection
scores_1 = lampc.recompute_scores(scores_lp_1, selection_1, layer_norm, lm_head_t_1, 1, 'fused=0 dense_above=0.25')    # site 1 logits recompute
lampc_tap_1 = lampc_tap_1(selection_1, None)    # site 1 logits tap""")


def test_a_head_with_a_bias_is_no_logits_site():
    result, _ = rewrite(capture(Head(bias=True), torch.randn(1, 3, 8)), logits_site(POLICY))
    assert result.sites == [] and "lm_head with a bias" in result.skips[0].reason


def test_lowered_matmuls_create_no_site():
    result, text = rewrite(capture(Block(), torch.randn(2, 3, 8)), lowered_matmuls(POLICY))
    assert result.modified and result.sites == []
    assert_expected_inline(text, """\
t_default = t(up_weight)    # site None lowered operand
lowered_linear = lampc.lowp_matmul(x, t_default, up_bias, 'emulate m4', 'fused=0 dense_above=0.25')    # site None lowered producer [m4/bk1/emulate strict tau=0.1]
gelu = gelu(lowered_linear)
t_default_1 = t(down_weight)    # site None lowered operand
lowered_linear_1 = lampc.lowp_matmul(gelu, t_default_1, down_bias, 'emulate m4', 'fused=0 dense_above=0.25')    # site None lowered producer [m4/bk1/emulate strict tau=0.1]
add = add(x, lowered_linear_1)
layer_norm = layer_norm(add, [8], norm_weight, norm_bias, 1e-05, False)""")


def test_sites_are_numbered_across_kinds_in_order():
    class Everything(nn.Module):
        def __init__(self):
            super().__init__()
            self.block, self.head = Block(), Head()

        def forward(self, x, mask):
            q = self.block(x).unsqueeze(1)
            a = torch.softmax(torch.matmul(q, q.transpose(-1, -2)) * (1 / math.sqrt(8)) + mask, dim=-1)
            return self.head(torch.matmul(a, q).squeeze(1))

    gm = capture(Everything(), torch.randn(1, 3, 8), torch.zeros(1, 1, 3, 3))
    result = rewrite_sites(gm, [attention_sites(POLICY), linear_sites({"layer_norm": POLICY, "gelu": POLICY}),
                                logits_site(POLICY)])
    assert [(s.index, s.kind) for s in result.sites] == [(0, "attention"), (1, "gelu"), (2, "layer_norm"),
                                                         (3, "logits")]
    tagged = {n.meta["lampc"].site for n in gm.graph.nodes if "lampc" in n.meta}
    assert tagged == {0, 1, 2, 3}
