"""describe_onnx: a compact account of an exported lampc model (what `lampc show --onnx` prints).

    model.onnx  opset 26  lampc 0.1.0  190 KB  1,234 nodes
    inputs   input_ids: i64[batch, seq]  attention_mask: i64[batch, seq]
    outputs  logits: f32[batch, seq, 64]
    usage    no KV cache: full-sequence forward only; needs input_ids and attention_mask (int64, seq <= 128)
    policy   attention: m4 block_k=1 emulate, strict tau=0.1    rounding: bits (BitCast)
    site 0  transformer.h.0.attn
        lowp_scores       160 nodes  Add 32, BitwiseAnd 32, BitCast 32, Mul 17, BitShift 16, ...
        lamp_select        21 nodes  Where 6, And 3, ...
        recompute_scores    3 nodes  MatMul 1, Mul 1, Where 1
    outside sites   432 nodes  Constant 88, Reshape 65, ...
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict

import onnx

from ..policy import SITE_FIELDS, SitePolicy
from ..site_kinds import SITE_KINDS

_DTYPES = {1: "f32", 6: "i32", 7: "i64", 9: "b8", 10: "f16", 11: "f64", 12: "u32", 16: "bf16"}
_OPS_ORDER = ("lowp_scores", "lamp_select", "recompute_scores")


def site_op_counts(model: onnx.ModelProto) -> dict[int, dict[str, Counter]]:
    """site -> lampc op -> Counter of ONNX op types, from the nodes' lampc.site / lampc.op metadata."""
    counts: dict[int, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for node in model.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        site, op = meta.get("lampc.site"), meta.get("lampc.op")
        if site is None and node.name.startswith("lampc_site_"):  # a tool that dropped metadata kept the name
            head, op, _ = (node.name.split("/", 2) + ["", ""])[:3]
            site = head.removeprefix("lampc_site_")
        if site is not None and site.isdigit():
            counts[int(site)][op or "?"][node.op_type] += 1
    return counts


def describe_onnx(path: str | os.PathLike, *, top: int = 6) -> str:
    """A few lines per site: op counts per lampc op, then the model's metadata, inputs and outputs."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no ONNX model at {path!r}")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as err:  # protobuf's DecodeError and friends: not an ONNX file
        raise ValueError(f"{path} is not an ONNX model ({type(err).__name__}: {str(err).splitlines()[0]})") from err
    meta = {p.key: p.value for p in model.metadata_props}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), "?")
    title = (f"{os.path.basename(path)}  opset {opset}  lampc {meta.get('lampc.version', '?')}  "
             f"{_size(os.path.getsize(path))}  {len(model.graph.node):,} nodes")
    lines = [
        title,
        "inputs   " + "  ".join(_value(v) for v in model.graph.input),
        "outputs  " + "  ".join(_value(v) for v in model.graph.output),
        "usage    " + _usage(model, meta),
    ]
    if "lampc.policy" not in meta:
        lines.append("(no lampc metadata: not exported by lampc.export_onnx)")
    else:
        lines.append(f"policy   {_policy_text(json.loads(meta['lampc.policy']))}    rounding: {meta.get('lampc.rounding')}")
    modules = {s["index"]: s["module"] for s in json.loads(meta.get("lampc.sites", "[]"))}
    counts = site_op_counts(model)
    in_sites = 0
    for site in sorted(counts):
        lines.append(f"site {site}  {modules.get(site, '?')}")
        ops = counts[site]
        for op in sorted(ops, key=lambda o: (_OPS_ORDER.index(o) if o in _OPS_ORDER else 9, o)):
            total = sum(ops[op].values())
            in_sites += total
            lines.append(f"    {op:<18}{total:>6} nodes  {_top(ops[op], top)}")
    outside = Counter(n.op_type for n in model.graph.node) - sum((c for s in counts.values() for c in s.values()),
                                                                  Counter())
    lines.append(f"outside sites {sum(outside.values()):>6} nodes  {_top(outside, top)}")
    return "\n".join(lines)


def _usage(model: onnx.ModelProto, meta: dict[str, str]) -> str:
    """Whether the file carries a KV cache, and what a call needs, read from its inputs and outputs themselves (so
    files exported before lampc wrote `lampc.kv_cache` are described too)."""
    names = [v.name for v in model.graph.input]
    cached = any("past" in name or "cache" in name for name in names) or \
        any("present" in v.name for v in model.graph.output)
    cache = "KV cache inputs present" if cached else "no KV cache: full-sequence forward only"
    limit = f", seq <= {meta['lampc.max_len']}" if meta.get("lampc.max_len", "").isdigit() else ""
    return f"{cache}; needs {' and '.join(names)} (int64{limit})"


def _policy_text(policy: dict) -> str:
    """The policy stored in the model's metadata, in the words `lampc show` uses (SitePolicy.summary)."""
    parts = []
    for kind in SITE_KINDS:
        site = policy.get(kind)
        if site:
            fields = {k: v for k, v in site.items() if k in SITE_FIELDS}
            parts.append(f"{kind}: {SitePolicy(**fields).summary}")
    text = "; ".join(parts) or "no site kinds enabled"
    per_site = policy.get("per_site") or []
    return text + (f"; per-site rules at {len(per_site)} site(s)" if per_site else "")


def _value(value: onnx.ValueInfoProto) -> str:
    tensor = value.type.tensor_type
    dims = ", ".join(d.dim_param or str(d.dim_value) for d in tensor.shape.dim)
    return f"{value.name}: {_DTYPES.get(tensor.elem_type, str(tensor.elem_type))}[{dims}]"


def _top(counter: Counter, top: int) -> str:
    items = counter.most_common()
    text = ", ".join(f"{op} {n}" for op, n in items[:top])
    return text + (", ..." if len(items) > top else "")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
