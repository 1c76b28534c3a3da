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
from lampc.numerics.native import native_product, native_scores
from lampc.ops import lowp_matmul
from lampc.producers.cast_weight import CastWeight
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


def test_a_weight_is_cast_once_and_recast_when_it_changes():
    """The cast module of a weight (what a rewritten graph calls, `w_low=`) casts it once and gives the same copy
    while the weight is unchanged; an in-place update, a `.data =` swap and a resize recast it; a view of the
    weight (a transpose) reads the same copy."""
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(4, 32, generator=g), torch.nn.Parameter(torch.randn(32, 16, generator=g))
    cast = CastWeight(torch.bfloat16)
    first = native_product(x, w, None, torch.bfloat16, w_low=cast(w))
    assert _same_storage(cast(w), cast(w))  # cast once
    assert _same_storage(cast(w.t()), cast(w)) and torch.equal(cast(w.t()), w.detach().t().bfloat16())
    assert torch.equal(first, native_product(x, w.detach().clone(), None, torch.bfloat16))  # as cast at the call
    with torch.no_grad():
        w.mul_(2.0)  # bumps the version: the cached copy must be refreshed
    assert torch.equal(native_product(x, w, None, torch.bfloat16, w_low=cast(w)), 2.0 * first)
    w.data = torch.randn(32, 16, generator=g)  # same Parameter, new storage
    assert torch.equal(cast(w), w.detach().bfloat16())
    w.data = torch.randn(32, 8, generator=g)  # resized
    assert cast(w).shape == (32, 8) and torch.equal(cast(w), w.detach().bfloat16())
    scores = native_scores(x[None], w[None], 0.5, torch.bfloat16, k_low=cast(w[None]))  # a view of the weight
    plain = (x.bfloat16() @ w.detach().bfloat16() * 0.5).float()
    assert torch.equal(scores[0], plain)


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()  # both alive: no address reuse


def _casts(gm) -> dict:
    """The cast modules a graph calls, by target."""
    return {n.target: gm.get_submodule(n.target) for n in gm.graph.nodes
            if n.op == "call_module" and isinstance(gm.get_submodule(n.target), CastWeight)}


@pytest.mark.slow
def test_weight_casts_belong_to_their_model():
    """A compiled model keeps one low-precision copy of each weight: its step graphs call the cast modules of its
    full-sequence graph. Two compiled models over the same weights keep a copy each (dropping one frees its
    copies; nothing is shared through state outside the models)."""
    model = tiny_gpt2()
    ids, _ = padded_batch(97)
    common = dict(format="bf16", backend="native", criterion="uniform", sites="all")
    one, two = lampc.compile(model, **common), lampc.compile(model, **common)
    with torch.no_grad():
        assert torch.equal(one(ids).logits, two(ids).logits)
        one.generate(ids[:1], max_new_tokens=2, do_sample=False)
    full = _casts(one.graph_module)
    assert len(full) == 9  # 4 weights per block (c_attn, c_proj, c_fc, mlp.c_proj) x 2, and lm_head
    for gm in one.step_graphs.graphs.values():
        assert {id(m) for m in _casts(gm).values()} == {id(m) for m in full.values()}
    copies = [m(model.get_parameter(_weight_of(one.graph_module, target))) for target, m in full.items()]
    others = [m(model.get_parameter(_weight_of(two.graph_module, target)))
              for target, m in _casts(two.graph_module).items()]
    assert len({a.untyped_storage().data_ptr() for a in copies + others}) == 18  # no copy shared


def _weight_of(gm, target: str) -> str:
    """The parameter (its name in the HF model) a cast module's call reads, through the views between."""
    node = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == target).args[0]
    while node.op != "get_attr":
        node = node.args[0]
    return node.target


def test_a_prepared_weight_in_another_dtype_or_shape():
    """A cast in another dtype (a site whose format was respecified) is not used: the op casts at the call; a
    prepared weight of another shape is refused by name."""
    g = torch.Generator().manual_seed(2)
    x, w = torch.randn(4, 32, generator=g), torch.randn(32, 16, generator=g)
    fp16 = lowp_matmul(x, w, None, "native fp16", "fused=0 dense_above=0.25")
    assert torch.equal(lowp_matmul(x, w, None, "native fp16", "fused=0 dense_above=0.25", w_low=w.bfloat16()), fp16)
    with pytest.raises(ValueError, match="w_low must have the weight's shape"):
        lowp_matmul(x, w, None, "native bf16", "fused=0 dense_above=0.25", w_low=w[:8].bfloat16())


class _Block(torch.nn.Module):
    """gelu(linear) -> layer_norm(residual + linear), attention over the result, and a logits head."""

    def __init__(self):
        super().__init__()
        self.up, self.down = torch.nn.Linear(8, 16), torch.nn.Linear(16, 8)
        self.norm, self.head = torch.nn.LayerNorm(8), torch.nn.Linear(8, 11, bias=False)

    def forward(self, x, mask):
        h = self.norm(x + self.down(torch.nn.functional.gelu(self.up(x))))
        a = torch.softmax(torch.matmul(h, h.transpose(-1, -2)) * 0.5 + mask, dim=-1)
        return self.head(torch.matmul(a, h))


