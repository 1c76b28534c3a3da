"""The native backend: real bf16 GEMMs against an emulation of them, and a selection path with no host sync."""

import inspect
import re

import pytest
import torch

import lampc
from lampc.criteria import CRITERIA
from lampc.formats import BF16
from lampc.lookahead import components, fused, recompute, row_stats, softmax
from lampc.numerics import native, round_to
from lampc.numerics.native import LowPrecisionWeights, cached_weights, native_product, native_scores
from lampc.policy import SitePolicy
from tiny_models import padded_batch, tiny_gpt2


def _bf16_model(x, w, bias=None):
    """The number model of a bf16 GEMM: inputs rounded to bf16, exact-ish FP32 (here float64) sums, output rounded."""
    y = round_to(x, BF16).double() @ round_to(w, BF16).double()
    if bias is not None:
        y = y + round_to(bias, BF16).double()
    return round_to(y.float(), BF16)


def _tolerance(x, w):
    """One bf16 unit of the result (2^-7 relative, from rounding near a tie) plus FP32 accumulation error."""
    magnitude = round_to(x, BF16).abs().double() @ round_to(w, BF16).abs().double()
    return (2.0 ** -7 + x.shape[-1] * 2.0 ** -23) * magnitude.float() + 1e-30


@pytest.mark.parametrize("shape", [(5, 64, 48), (3, 17, 256, 33)])
def test_native_product_matches_the_bf16_number_model(shape):
    g = torch.Generator().manual_seed(0)
    *batch, m, k, n = shape if len(shape) == 4 else (None, *shape)
    x = torch.randn(*(b for b in batch if b), m, k, generator=g)
    w = torch.randn(k, n, generator=g)
    bias = torch.randn(n, generator=g)
    got = native_product(x, w, bias, torch.bfloat16)
    want = _bf16_model(x, w, bias)
    assert torch.all((got - want).abs() <= _tolerance(x, w) + 2.0 ** -7 * bias.abs())
    assert not torch.equal(got, x @ w + bias)  # rounding is real


def test_cached_weights_give_the_same_product_and_follow_updates():
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(4, 32, generator=g), torch.nn.Parameter(torch.randn(32, 16, generator=g))
    weights = LowPrecisionWeights([w])
    with cached_weights(weights):
        first = native_product(x, w, None, torch.bfloat16)
        assert _same_storage(weights.low(w, torch.bfloat16), weights.low(w, torch.bfloat16))  # cast once
        assert torch.equal(first, native_product(x, w.detach().clone(), None, torch.bfloat16))
        with torch.no_grad():
            w.mul_(2.0)  # bumps the version: the cached copy must be refreshed
        assert torch.equal(native_product(x, w, None, torch.bfloat16), 2.0 * first)
        scores = native_scores(x[None], w[None], 0.5, torch.bfloat16)  # a view of the cached weight
    plain = (x.bfloat16() @ w.detach().bfloat16() * 0.5).float()
    assert torch.equal(scores[0], plain)


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()  # both alive: no address reuse


def test_weight_caches_belong_to_their_model():
    """Each compiled model casts its own weights; outside a model's call nothing is cached."""
    w = torch.nn.Parameter(torch.randn(8, 8))
    first, second = LowPrecisionWeights([w]), LowPrecisionWeights()
    cached = first.low(w, torch.bfloat16)
    assert _same_storage(first.low(w, torch.bfloat16), cached)
    one, two = second.low(w, torch.bfloat16), second.low(w, torch.bfloat16)
    assert not _same_storage(one, two)  # w is not second's: cast at every call
    with cached_weights(first):
        inside = native._low(w, torch.bfloat16)
        assert _same_storage(inside, cached)
        with cached_weights(second):
            other = native._low(w, torch.bfloat16)
            assert not _same_storage(other, cached)
    outside = native._low(w, torch.bfloat16)
    assert not _same_storage(outside, cached)


