"""Independent plain-torch test oracle for LAMP attention.

Written from docs/METHOD.md semantics only; it deliberately does not import anything from ``lampc``.
Everything here favours obviousness over speed: loops over the reduction dimension, float64 for the
selection arithmetic, explicit masks.  Sizes in tests are tiny.

Public API
----------
round_mantissa(x, m)                                   RN-even to m explicit mantissa bits, FP32 exponent range
lp_matmul_ref(a, b, m, block_k=1)                      low-precision-accumulator matmul (strict or blocked)
select_ref(s_hat, visible, criterion, tau, ...)        LAMP selection masks (uniform/target/strict/relaxed/budget/oracle)
lamp_scores_ref(q, k, scale, visible, m, block_k, criterion, tau, ...) -> (scores, selected)
gpt2_forward_ref(hf_model, input_ids, attention_mask=None, *, m, ...)  -> (logits, selected_per_layer)
llama_forward_ref(hf_model, input_ids, attention_mask=None, *, m, ...) -> (logits, selected_per_layer)
falcon_forward_ref / gemma2_forward_ref / bloom_forward_ref: the same for Falcon (parallel attention, multi-query,
    scores divided in place), Gemma2 (logit soft-capping, four norms per layer) and Bloom (ALiBi bias)
"""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "round_mantissa",
    "lp_matmul_ref",
    "select_ref",
    "lamp_scores_ref",
    "visibility_mask",
    "gpt2_forward_ref",
    "llama_forward_ref",
    "falcon_forward_ref",
    "gemma2_forward_ref",
    "bloom_forward_ref",
    "CRITERIA",
]

CRITERIA = ("uniform", "target", "strict", "relaxed", "budget", "oracle")

_FP32_MIN_NORMAL_EXP = -126  # exponent of the smallest normal float32 (2**-126)


# ---------------------------------------------------------------------------------------------
# Number model
# ---------------------------------------------------------------------------------------------
def round_mantissa(x: torch.Tensor, m: int) -> torch.Tensor:
    """Round float32 ``x`` to ``m`` explicit mantissa bits (round to nearest, ties to even).

    The FP32 exponent range is kept, including FP32's subnormal grid (a subnormal keeps the same
    absolute spacing as the smallest normal binade, i.e. this equals rounding the FP32 bit pattern,
    which is what float32 -> bfloat16 does for m = 7).  Values that round above the largest finite
    float32 become +-inf.  NaN and +-inf pass through.  m = 23 is the identity.

    Implementation (deliberately not a bit trick): in float64, find the binade exponent E of |x|
    (clamped to -126 so subnormals use the fixed subnormal spacing), the spacing ulp = 2**(E - m),
    and round x / ulp to an integer with torch.round (half to even).  All steps are exact in float64.
    """
    if x.dtype != torch.float32:
        raise TypeError(f"round_mantissa expects float32, got {x.dtype}")
    if not (isinstance(m, numbers.Integral) and 0 <= int(m) <= 23):
        raise ValueError(f"m must be an int in [0, 23], got {m!r}")
    m = int(m)
    if m == 23:
        return x.clone()
    x64 = x.to(torch.float64)
    finite = torch.isfinite(x64)
    safe = torch.where(finite, x64, torch.zeros_like(x64))
    _, e = torch.frexp(safe)  # safe = frac * 2**e with |frac| in [0.5, 1)  (0 -> e = 0)
    binade = torch.clamp(e.to(torch.float64) - 1.0, min=float(_FP32_MIN_NORMAL_EXP))
    ulp = torch.pow(torch.full_like(safe, 2.0), binade - m)
    r64 = torch.round(safe / ulp) * ulp  # exact: power-of-two scaling, integer rounding
    r32 = r64.to(torch.float32)  # exact unless |r64| >= 2**128, which converts to +-inf
    return torch.where(finite, r32, x)