def _rewritten_block(policy: SitePolicy):
    from lampc.passes import attention_sites, linear_sites, logits_site, lowered_matmuls, rewrite_sites

    torch.manual_seed(0)
    args = (torch.randn(2, 3, 8), torch.zeros(1, 3, 3))
    gm = torch.export.export(_Block().eval(), args, strict=False).module()
    rewrite_sites(gm, [attention_sites(policy), linear_sites({"layer_norm": policy, "gelu": policy}),
                       logits_site(policy), lowered_matmuls(policy)])
    return gm, args


def test_native_sites_read_their_weights_through_a_cast_module():
    """Each native op whose weight operand is a parameter gets the weight's cast as w_low/k_low (a call of the
    weight's CastWeight, tagged as the site's operand); attention's keys and the probabilities @ values product
    are activations (cast at the call). The values are those of the ops cast at every call, bit for bit."""
    gm, args = _rewritten_block(SitePolicy(format="bf16", backend="native", criterion="strict", tau=0.1))
    prepared = {n.name: n.kwargs for n in gm.graph.nodes if n.op == "call_function" and n.kwargs}
    assert sorted(prepared) == ["scores_lp_3", "y_lp_1", "y_lp_2"]  # up, down, head; not a @ h (lowered)
    for kwargs in prepared.values():
        (argument, cast), = kwargs.items()
        assert argument in ("w_low", "k_low") and isinstance(gm.get_submodule(cast.target), CastWeight)
        assert cast.meta["lampc"].role == "operand" and cast.meta["val"].dtype == torch.bfloat16
    attention = next(n for n in gm.graph.nodes if n.target == torch.ops.lampc.lowp_scores.default
                     and n.meta["lampc"].kind == "attention")
    assert "k_low" not in attention.kwargs
    with torch.no_grad():
        cached = gm(*args)
        for node in gm.graph.nodes:
            if node.op == "call_function" and node.kwargs:
                node.kwargs = {}
        gm.recompile()
        assert torch.equal(cached, gm(*args))


def test_emulated_sites_prepare_no_weight():
    gm, _ = _rewritten_block(SitePolicy(format="m4", criterion="strict", tau=0.1))
    assert not any(n.op == "call_function" and n.kwargs for n in gm.graph.nodes) and not _casts(gm)


def test_a_cast_under_fake_tracing_is_not_kept():
    """torch.export of a rewritten graph traces the cast as an op (a fake tensor is no weight to keep)."""
    gm, args = _rewritten_block(SitePolicy(format="bf16", backend="native", criterion="uniform"))
    program = torch.export.export(gm, args, strict=False)
    assert all(m._cast is None for m in _casts(gm).values())
    with torch.no_grad():
        assert torch.equal(program.module()(*args), gm(*args))


@pytest.mark.slow
def test_a_saved_native_model_keeps_its_casts_shared_and_not_their_copies():
    """Saving keeps the cast modules (one per weight, shared by the step graphs) but not the copies: the saved bytes
    are the same before and after a forward filled them; the loaded model casts again and computes the same."""
    import io
    import pickle

    compiled = lampc.compile(tiny_gpt2(), format="bf16", backend="native", criterion="strict", tau=0.1,
                             sites="all")
    ids, mask = padded_batch(97)
    before = {target: pickle.dumps(m) for target, m in _casts(compiled.graph_module).items()}
    with torch.no_grad():
        want = compiled(ids, attention_mask=mask).logits
    assert len(before) == 9 and all(m._cast is not None for m in _casts(compiled.graph_module).values())
    assert {target: pickle.dumps(m) for target, m in _casts(compiled.graph_module).items()} == before
    buffer = io.BytesIO()
    torch.save(compiled, buffer)
    loaded = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    casts = _casts(loaded.graph_module)
    assert casts and all(m._cast is None for m in casts.values())
    for gm in loaded.step_graphs.graphs.values():
        assert {id(m) for m in _casts(gm).values()} == {id(m) for m in casts.values()}
    with torch.no_grad():
        assert torch.equal(loaded(ids, attention_mask=mask).logits, want)


@pytest.mark.slow
def test_a_native_model_exports_to_onnx_without_its_casts(tmp_path):
    """The export drops the weight casts (the logits site's k_low; through the unfusing of a fused site too): the
    ONNX translation casts the weight itself, and ONNX Runtime computes what the compiled model does."""
    from lampc.export import export_onnx, make_session, run_session
    from lampc.export.onnx import _exportable_copy

    compiled = lampc.compile(tiny_gpt2(), format="bf16", backend="native", criterion="strict", tau=0.1,
                             kinds=["attention", "logits"], fused=True)
    assert _casts(compiled.graph_module) and not _casts(_exportable_copy(compiled.graph_module))
    path = str(tmp_path / "native.onnx")
    export_onnx(compiled, path)
    ids, mask = padded_batch(97)
    got = run_session(make_session(path, providers=["CPUExecutionProvider"]), ids, mask)["logits"]
    with torch.no_grad():
        want = compiled(ids, attention_mask=mask).logits.numpy()
    real = mask.bool().numpy()
    assert abs(got[real] - want[real]).max() < 1e-4


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
    sel = softmax.select(s, visible, SitePolicy(criterion=criterion, **extra), draws=torch.empty_like(s))
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
