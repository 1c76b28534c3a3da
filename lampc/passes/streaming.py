"""The streaming attention site (SitePolicy.streaming): the whole attention, p·v included, as one op; and K
smoothing (SitePolicy.smooth_k), the keys less their mean before the producer.

The materialised site rewrites the scores and keeps the model's softmax and p·v; the streaming site takes those
too, since only an op that owns the softmax and p·v can walk the keys in chunks:

    before                                   after
    s = matmul(q, k_t)                       both = lampc.lamp_attention(q, k_t, v, scale, mask, False,
    s = s * scale                                       producer, rule, facts, execution, site)
    s = c * tanh(s / c)      (Gemma2)        o    = both[0]
    s = s + mask                             counts = both[1]
    p = softmax(s, -1)                       lampc_tap_<site>(counts, mask)       # entries and tiles counted
    p = to(p, float32); dropout(p, 0.0)
    o = matmul(p, v)

Bloom's bmm(view(p, [B·H, T, L]), v) takes v viewed to 4-D and the output viewed back; the SDPA expansion's
`p * any(mask, -1)` multiplies the output rows instead. Anything else between the softmax and p·v (a softmax the
model also returns, a head mask) is an error naming it: the streaming site cannot give T x L probabilities.

A materialised site with an exp_format has its softmax rounded instead (the streaming op rounds its own):

    p = softmax(s, -1)           ->  p = lampc.rounded_softmax(s, 'fp8_e4m3')

K smoothing, at materialised and streaming sites alike:

    before                                   after
    s = matmul(q, k_t)                       k_mean = mean(k_t, [-1], keepdim=True)    # over the keys
                                             k_t    = k_t - k_mean
                                             s      = lampc ops (q, k_t, ...)
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from ..policy import SitePolicy
from .driver import Emission, Emitted

aten = torch.ops.aten

PASS_THROUGH = (aten.to.dtype, aten.dropout.default, aten.clone.default)
"""Ops between the softmax and p·v that leave an FP32 inference value as it is (a cast to float32, dropout with
train=False or p=0)."""
VALUE_PRODUCTS = (aten.matmul.default, aten.bmm.default)
ASSERTS = (aten._assert_tensor_metadata.default,)


def smoothed_keys(em: Emission, k_t, policy: SitePolicy):
    """k_t less its mean over the keys (its last dimension) when the policy smooths K; else k_t."""
    if not policy.smooth_k:
        return k_t
    k_mean = em.call(aten.mean.dim, (k_t, [-1], True), role="operand", name=f"k_mean_{em.index}")
    return em.call(aten.sub.Tensor, (k_t, k_mean), role="operand", name=f"k_smooth_{em.index}")


def rounded_exponentials(em: Emission, softmax: fx.Node, policy: SitePolicy) -> None:
    """Replace the model's softmax by lampc.rounded_softmax when the policy rounds the exponentials."""
    if policy.exp_format is None:
        return
    with em.graph.inserting_before(softmax):
        rounded = em.call(torch.ops.lampc.rounded_softmax.default, (softmax.args[0], policy.exp_format.name),
                          role="output", name=f"probabilities_{em.index}")
    softmax.replace_all_uses_with(rounded)
    em.graph.erase_node(softmax)


def _real_users(node: fx.Node) -> list[fx.Node]:
    return [u for u in node.users if not (u.op == "call_function" and u.target in ASSERTS)]


def _passes_through(node: fx.Node) -> bool:
    if node.op != "call_function" or node.target not in PASS_THROUGH:
        return False
    if node.target is aten.to.dtype:
        return node.args[1] == torch.float32
    if node.target is aten.dropout.default:
        return node.args[1] in (0, 0.0) or node.args[2] is False
    return True