def lp_matmul_ref(a: torch.Tensor, b: torch.Tensor, m: int, block_k: int = 1) -> torch.Tensor:
    """``a @ b`` with a low-precision accumulator (inputs and products stay FP32).

    For each output element, terms p_k = fl32(a_ik * b_kj) are taken in k order.  The K terms are cut
    into consecutive blocks of ``block_k`` (the last one may be shorter); each block's partial sum is
    a plain sequential FP32 sum starting at 0; then acc = RN_m(fl32(acc + block_sum)), acc starting
    at 0.  block_k = 1 is the strict model acc = RN_m(fl32(acc + p_k)).
    Shapes: a (..., M, K), b (..., K, N), broadcasting over the leading dims; float32 only.
    """
    if a.dtype != torch.float32 or b.dtype != torch.float32:
        raise TypeError("lp_matmul_ref expects float32 inputs")
    if block_k < 1:
        raise ValueError("block_k must be >= 1")
    K = a.shape[-1]
    if b.shape[-2] != K:
        raise ValueError(f"inner dims differ: {tuple(a.shape)} @ {tuple(b.shape)}")
    out_shape = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
    acc = torch.zeros(out_shape, dtype=torch.float32, device=a.device)
    for start in range(0, K, block_k):
        block_sum = torch.zeros(out_shape, dtype=torch.float32, device=a.device)
        for k in range(start, min(start + block_k, K)):
            prod = a[..., :, k : k + 1] * b[..., k : k + 1, :]  # fl32 product, (…, M, N)
            block_sum = block_sum + prod
        acc = round_mantissa(acc + block_sum, m)
    return acc