@pytest.mark.slow
def test_native_compiled_model_runs_every_matmul_in_bf16_and_lamp_reduces_its_error():
    model = tiny_gpt2(score_gain=6.0)
    ids, mask = padded_batch(97)
    kinds = ["attention", "layer_norm", "gelu", "logits"]
    common = dict(kinds=kinds, sites="all", format="bf16", backend="native")
    uniform = lampc.compile(model, criterion="uniform", **common)
    lamp = lampc.compile(model, criterion="budget", budget=0.25, **common)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        err_uniform = (uniform(ids, mask).logits - ref).abs()[mask.bool()].max()
        err_lamp = (lamp(ids, mask).logits - ref).abs()[mask.bool()].max()
    assert err_uniform > 1e-4  # bf16 is visible
    assert err_lamp < err_uniform


SYNC = re.compile(r'\.item\(|\.nonzero\(|\.tolist\(|\.cpu\(|\bint\(|\bbool\(|\bfloat\((?!"-?inf")')
"""Python-side reads of tensor values: each one waits for the device."""


def _functions_on_the_accelerator_path():
    return [softmax.select, softmax.SoftmaxRows, softmax.select_top, softmax.select_top_k, softmax.target_counts,
            softmax.row_tau, softmax.budget_counts, components.ComponentRows,
            *(criterion.rule for criterion in CRITERIA.values()),
            softmax.strict_sensitivity, softmax.visible_from_mask, recompute.recompute_dense,
            components.select_components, components.column_norms, native_scores, native_product,
            native.native_scores_low, fused.fused_widen_select]


@pytest.mark.parametrize("fn", _functions_on_the_accelerator_path(), ids=lambda f: f.__name__)
def test_accelerator_path_has_no_host_sync(fn):
    source = inspect.getsource(fn)
    body = source[source.index('"""', source.index('"""') + 3) + 3:] if '"""' in source else source
    assert not SYNC.findall(body), f"{fn.__name__} synchronises with the host: {SYNC.findall(body)}"


def test_dispatchers_leave_for_the_dense_path_before_any_sync():
    from lampc.ops import fused_site as ops_fused, linear_site as ops_linear

    fused_site = inspect.getsource(ops_fused.lamp_scores._init_fn)  # the CPU-only fast path is asked for by device
    assert "row_stats.supports(settings, q.device)" in fused_site and not SYNC.findall(fused_site.split('"""')[2])
    assert not row_stats.supports(SitePolicy(criterion="strict"), torch.device("cuda"))

    source = inspect.getsource(recompute.recompute_into)
    first_sync = SYNC.search(source[source.index('"""', source.index('"""') + 3):]).start()
    assert source.index('device.type != "cpu"') < first_sync + source.index('"""', source.index('"""') + 3)
    linear = inspect.getsource(ops_linear.recompute_linear._init_fn)  # delegates to the same dispatcher
    assert "recompute(" in linear and not SYNC.findall(linear[linear.index('"""', linear.index('"""') + 3):])


@pytest.mark.parametrize("criterion,extra", [("strict", {"tau": 0.1}), ("relaxed", {"tau": 0.3}),
                                             ("target", {"tau": 1.5}), ("budget", {"budget": 0.1}),
                                             ("random", {"tau": 0.1})])
def test_selection_runs_on_the_meta_device(criterion, extra):
    """Meta tensors have no values: any data-dependent host sync would raise."""
    s = torch.empty(2, 3, 16, 16, device="meta")
    visible = torch.empty(2, 1, 16, 16, dtype=torch.bool, device="meta")
    sel = softmax.select(s, visible, SitePolicy(criterion=criterion, **extra), generator=torch.Generator())
    assert sel.shape == s.shape and sel.dtype == torch.bool
    q, k_t = torch.empty(2, 3, 16, 8, device="meta"), torch.empty(2, 3, 8, 16, device="meta")
    assert recompute.recompute(s, sel, q, k_t, 0.5, 0.25).shape == s.shape
    x, w, bias = torch.empty(32, 8, device="meta"), torch.empty(8, 24, device="meta"), torch.empty(24, device="meta")
    y = torch.empty(32, 24, device="meta")
    assert recompute.recompute(y, torch.empty(32, 24, dtype=torch.bool, device="meta"), x, w, 1.0, 0.25,
                               bias).shape == y.shape
    picked = components.select_components(y, torch.empty(32, 24, device="meta"),
                                          SitePolicy(criterion="budget", budget=3))
    assert picked.shape == y.shape
