"""The attention site: softmax ∘ (scaled QKᵀ + mask), found and rewritten into LAMP form.

Pattern (every op optional but the matmul and the softmax; scale by mul or div with a number, in place or not):

    s = matmul(q, k_t)          # f32[B, H, T, L]
    s = s * scale               # or s / sqrt(d)
    s = c * tanh(s / c)         # logit soft-capping (Gemma2): kept in the graph, the look-ahead sees through it
    s = s + mask                # additive mask, f32[B, 1, T, L]
    p = softmax(s, -1)

Rewrite (one named op per LAMP step; the mask add and the softmax are kept as they were):

    before                              after
    s = matmul(q, k_t)                  s_hat = lampc.lowp_scores(q, k_t, scale, producer)
    s = s * scale                       sel   = lampc.lamp_select(s_hat, q, k_t, scale, mask, False, ..., site)
    s = s + mask                        s     = lampc.recompute_scores(s_hat, sel, q, k_t, scale, execution)
    p = softmax(s, -1)                  lampc_tap_<site>(sel, mask)          # recompute-rate statistics
                                        s = s + mask
                                        p = softmax(s, -1)

With `SitePolicy.fused` the three ops are one, `lampc.lamp_scores` (lampc/passes/softmax_site.py); with
`SitePolicy.streaming` the whole attention, p·v included, is one op, `lampc.lamp_attention`
(lampc/passes/streaming.py); with `smooth_k` the keys lose their mean first. Bloom's ALiBi
(`baddbmm(bias, q, k_t, beta, alpha)` viewed to 4-D) is rewritten in 4-D with the bias outside the ops
(`_emit_biased`). A softmax that does not fit becomes a `Skip` with the reason; a graph already rewritten is left
unchanged. `attention_sites(policy)` is the site kind `rewrite_sites` runs.
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass

import torch
from torch import fx

from ..graph_view import module_path
from ..ops import ATTENTION_SITE_OPS, FUSED_SITE_OPS, SOFTMAX_SITE_OPS
from ..policy import SitePolicy
from ..site_kinds import ATTENTION
from .driver import Emission, Emitted, SiteKind
from .result import Skip
from .softmax_site import emit_softmax_ops
from .streaming import emit_streaming, rounded_exponentials, smoothed_keys

aten = torch.ops.aten

SOFTMAX_OPS = (aten.softmax.int, aten._softmax.default)
SITE_OPS = SOFTMAX_SITE_OPS + FUSED_SITE_OPS + ATTENTION_SITE_OPS
MUL_OPS = (aten.mul.Tensor, aten.mul.Scalar, aten.mul_.Tensor, aten.mul_.Scalar)
DIV_OPS = (aten.div.Tensor, aten.div.Scalar, aten.div_.Tensor, aten.div_.Scalar)
SCALE_OPS = MUL_OPS + DIV_OPS  # in-place too: Falcon's eager attention does `scores /= sqrt(d)`
MASK_ADD_OPS = (aten.add.Tensor,)


@dataclass
class AttentionMatch:
    """The nodes of one attention site, as found in the graph."""

    softmax: fx.Node
    matmul: fx.Node
    scale: float
    scale_node: fx.Node | None
    mask: fx.Node | None
    softcap: float | None = None  # logit soft-capping c: the softmax sees c·tanh(s/c) (+ mask)
    bias: fx.Node | None = None  # baddbmm's additive input (ALiBi), f32[B·H, 1, L]
    beta: float = 1.0  # its factor
    view: fx.Node | None = None  # baddbmm's output viewed to f32[B, H, T, L]

    @property
    def scores(self) -> fx.Node:
        """The node whose value the rewrite replaces: the scaled scores (with a bias: their 4-D view)."""
        return self.view or self.scale_node or self.matmul


def match_attention(softmax: fx.Node) -> AttentionMatch | str:
    """Match the pattern ending at `softmax`; on failure return the reason."""
    value = softmax.args[0]
    ndim = _ndim(value)
    dim = softmax.args[1] if len(softmax.args) > 1 else softmax.kwargs.get("dim")
    if ndim is not None and dim not in (-1, ndim - 1):
        return f"softmax over dim {dim}, not the last (key) dimension"
    if not isinstance(value, fx.Node):
        return "softmax input is not a graph value"
    if _is_lampc(value):
        return "already rewritten by lampc"
    candidates = [(value, None)]
    if value.op == "call_function" and value.target in MASK_ADD_OPS:
        a, b = value.args[:2]
        candidates = [(x, m) for x, m in ((a, b), (b, a)) if isinstance(x, fx.Node) and isinstance(m, fx.Node)]
    reasons = []
    for scores, mask in candidates:
        softcap, cap_nodes = None, []
        capped = _match_softcap(scores)
        if capped is not None:
            scores, softcap, cap_nodes = capped
        biased = _match_baddbmm(scores)
        if isinstance(biased, str):
            reasons.append(biased)
            continue
        if biased is not None:
            baddbmm, view, bias, beta, alpha = biased
            for producer, nxt in ((baddbmm, view), (view, value if mask is not None else softmax)):
                if len(producer.users) != 1:
                    return f"scores {producer.name} are also used outside the softmax"
            return AttentionMatch(softmax, baddbmm, alpha, None, mask, softcap, bias, beta, view)
        found = _match_scaled_matmul(scores)
        if isinstance(found, str):
            reasons.append(found)
            continue
        matmul, scale_node, scale = found
        chain = [n for n in (matmul, scale_node, *cap_nodes) if n is not None]
        consumer = value if mask is not None else softmax
        for producer, nxt in zip(chain, chain[1:] + [consumer]):
            if len(producer.users) != 1:
                users = ", ".join(u.name for u in producer.users if u is not nxt)
                return f"scores {producer.name} are also used outside the softmax ({users})"
        if _dtype(matmul) not in (None, torch.float32):
            return f"scores are {_dtype(matmul)}, lampc rewrites FP32 graphs"
        return AttentionMatch(softmax, matmul, scale, scale_node, mask, softcap)
    return reasons[0] if reasons else "softmax input is not matmul [* scale] [+ mask]"


def _match_baddbmm(node: fx.Node):
    """node = view(baddbmm(bias, q, k_t, beta=b, alpha=a), [B, H, T, -1]) (Bloom's ALiBi attention):
    (baddbmm, view, bias, beta, alpha); None if node is no such view; a reason if it is one lampc cannot take."""
    if not (node.op == "call_function" and node.target in (aten.view.default, aten.reshape.default)):
        return None
    inner = node.args[0]
    if not (isinstance(inner, fx.Node) and inner.op == "call_function" and inner.target == aten.baddbmm.default):
        return None
    shape = node.args[1]
    if not (isinstance(shape, (list, tuple)) and len(shape) == 4):
        return f"baddbmm scores {inner.name} are viewed to {shape}, not (batch, heads, rows, keys)"
    bias, q, k_t = inner.args[:3]
    beta, alpha = inner.kwargs.get("beta", 1.0), inner.kwargs.get("alpha", 1.0)
    if not all(isinstance(v, (int, float)) for v in (beta, alpha)) or not isinstance(bias, fx.Node):
        return f"baddbmm {inner.name} has a tensor beta/alpha or no bias tensor"
    val = bias.meta.get("val")
    if not (isinstance(val, torch.Tensor) and val.dim() == 3 and str(val.shape[1]) == "1"):
        return f"baddbmm {inner.name}: its bias is not one row of keys per (batch, head) (ALiBi's shape)"
    return inner, node, bias, float(beta), float(alpha)


def _match_softcap(node: fx.Node):
    """node = mul(tanh(div(x, c)), c) (or the mul forms of either): (x, c, [div, tanh, mul]), else None."""
    if not (node.op == "call_function" and node.target in MUL_OPS):
        return None
    a, b = node.args[:2]
    tanh, outer = (a, b) if isinstance(a, fx.Node) else (b, a)
    if not (isinstance(tanh, fx.Node) and tanh.op == "call_function" and tanh.target == aten.tanh.default
            and isinstance(outer, (int, float))):
        return None
    inner = tanh.args[0]
    if not (isinstance(inner, fx.Node) and inner.op == "call_function" and inner.target in SCALE_OPS):
        return None
    x, c = inner.args[:2]
    if not isinstance(x, fx.Node) or not isinstance(c, (int, float)) or c == 0:
        return None
    divisor = float(c) if inner.target in DIV_OPS else 1.0 / float(c)
    if outer <= 0 or abs(divisor - outer) > 1e-6 * outer:
        return None  # c·tanh(s/d) with d != c is no soft cap
    return x, float(outer), [inner, tanh, node]


def _match_scaled_matmul(node: fx.Node):
    """node = matmul(q, k_t) [* c | / c]  ->  (matmul, scale_node, scale) or a reason."""
    scale, scale_node = 1.0, None
    if node.op == "call_function" and node.target in SCALE_OPS:
        x, c = node.args[:2]
        if isinstance(x, (int, float)) and node.target in MUL_OPS:
            x, c = c, x
        if not isinstance(c, (int, float)) or not isinstance(x, fx.Node):
            return f"scores are scaled by a tensor ({node.name}), not a number"
        scale = float(c) if node.target in MUL_OPS else 1.0 / float(c)
        scale_node, node = node, x
    if _is_lampc(node):
        return "already rewritten by lampc"
    if not (node.op == "call_function" and node.target == aten.matmul.default):
        what = node.target if node.op == "call_function" else node.op
        return f"softmax input comes from {what}, not matmul [* scale] [+ mask]"
    return node, scale_node, scale


def _is_lampc(node: fx.Node) -> bool:
    """A lampc site op, or an output of the fused one."""
    if node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[0], fx.Node):
        node = node.args[0]
    return node.op == "call_function" and node.target in SITE_OPS


def _ndim(value) -> int | None:
    val = value.meta.get("val") if isinstance(value, fx.Node) else None
    return val.dim() if isinstance(val, torch.Tensor) else None


def _dtype(node: fx.Node):
    val = node.meta.get("val")
    return val.dtype if isinstance(val, torch.Tensor) else None


def find_attention(gm: fx.GraphModule) -> tuple[list[AttentionMatch], list[Skip]]:
    """Every softmax of the graph: matched attention sites, and skips with reasons."""
    matches, skips = [], []
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in SOFTMAX_OPS:
            found = match_attention(node)
            if isinstance(found, str):
                skips.append(Skip("attention", module_path(node), node.name, found))
            else:
                matches.append(found)
    return matches, skips


def attention_sites(policy: SitePolicy) -> SiteKind:
    """The attention site kind under `policy` (a soft cap or a bias found at a site refines it there)."""
    return SiteKind(ATTENTION, find_attention, lambda em, match: _emit(em, match, policy),
                    anchor=lambda match: match.matmul)


def _emit(em: Emission, match: AttentionMatch, policy: SitePolicy) -> Emitted:
    policy = em.site_policy(ATTENTION, policy)
    if match.softcap is not None:  # the look-ahead differentiates through the cap, which stays in the graph
        policy = dataclasses.replace(policy, softcap=match.softcap)
        if policy.smooth_k:
            raise ValueError(f"SitePolicy.smooth_k at {em.module}: the soft cap c·tanh(s/c) moves with the scores, "
                             "so the keys' mean would change the softmax; compile this model without smooth_k")
    if match.bias is not None:
        return _emit_biased(em, match, dataclasses.replace(policy, biased=True))
    em.configure(policy)
    q, k_t = match.matmul.args[:2]
    if policy.streaming:
        return emit_streaming(em, match, q, k_t, match.mask, policy)
    consumer = next(iter(match.scores.users))  # the mask add or the softmax: after q, k_t and the mask
    with em.graph.inserting_before(consumer):
        k_t = smoothed_keys(em, k_t, policy)
        new = emit_softmax_ops(em, q, k_t, match.scale, match.mask, policy)
    rounded_exponentials(em, match.softmax, policy)
    return Emitted({match.scores: new.scores}, (new.first, new.selection, new.scores), new.selection, match.mask,
                   per_head=True, tap_after=new.last, erase=(match.scale_node, match.matmul), producer="matmul",
                   consumer="softmax",
                   rule=policy.summary)


def _emit_biased(em: Emission, match: AttentionMatch, policy: SitePolicy) -> Emitted:
    """softmax(view(baddbmm(bias, q, k_t, beta, alpha)) + mask), Bloom's ALiBi attention, in 4-D:

        before                                         after
        s = baddbmm(bias, q, k_t, beta=b, alpha=a)     q4, k4, b4 = view(q), view(k_t), view(bias) * b
        s = view(s, [B, H, T, -1])                     s = lampc ops (q4, k4, a, mask + b4)   # the look-ahead's
        p = softmax(s + mask)                          s = s + b4                             # softmax sees b4
                                                       p = softmax(s + mask)
    """
    baddbmm, view = match.matmul, match.view
    _, q, k_t = baddbmm.args[:3]
    batch, heads, rows = view.args[1][:3]
    depth = q.meta["val"].shape[-1]
    em.configure(policy)  # the operands below carry the site's configuration too
    with em.graph.inserting_before(next(iter(view.users))):
        q4 = em.call(aten.view.default, (q, [batch, heads, rows, -1]), role="operand")
        k4 = em.call(aten.view.default, (k_t, [batch, heads, depth, -1]), role="operand")
        b4 = em.call(aten.view.default, (match.bias, [batch, heads, 1, -1]), role="operand")
        if match.beta != 1.0:
            b4 = em.call(aten.mul.Tensor, (b4, match.beta), role="operand")
        lookahead_mask = b4 if match.mask is None else em.call(aten.add.Tensor, (match.mask, b4), role="operand")
        if policy.streaming:  # the op's softmax sees s + mask + b4, as the model's
            return emit_streaming(em, match, q4, k4, lookahead_mask, policy)
        k4 = smoothed_keys(em, k4, policy)
        new = emit_softmax_ops(em, q4, k4, match.scale, lookahead_mask, policy)
        out = em.call(aten.add.Tensor, (new.scores, b4), role="output", name=f"scores_biased_{em.index}")
    rounded_exponentials(em, match.softmax, policy)
    return Emitted({view: out}, (new.first, new.selection, new.scores), new.selection, lookahead_mask,
                   per_head=True, tap_after=new.last, erase=(view, baddbmm), producer="baddbmm",
                   consumer="softmax", rule=policy.summary)