# ---------------------------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------------------------
def _masked_softmax(s: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Softmax of s over cand entries of each row (last dim); 0 elsewhere and in empty rows."""
    neg_inf = torch.tensor(float("-inf"), dtype=s.dtype, device=s.device)
    masked = torch.where(cand, s, neg_inf)
    rowmax = masked.amax(dim=-1, keepdim=True)
    rowmax = torch.where(torch.isfinite(rowmax), rowmax, torch.zeros_like(rowmax))
    e = torch.where(cand, torch.exp(masked - rowmax), torch.zeros_like(s))
    denom = e.sum(dim=-1, keepdim=True)
    denom = torch.where(denom > 0, denom, torch.ones_like(denom))
    return e / denom


def _pick_top_count(score: torch.Tensor, cand: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Per row, select the ``count`` candidate entries with the largest ``score`` (ties: any order)."""
    neg_inf = torch.tensor(float("-inf"), dtype=score.dtype, device=score.device)
    keyed = torch.where(cand, score, neg_inf)
    # non-candidates get -inf; a NaN score would sort first in torch, so map NaN candidates to +inf
    keyed = torch.where(cand & torch.isnan(keyed), torch.full_like(keyed, float("inf")), keyed)
    order = torch.argsort(keyed, dim=-1, descending=True, stable=True)
    L = score.shape[-1]
    ranks_sel = torch.arange(L, device=score.device) < count.unsqueeze(-1)
    sel = torch.zeros_like(cand).scatter(-1, order, ranks_sel.expand_as(order))
    return sel & cand


def _strict_sensitivity(a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return 2.0 * a * (1.0 - a) * s.abs()


def select_ref(
    s_hat: torch.Tensor,
    visible: torch.Tensor,
    criterion: str,
    tau: float | None = None,
    *,
    length_scaling: bool = False,
    l_ref: int = 1024,
    budget: int | float | None = None,
    s_fp32: torch.Tensor | None = None,
    count_from: torch.Tensor | None = None,
    compute_dtype: torch.dtype = torch.float64,
    softcap: float | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """LAMP selection mask for rows of scores ``s_hat`` (..., T, L); ``visible`` broadcasts to it.

    Returns a bool tensor shaped like s_hat; True = recompute that score in FP32.

    Candidates C = visible entries whose s_hat is finite.  Every rule is evaluated over C only
    (softmax, min, max and sorting over C); afterwards every visible entry with a non-finite s_hat is
    added.  Invisible entries are never selected; rows without visible keys select nothing.
    L_t (length scaling, budget fraction) = number of visible keys of the row.
    All sensitivity arithmetic runs in ``compute_dtype`` (default float64, i.e. close to exact math).

    What the softmax sees need not be s itself (docs/NUMERICS.md §6):
    - ``softcap`` c (Gemma2): the softmax sees z = c·tanh(s/c); the chain rule multiplies every
      sensitivity by g = 1 - tanh²(s/c).  strict: 2·a(1-a)·g·|s| with a = softmax(z); relaxed:
      |s|·g·exp(z - max z) against tau times the row's largest; target on a; budget ranks the strict
      weight; oracle: 2·p(1-p)·|z_fp32 - z_hat| with p = softmax(z_fp32).
    - ``bias`` b (ALiBi, broadcast to s_hat, finite): the softmax sees z = s + b; the error scale stays |s|.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; expected one of {CRITERIA}")
    if length_scaling and criterion not in ("strict", "relaxed"):
        raise ValueError("length_scaling combines only with 'strict' or 'relaxed'")
    visible = torch.broadcast_to(visible.to(torch.bool), s_hat.shape)
    finite = torch.isfinite(s_hat)
    cand = visible & finite
    forced = visible & ~finite
    L_t = visible.sum(dim=-1)  # (..., T) int
    n_cand = cand.sum(dim=-1)

    s = torch.where(cand, s_hat, torch.zeros_like(s_hat)).to(compute_dtype)
    z, gain = _softmax_input(s, softcap, bias, compute_dtype)

    def tau_per_row(relaxed: bool) -> torch.Tensor:
        t = torch.full(L_t.shape, float(tau), dtype=compute_dtype, device=s.device)
        if length_scaling:
            Lf = torch.clamp(L_t.to(compute_dtype), min=1.0)
            t = t * torch.sqrt(float(l_ref) / Lf)
            if relaxed:
                t = torch.clamp(t, max=1.0)
        return t

    if criterion == "uniform":
        sel = torch.zeros_like(cand)

    elif criterion == "strict":
        _need(tau, "tau")
        a = _masked_softmax(z, cand)
        sens = _strict_sensitivity(a, s) * gain
        sel = cand & (sens > tau_per_row(relaxed=False).unsqueeze(-1))

    elif criterion == "relaxed":
        _need(tau, "tau")
        neg_inf = torch.tensor(float("-inf"), dtype=s.dtype, device=s.device)
        zmax = torch.where(cand, z, neg_inf).amax(dim=-1, keepdim=True)
        zmax = torch.where(torch.isfinite(zmax), zmax, torch.zeros_like(zmax))
        w = torch.where(cand, s.abs() * gain * torch.exp(z - zmax), torch.zeros_like(s))
        wmax = w.amax(dim=-1, keepdim=True)
        sel = cand & (w > tau_per_row(relaxed=True).unsqueeze(-1) * wmax)

    elif criterion == "target":
        _need(tau, "tau")
        a = _masked_softmax(z, cand)
        big = torch.ones_like(a) * 2.0
        amin = torch.where(cand, a, big).amin(dim=-1, keepdim=True)  # (..., T, 1); 2 in empty rows
        keyed = torch.where(cand, a, torch.full_like(a, -1.0))
        order = torch.argsort(keyed, dim=-1, descending=True, stable=True)
        a_sorted = torch.gather(torch.where(cand, a, torch.zeros_like(a)), -1, order)
        prefix = torch.cat([torch.zeros_like(a_sorted[..., :1]), torch.cumsum(a_sorted, dim=-1)], dim=-1)
        k_range = torch.arange(prefix.shape[-1], device=s.device)
        ok = (2.0 - prefix - 2.0 * amin <= float(tau)) & (k_range <= n_cand.unsqueeze(-1))
        any_ok = ok.any(dim=-1)
        k_first = torch.argmax(ok.to(torch.int8), dim=-1)  # first True
        k_star = torch.where(any_ok, k_first, n_cand)  # no prefix satisfies (tau < 1): all candidates
        L = s.shape[-1]
        rank_sel = torch.arange(L, device=s.device) < k_star.unsqueeze(-1)
        sel = torch.zeros_like(cand).scatter(-1, order, rank_sel.expand_as(order)) & cand

    elif criterion == "budget":
        if budget is None or isinstance(budget, bool):
            raise ValueError("criterion 'budget' needs budget=int k >= 0 or float f in (0, 1]")
        if isinstance(budget, numbers.Integral):
            if budget < 0:
                raise ValueError("integer budget must be >= 0")
            count = torch.clamp(L_t, max=int(budget))
        else:
            f = float(budget)
            if not (0.0 < f <= 1.0):
                raise ValueError("fractional budget must be in (0, 1]")
            count = torch.ceil(f * L_t.to(torch.float64)).to(L_t.dtype)  # double-precision f*L_t
        count = torch.minimum(count, n_cand)
        a = _masked_softmax(z, cand)
        sel = _pick_top_count(_strict_sensitivity(a, s) * gain, cand, count)

    else:  # oracle
        if s_fp32 is None or count_from is None:
            raise ValueError("criterion 'oracle' needs s_fp32 and count_from")
        cf = torch.broadcast_to(count_from.to(torch.bool), s_hat.shape)
        count = (cf & cand).sum(dim=-1)
        sf = torch.where(cand, s_fp32, torch.zeros_like(s_fp32)).to(compute_dtype)
        zf, _ = _softmax_input(sf, softcap, bias, compute_dtype)
        p = _masked_softmax(zf, cand)
        no_bias = dict(softcap=softcap, bias=None, compute_dtype=compute_dtype)  # the bias is exact: no error
        error = _softmax_input(sf, **no_bias)[0] - _softmax_input(s, **no_bias)[0]
        contrib = 2.0 * p * (1.0 - p) * error.abs()
        sel = _pick_top_count(contrib, cand, count)

    return (sel & cand) | forced


def _softmax_input(s, softcap, bias, compute_dtype):
    """(z, g): what the softmax sees for scores s, and dz/ds (1 without a cap)."""
    if softcap is None:
        z, gain = s, torch.ones_like(s)
    else:
        t = torch.tanh(s / float(softcap))
        z, gain = float(softcap) * t, 1.0 - t * t
    if bias is not None:
        z = z + torch.broadcast_to(bias, s.shape).to(compute_dtype)
    return z, gain


def _need(value, name):
    if value is None:
        raise ValueError(f"this criterion needs {name}")


# ---------------------------------------------------------------------------------------------
# Attention scores
# ---------------------------------------------------------------------------------------------
def lamp_scores_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    visible: torch.Tensor,
    m: int,
    block_k: int = 1,
    criterion: str = "uniform",
    tau: float | None = None,
    *,
    count_criterion: str | None = None,
    count_tau: float | None = None,
    count_kw: dict | None = None,
    count_from: torch.Tensor | None = None,
    **select_kw,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LAMP attention scores for q (..., T, D), k (..., L, D) (heads already matched).

    s_hat  = RN_m(fl32(lp_matmul_ref(q, kᵀ, m, block_k) * scale))
    s_fp32 = fl32((q @ kᵀ) * scale)   (plain torch.matmul)
    ``scale`` is a Python float multiplied onto a float32 tensor, i.e. torch first converts it to
    float32 (the same expression HF eager uses).
    selected = select_ref(s_hat, visible, criterion, tau, s_fp32=s_fp32, ...)
    scores   = where(selected, s_fp32, s_hat)   (caller adds the additive mask, then softmax)

    For criterion 'oracle' the per-row count comes from ``count_from`` (a mask) or, if that is
    None, from select_ref(s_hat, visible, count_criterion, count_tau, **count_kw) on the same s_hat.
    """
    kt = k.transpose(-1, -2)
    s_hat = round_mantissa(lp_matmul_ref(q, kt, m, block_k) * scale, m)
    s_fp32 = torch.matmul(q, kt) * scale
    if criterion == "oracle" and count_from is None:
        if count_criterion is None:
            raise ValueError("oracle needs count_from or count_criterion")
        same_softmax = {k: v for k, v in select_kw.items() if k in ("softcap", "bias")}
        count_from = select_ref(s_hat, visible, count_criterion, count_tau, **same_softmax, **(count_kw or {}))
    selected = select_ref(
        s_hat, visible, criterion, tau, s_fp32=s_fp32, count_from=count_from, **select_kw
    )
    scores = torch.where(selected, s_fp32, s_hat)
    return scores, selected


def visibility_mask(attention_mask: torch.Tensor | None, B: int, T: int, device=None) -> torch.Tensor:
    """(B, 1, T, T) bool: key j visible for query i iff j <= i and attention_mask[b, j] == 1."""
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    vis = causal.expand(B, 1, T, T)
    if attention_mask is not None:
        pad_ok = attention_mask.to(device).bool()[:, None, None, :]
        vis = vis & pad_ok
    return vis.clone()


def _attention_probs(scores: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """HF-eager style: add finfo(float32).min on invisible entries, softmax over keys.

    A fully masked row (left-pad query) therefore becomes (numerically) uniform over all keys,
    exactly as in HF eager."""
    add = torch.where(
        visible,
        torch.zeros((), dtype=scores.dtype, device=scores.device),
        torch.tensor(torch.finfo(torch.float32).min, dtype=scores.dtype, device=scores.device),
    )
    return torch.softmax(scores + add, dim=-1)


def _layer_count_from(count_from, i):
    if count_from is None:
        return None
    if isinstance(count_from, torch.Tensor):
        return count_from
    return count_from[i]


# ---------------------------------------------------------------------------------------------
# GPT-2
# ---------------------------------------------------------------------------------------------
def _gelu_new(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


@torch.no_grad()
def gpt2_forward_ref(
    hf_model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    m: int,
    block_k: int = 1,
    criterion: str = "uniform",
    tau: float | None = None,
    count_from: Sequence[torch.Tensor] | torch.Tensor | None = None,
    **kw,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Own forward of a transformers GPT2LMHeadModel using only its weights and config.

    Position ids are arange(T) for every sequence (HF GPT-2 does the same when only input_ids and
    attention_mask are given, also with left padding).  Only QKᵀ runs in low precision.
    ``count_from`` (oracle only): list of per-layer (B, H, T, T) masks, or use count_criterion=... in kw.
    Returns logits (B, T, V) float32 and the per-layer selection masks (B, H, T, T) bool.
    """
    cfg = hf_model.config
    if getattr(cfg, "activation_function", "gelu_new") != "gelu_new":
        raise NotImplementedError("only activation_function='gelu_new' is modelled")
    if getattr(cfg, "reorder_and_upcast_attn", False):
        raise NotImplementedError("reorder_and_upcast_attn is not modelled")
    sd = {k: v.detach().to(torch.float32) for k, v in hf_model.state_dict().items()}
    pre = "transformer."
    n_layer, n_head, d = cfg.n_layer, cfg.n_head, cfg.n_embd
    hd = d // n_head
    eps = cfg.layer_norm_epsilon
    B, T = input_ids.shape
    dev = sd[pre + "wte.weight"].device

    wte = sd[pre + "wte.weight"]
    x = wte[input_ids] + sd[pre + "wpe.weight"][torch.arange(T, device=dev)][None]
    visible = visibility_mask(attention_mask, B, T, dev)
    vis_h = visible.expand(B, n_head, T, T)

    def conv1d(h, name):
        return h @ sd[name + ".weight"] + sd[name + ".bias"]

    selected_per_layer = []
    for i in range(n_layer):
        p = f"{pre}h.{i}."
        h = F.layer_norm(x, (d,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"], eps)
        qkv = conv1d(h, p + "attn.c_attn")
        q, k, v = qkv.split(d, dim=-1)
        q, k, v = (t.reshape(B, T, n_head, hd).transpose(1, 2) for t in (q, k, v))
        scale = 1.0
        if getattr(cfg, "scale_attn_weights", True):
            scale = hd**-0.5
        if getattr(cfg, "scale_attn_by_inverse_layer_idx", False):
            scale /= float(i + 1)
        scores, sel = lamp_scores_ref(
            q, k, scale, vis_h, m, block_k, criterion, tau,
            count_from=_layer_count_from(count_from, i), **kw,
        )
        probs = _attention_probs(scores, vis_h)
        o = (probs @ v).transpose(1, 2).reshape(B, T, d)
        x = x + conv1d(o, p + "attn.c_proj")
        h = F.layer_norm(x, (d,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"], eps)
        x = x + conv1d(_gelu_new(conv1d(h, p + "mlp.c_fc")), p + "mlp.c_proj")
        selected_per_layer.append(sel)
    x = F.layer_norm(x, (d,), sd[pre + "ln_f.weight"], sd[pre + "ln_f.bias"], eps)
    lm_w = wte if getattr(cfg, "tie_word_embeddings", True) or "lm_head.weight" not in sd else sd["lm_head.weight"]
    logits = x @ lm_w.T
    return logits, selected_per_layer


# ---------------------------------------------------------------------------------------------
# Llama
# ---------------------------------------------------------------------------------------------
def _linear(sd: dict, h: torch.Tensor, name: str) -> torch.Tensor:
    """h @ Wᵀ (+ b): an nn.Linear from its state-dict entries."""
    y = h @ sd[name + ".weight"].T
    return y + sd[name + ".bias"] if name + ".bias" in sd else y


def _rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope_theta(cfg) -> float:
    rp = getattr(cfg, "rope_parameters", None)
    if isinstance(rp, dict):
        rtype = rp.get("rope_type", rp.get("type", "default"))
        if rtype != "default":
            raise NotImplementedError(f"rope_type {rtype!r} is not modelled")
        if "rope_theta" in rp:
            return float(rp["rope_theta"])
    return float(getattr(cfg, "rope_theta", 10000.0))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def _rope_tables(cfg, hd: int, T: int, dev) -> tuple[torch.Tensor, torch.Tensor]:
    """Default RoPE (cos, sin), each (T, hd): angles in float64, rounded to float32."""
    theta = _rope_theta(cfg)
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64, device=dev) / hd))
    ang = torch.arange(T, dtype=torch.float64, device=dev)[:, None] * inv_freq[None, :]
    ang = torch.cat((ang, ang), dim=-1)
    return ang.cos().to(torch.float32), ang.sin().to(torch.float32)


@torch.no_grad()
def llama_forward_ref(
    hf_model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    m: int,
    block_k: int = 1,
    criterion: str = "uniform",
    tau: float | None = None,
    count_from: Sequence[torch.Tensor] | torch.Tensor | None = None,
    **kw,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Own forward of a transformers LlamaForCausalLM (RMSNorm, default RoPE, GQA, SwiGLU).

    Position ids are arange(T) (what HF Llama does when only input_ids/attention_mask are given,
    left padding included).  RoPE angles are computed in float64 then rounded to float32.
    Returns logits (B, T, V) and per-layer selection masks (B, H, T, T) (H = query heads).
    """
    cfg = hf_model.config
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise NotImplementedError("only hidden_act='silu' is modelled")
    sd = {k: v.detach().to(torch.float32) for k, v in hf_model.state_dict().items()}
    pre = "model."
    nH, nKV, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size
    hd = getattr(cfg, "head_dim", None) or d // nH
    rep = nH // nKV
    eps = cfg.rms_norm_eps
    B, T = input_ids.shape
    emb = sd[pre + "embed_tokens.weight"]
    dev = emb.device

    cos, sin = _rope_tables(cfg, hd, T, dev)

    x = emb[input_ids]
    visible = visibility_mask(attention_mask, B, T, dev)
    vis_h = visible.expand(B, nH, T, T)
    scale = hd**-0.5
    selected_per_layer = []
    for i in range(cfg.num_hidden_layers):
        p = f"{pre}layers.{i}."
        h = _rms_norm(x, sd[p + "input_layernorm.weight"], eps)
        q = _linear(sd, h, p + "self_attn.q_proj").reshape(B, T, nH, hd).transpose(1, 2)
        k = _linear(sd, h, p + "self_attn.k_proj").reshape(B, T, nKV, hd).transpose(1, 2)
        v = _linear(sd, h, p + "self_attn.v_proj").reshape(B, T, nKV, hd).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        # repeat_kv: query head h uses kv head h // rep
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        scores, sel = lamp_scores_ref(
            q, k, scale, vis_h, m, block_k, criterion, tau,
            count_from=_layer_count_from(count_from, i), **kw,
        )
        probs = _attention_probs(scores, vis_h)
        o = (probs @ v).transpose(1, 2).reshape(B, T, nH * hd)
        x = x + _linear(sd, o, p + "self_attn.o_proj")
        h = _rms_norm(x, sd[p + "post_attention_layernorm.weight"], eps)
        x = x + _linear(sd, F.silu(_linear(sd, h, p + "mlp.gate_proj")) * _linear(sd, h, p + "mlp.up_proj"), p + "mlp.down_proj")
        selected_per_layer.append(sel)
    x = _rms_norm(x, sd[pre + "norm.weight"], eps)
    if getattr(cfg, "tie_word_embeddings", False) or "lm_head.weight" not in sd:
        lm_w = emb
    else:
        lm_w = sd["lm_head.weight"]
    logits = x @ lm_w.T
    return logits, selected_per_layer


# ---------------------------------------------------------------------------------------------
# Falcon (the original architecture: parallel attention and MLP, multi-query, RoPE)
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def falcon_forward_ref(
    hf_model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    m: int,
    block_k: int = 1,
    criterion: str = "uniform",
    tau: float | None = None,
    count_from: Sequence[torch.Tensor] | torch.Tensor | None = None,
    **kw,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Own forward of a transformers FalconForCausalLM with new_decoder_architecture=False, multi_query=True,
    parallel_attn=True, rotary positions (no ALiBi), erf-GELU.

    Each layer: h = LN(x); x = x + (mlp(h) + attention(h)).  One fused projection gives H query heads and one
    shared key and value head.  HF divides the scores in place by sqrt(head_dim); lampc (and this reference)
    multiply by the float 1/sqrt(head_dim), as for every scale.  Position ids are arange(T).
    """
    cfg = hf_model.config
    wanted = dict(new_decoder_architecture=False, multi_query=True, parallel_attn=True, alibi=False)
    for key, value in wanted.items():
        if getattr(cfg, key) != value:
            raise NotImplementedError(f"only {key}={value} is modelled")
    if getattr(cfg, "activation", "gelu") != "gelu":
        raise NotImplementedError("only activation='gelu' is modelled")
    sd = {k: v.detach().to(torch.float32) for k, v in hf_model.state_dict().items()}
    pre = "transformer."
    nH, d = cfg.num_attention_heads, cfg.hidden_size
    hd = d // nH
    eps = cfg.layer_norm_epsilon
    B, T = input_ids.shape
    emb = sd[pre + "word_embeddings.weight"]
    dev = emb.device
    cos, sin = _rope_tables(cfg, hd, T, dev)

    x = emb[input_ids]
    vis_h = visibility_mask(attention_mask, B, T, dev).expand(B, nH, T, T)
    selected_per_layer = []
    for i in range(cfg.num_hidden_layers):
        p = f"{pre}h.{i}."
        h = F.layer_norm(x, (d,), sd[p + "input_layernorm.weight"], sd[p + "input_layernorm.bias"], eps)
        qkv = _linear(sd, h, p + "self_attention.query_key_value").reshape(B, T, nH + 2, hd).transpose(1, 2)
        q, k, v = qkv[:, :nH], qkv[:, nH:nH + 1], qkv[:, nH + 1:]
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        k, v = k.expand(B, nH, T, hd), v.expand(B, nH, T, hd)
        scores, sel = lamp_scores_ref(
            q, k, 1.0 / math.sqrt(hd), vis_h, m, block_k, criterion, tau,
            count_from=_layer_count_from(count_from, i), **kw,
        )
        o = (_attention_probs(scores, vis_h) @ v).transpose(1, 2).reshape(B, T, d)
        attention = _linear(sd, o, p + "self_attention.dense")
        mlp = _linear(sd, F.gelu(_linear(sd, h, p + "mlp.dense_h_to_4h")), p + "mlp.dense_4h_to_h")
        x = x + (mlp + attention)
        selected_per_layer.append(sel)
    x = F.layer_norm(x, (d,), sd[pre + "ln_f.weight"], sd[pre + "ln_f.bias"], eps)
    return x @ sd.get("lm_head.weight", emb).T, selected_per_layer


# ---------------------------------------------------------------------------------------------
# Gemma2 (attention logit soft-capping)
# ---------------------------------------------------------------------------------------------
def _rms_norm_one_plus(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """Gemma's RMSNorm: the weight is stored as w and applied as (1 + w)."""
    return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)) * (1.0 + w)


def _soft_cap(x: torch.Tensor, cap: float) -> torch.Tensor:
    return torch.tanh(x / cap) * cap


@torch.no_grad()
def gemma2_forward_ref(
    hf_model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    m: int,
    block_k: int = 1,
    criterion: str = "uniform",
    tau: float | None = None,
    count_from: Sequence[torch.Tensor] | torch.Tensor | None = None,
    **kw,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Own forward of a transformers Gemma2ForCausalLM (embeddings times sqrt(hidden), four (1 + w) RMSNorms per
    layer, GQA, tanh-GELU gated MLP, attention and final logit soft-capping, default RoPE).

    The attention scores are s = (q @ kᵀ) * query_pre_attn_scalar**-0.5; the softmax sees c·tanh(s/c) + mask.
    LAMP replaces s (before the cap) and the look-ahead sees through the cap (select_ref's ``softcap``).
    Sequences must fit in the sliding window (then sliding and full layers compute the same).
    """
    cfg = hf_model.config
    if cfg.hidden_activation != "gelu_pytorch_tanh":
        raise NotImplementedError("only hidden_activation='gelu_pytorch_tanh' is modelled")
    B, T = input_ids.shape
    if cfg.sliding_window is not None and T > cfg.sliding_window:
        raise NotImplementedError("sequences longer than the sliding window are not modelled")
    sd = {k: v.detach().to(torch.float32) for k, v in hf_model.state_dict().items()}
    pre = "model."
    nH, nKV, d, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size, cfg.head_dim
    eps, cap = cfg.rms_norm_eps, cfg.attn_logit_softcapping
    emb = sd[pre + "embed_tokens.weight"]
    dev = emb.device
    cos, sin = _rope_tables(cfg, hd, T, dev)

    def norm(h, name):
        return _rms_norm_one_plus(h, sd[name + ".weight"], eps)

    x = emb[input_ids] * torch.tensor(d**0.5, dtype=torch.float32)
    vis_h = visibility_mask(attention_mask, B, T, dev).expand(B, nH, T, T)
    scale = cfg.query_pre_attn_scalar**-0.5
    selected_per_layer = []
    for i in range(cfg.num_hidden_layers):
        p = f"{pre}layers.{i}."
        h = norm(x, p + "input_layernorm")
        q = _linear(sd, h, p + "self_attn.q_proj").reshape(B, T, nH, hd).transpose(1, 2)
        k = _linear(sd, h, p + "self_attn.k_proj").reshape(B, T, nKV, hd).transpose(1, 2)
        v = _linear(sd, h, p + "self_attn.v_proj").reshape(B, T, nKV, hd).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        k, v = k.repeat_interleave(nH // nKV, dim=1), v.repeat_interleave(nH // nKV, dim=1)
        scores, sel = lamp_scores_ref(
            q, k, scale, vis_h, m, block_k, criterion, tau,
            count_from=_layer_count_from(count_from, i), softcap=cap, **kw,
        )
        if cap is not None:
            scores = _soft_cap(scores, cap)
        o = (_attention_probs(scores, vis_h) @ v).transpose(1, 2).reshape(B, T, nH * hd)
        x = x + norm(_linear(sd, o, p + "self_attn.o_proj"), p + "post_attention_layernorm")
        h = norm(x, p + "pre_feedforward_layernorm")
        h = _linear(sd, F.gelu(_linear(sd, h, p + "mlp.gate_proj"), approximate="tanh") * _linear(sd, h, p + "mlp.up_proj"), p + "mlp.down_proj")
        x = x + norm(h, p + "post_feedforward_layernorm")
        selected_per_layer.append(sel)
    x = norm(x, pre + "norm")
    logits = x @ sd.get("lm_head.weight", emb).T
    if cfg.final_logit_softcapping is not None:
        logits = _soft_cap(logits, cfg.final_logit_softcapping)
    return logits, selected_per_layer


# ---------------------------------------------------------------------------------------------
# Bloom (ALiBi)
# ---------------------------------------------------------------------------------------------
def alibi_ref(attention_mask: torch.Tensor | None, B: int, T: int, heads: int, device=None) -> torch.Tensor:
    """ALiBi bias (B, heads, 1, T): slope_h times the key's position among the sequence's real tokens.

    Slopes for a power-of-two head count n are 2**(-8·h/n), h = 1..n (Press et al., 2022).  A padded key has
    bias 0 (it is masked anyway); the query's own position is left out, softmax being shift-invariant per row.
    """
    if heads & (heads - 1):
        raise NotImplementedError("ALiBi slopes are modelled for a power-of-two head count only")
    slopes = torch.tensor([2.0 ** (-8.0 * h / heads) for h in range(1, heads + 1)], dtype=torch.float32,
                          device=device)
    real = torch.ones(B, T, dtype=torch.long, device=device) if attention_mask is None else attention_mask.to(device)
    position = ((real.cumsum(dim=-1) - 1) * real).to(torch.float32)  # (B, T); 0 at padding
    return slopes[None, :, None, None] * position[:, None, None, :]


def _bloom_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * 0.5 * (1.0 + torch.tanh(0.79788456 * x * (1 + 0.044715 * x * x)))


@torch.no_grad()
def bloom_forward_ref(
    hf_model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    m: int,
    block_k: int = 1,
    criterion: str = "uniform",
    tau: float | None = None,
    count_from: Sequence[torch.Tensor] | torch.Tensor | None = None,
    **kw,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Own forward of a transformers BloomForCausalLM (embedding layer norm, per-head fused QKV, ALiBi, Bloom's
    tanh-GELU, tied head).

    The softmax sees α·(q @ kᵀ) + alibi + mask with α = 1/sqrt(head_dim); LAMP replaces α·(q @ kᵀ) and the
    look-ahead runs on the biased row (select_ref's ``bias``).
    """
    cfg = hf_model.config
    if cfg.apply_residual_connection_post_layernorm or cfg.pretraining_tp > 1 and cfg.slow_but_exact:
        raise NotImplementedError("only the default residual and tensor-parallel settings are modelled")
    sd = {k: v.detach().to(torch.float32) for k, v in hf_model.state_dict().items()}
    pre = "transformer."
    nH, d = cfg.n_head, cfg.hidden_size
    hd = d // nH
    eps = cfg.layer_norm_epsilon
    B, T = input_ids.shape
    emb = sd[pre + "word_embeddings.weight"]
    dev = emb.device

    def layer_norm(h, name):
        return F.layer_norm(h, (d,), sd[name + ".weight"], sd[name + ".bias"], eps)

    x = layer_norm(emb[input_ids], pre + "word_embeddings_layernorm")
    vis_h = visibility_mask(attention_mask, B, T, dev).expand(B, nH, T, T)
    alibi = alibi_ref(attention_mask, B, T, nH, dev)
    selected_per_layer = []
    for i in range(cfg.n_layer):
        p = f"{pre}h.{i}."
        h = layer_norm(x, p + "input_layernorm")
        qkv = _linear(sd, h, p + "self_attention.query_key_value").reshape(B, T, nH, 3, hd).permute(3, 0, 2, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores, sel = lamp_scores_ref(
            q, k, 1.0 / math.sqrt(hd), vis_h, m, block_k, criterion, tau,
            count_from=_layer_count_from(count_from, i), bias=alibi, **kw,
        )
        o = (_attention_probs(scores + alibi, vis_h) @ v).transpose(1, 2).reshape(B, T, d)
        x = x + _linear(sd, o, p + "self_attention.dense")
        h = layer_norm(x, p + "post_attention_layernorm")
        x = x + _linear(sd, _bloom_gelu(_linear(sd, h, p + "mlp.dense_h_to_4h")), p + "mlp.dense_4h_to_h")
        selected_per_layer.append(sel)
    x = layer_norm(x, pre + "ln_f")
    return x @ sd.get("lm_head.weight", emb).T, selected_per_layer