def match_values(em: Emission, softmax: fx.Node):
    """(p·v node, v, the nodes between, a row multiplier or None, whether p·v is Bloom's 3-D bmm) from the softmax;
    ValueError naming what sits in the way."""
    chain, node, row_factor = [], softmax, None
    while True:
        users = _real_users(node)
        if len(users) != 1:
            raise ValueError(f"SitePolicy.streaming at {em.module}: the softmax's probabilities ({node.name}) are used "
                             f"by {', '.join(u.name for u in users) or 'nothing'}, not by p·v alone; a streaming site "
                             "never holds them: compile with streaming=False")
        user = users[0]
        if user.target in VALUE_PRODUCTS and user.args[0] is node:
            return user, user.args[1], chain, row_factor, user.target is aten.bmm.default
        if _passes_through(user) or user.target in (aten.view.default, aten.reshape.default):
            chain.append(user)
        elif user.target is aten.mul.Tensor and row_factor is None and _is_row_factor(user, node):
            row_factor = user.args[1] if user.args[0] is node else user.args[0]
            chain.append(user)
        else:
            raise ValueError(f"SitePolicy.streaming at {em.module}: {user.name} ({user.target}) sits between the "
                             "softmax and p·v; the streaming site computes softmax(s + mask) @ v only: compile "
                             "with streaming=False")
        node = user


def _is_row_factor(mul: fx.Node, probs: fx.Node) -> bool:
    """mul(p, r) with r one value per row (…, T, 1): the SDPA expansion's 0 for rows with no key."""
    other = mul.args[1] if mul.args[0] is probs else mul.args[0]
    val = other.meta.get("val") if isinstance(other, fx.Node) else None
    return isinstance(val, torch.Tensor) and val.dim() >= 2 and str(val.shape[-1]) == "1"


def emit_streaming(em: Emission, match, q, k_t, mask, policy: SitePolicy) -> Emitted:
    """The streaming op in place of the attention from the scores to p·v (module docstring); q and k_t 4-D."""
    product, v, chain, row_factor, bloom = match_values(em, match.softmax)
    lampc = torch.ops.lampc
    (producer, rule, facts, execution), index = em.configure(policy), em.index
    with em.graph.inserting_before(product):
        if bloom:  # v is (B·H, L, Dv): the op works on (B, H, …)
            batch, heads = match.view.args[1][:2]
            v = em.call(aten.view.default, (v, [batch, heads, -1, v.meta["val"].shape[-1]]), role="operand")
        k_t = smoothed_keys(em, k_t, policy)
        both = em.call(lampc.lamp_attention.default, (q, k_t, v, match.scale, mask, False, producer, rule, facts,
                                                      execution, index), role="fused", name=f"site_{index}")
        out = em.call(operator.getitem, (both, 0), role="output", name=f"attention_{index}")
        counts = em.call(operator.getitem, (both, 1), role="selection", name=f"counts_{index}")
        if row_factor is not None:
            out = em.call(aten.mul.Tensor, (out, row_factor), role="output")
        if bloom:  # back to (B·H, T, Dv), by the sizes the model viewed p with
            flat = next(n for n in chain if n.target in (aten.view.default, aten.reshape.default))
            out = em.call(aten.view.default, (out, [*flat.args[1][:2], -1]), role="output")
    asserts = [u for node in [match.softmax, *chain] for u in node.users
               if u.op == "call_function" and u.target in ASSERTS]
    scores_sum = [] if match.softmax.args[0] is match.scores else [match.softmax.args[0]]  # the mask add or cap
    dead = [asserts, product, *reversed(chain), match.softmax, scores_sum, _cap_nodes(match), match.view,
            match.scale_node, match.matmul]
    return Emitted({product: out}, (both, out, counts), counts, mask, per_head=True, tap_after=counts,
                   erase=tuple(dict.fromkeys(_flatten(dead))), producer="baddbmm" if bloom else "matmul",
                   consumer="softmax @ v", rule=policy.summary)


def _cap_nodes(match) -> list:
    """The soft cap's nodes (div, tanh, mul) between the scores and the mask add, last first."""
    node, found = match.softmax.args[0], []
    if node is not match.scores and node.target is aten.add.Tensor:
        node = next(a for a in node.args[:2] if isinstance(a, fx.Node) and a is not match.mask)
    while isinstance(node, fx.Node) and node is not match.scores and node.op == "call_function":
        found.append(node)
        node = node.args[0] if isinstance(node.args[0], fx.Node) else node.args[1]
    return found


def _flatten(items):
    for item in items:
        if isinstance(item, list):
            yield from _flatten(item)
        elif item is not None:
            yield item
