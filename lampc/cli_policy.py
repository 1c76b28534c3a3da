"""The policy options every compiling subcommand shares (show, generate, export, eval): one spelling, one validation.

    add_policy_arguments(parser)              --format --criterion --tau --budget --block-k --kinds --sites
                                              --backend --fused --streaming --granularity --tile ... --policy FILE
    add_policy_arguments(parser, grid=True)   the same less --format/--criterion/--tau/--block-k (lampc eval sweeps
                                              those as lists)
    compile_arguments(args) -> (policy, overrides)   for lampc.compile(model, policy, **overrides)

`--policy FILE` (JSON, or YAML with PyYAML) holds a whole Policy, per kind, and optionally one rule per site
(`lampc calibrate` writes such files, with a "calibration" record that loading ignores):

    {"attention": {"format": "m7", "criterion": "strict", "tau": 0.1},
     "logits": {"format": "m7", "criterion": "budget", "budget": 0.05}, "sites": "guarded",
     "per_site": [{"site": 3, "kind": "attention", "module": "transformer.h.3.attn", "tau": 0.02}]}

Options given beside it override its fields for every kind it enables; options not given leave it as it is.
Vocabulary words (--format, --criterion, --backend, --error-scale, --kinds, --sites, and the file's values) are
taken in any case. A file may not set the fields the attention pass discovers (policy.SET_BY_PASSES). Every
SitePolicy field's text, in an option or a file ("0.1", "8", "true", "none"), is read by lampc's one codec
(lampc/config/codec.py) as the field's annotation says: a new field needs no line here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .cli_support import CliError, field_arg
from .config.codec import parse_field
from .config.rule import GRANULARITIES
from .formats import ACCUMULATOR_ROUNDINGS as ROUNDINGS
from .policy import (BACKENDS, CRITERIA, ERROR_SCALES, SET_BY_PASSES, SITE_FIELDS, SITE_KINDS, Policy, SiteOverride,
                     SitePolicy, parse_kinds, set_by_passes_text)

DEFAULTS = {"format": "m4", "criterion": "strict", "tau": None, "budget": None, "block_k": 1, "kinds": ["attention"],
            "sites": "guarded", "backend": "emulate", "fused": False, "error_scale": "score", "rounding": "nearest",
            "flush_every": None, "granularity": "entry", "tile": (64, 64), "streaming": False, "exp_format": None,
            "recompute_format": None, "smooth_k": False, "operand_format": None, "operand_block": 64}
GRID_OPTIONS = ("format", "criterion", "tau", "block_k", "flush_every")
ARG_DEST = {"rounding": "accumulator_rounding"}
"""Policy fields whose option keeps another name on the parsed arguments (`lampc export` has its own --rounding)."""


def kinds_arg(text: str) -> list[str]:
    """argparse type of --kinds: a comma-separated list of site kinds, or 'all' (any case)."""
    try:
        return parse_kinds([k.strip() for k in text.split(",") if k.strip()])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(SITE_KINDS)} or 'all', "
                                         f"got {text!r}") from None


def add_policy_arguments(parser, *, grid: bool = False) -> None:
    group = parser.add_argument_group("policy")
    if not grid:
        group.add_argument("--format", default=None, type=field_arg("format"),
                           help="producer format, e.g. m4, m7, bf16 (default m4; see `lampc formats`)")
        group.add_argument("--criterion", default=None, type=field_arg("criterion", lower=True), choices=CRITERIA,
                           help="look-ahead rule (default strict)")
        group.add_argument("--tau", type=field_arg("tau"), default=None,
                           help="the rule's threshold (default: per rule)")
        group.add_argument("--block-k", type=field_arg("block_k"), default=None,
                           help="accumulation block (1 = round every term, default)")
        group.add_argument("--flush-every", type=field_arg("flush_every"), default=None, dest="flush_every",
                           help="two-level accumulation: add the low-precision accumulator into FP32 every N blocks "
                                "(default: never)")
    # not --rounding: `lampc export --rounding` names how ONNX rounds (bits or arithmetic)
    group.add_argument("--accumulator-rounding", type=field_arg("rounding", lower=True), choices=ROUNDINGS,
                       default=None, dest=ARG_DEST["rounding"],
                       help="the emulated accumulator's rounding: nearest (default) or toward_zero (truncation, as "
                            "Hopper's FP8 MMA: FP22 is --format m13 --accumulator-rounding toward_zero)")
    group.add_argument("--operand-format", type=field_arg("operand_format"), default=None, dest="operand_format",
                       help="round the producer's operands to this format first, one scale per --operand-block rows "
                            "or keys (an FP8 GEMM: fp8_e4m3; default: FP32 operands)")
    group.add_argument("--operand-block", type=field_arg("operand_block"), default=None, dest="operand_block",
                       help="rows of q / keys of k per operand scale (default 64)")
    group.add_argument("--budget", type=field_arg("budget"), default=None,
                       help="for --criterion budget: k per row, or a fraction")
    group.add_argument("--kinds", default=None, type=kinds_arg,
                       help="site kinds to rewrite, comma separated: attention,layer_norm,gelu,logits or 'all' "
                            "(default attention, as in the paper)")
    group.add_argument("--sites", type=str.lower, choices=("guarded", "all"), default=None,
                       help="'all' also lowers every matmul that is no site (default guarded)")
    group.add_argument("--backend", type=field_arg("backend", lower=True), choices=BACKENDS, default=None,
                       help="emulate the format bit-exactly, or run the real dtype (bf16, fp16)")
    group.add_argument("--error-scale", type=field_arg("error_scale", lower=True), choices=ERROR_SCALES, default=None,
                       dest="error_scale",
                       help="what each entry's sensitivity is multiplied by: score (|ŝ|, the paper's, default), l1 or "
                            "norms (a bound on the producer's error), mixed (|ŝ| floored at a cancelling dot "
                            "product's size) or exact (the true error, evaluation only); docs/NUMERICS.md §9")
    group.add_argument("--fused", action="store_true", default=None,
                       help="softmax sites as one fused op (the deployment form)")
    group.add_argument("--streaming", action="store_true", default=None,
                       help="attention as one op over chunks of keys with an online softmax: memory O(T x chunk), "
                            "never T x T (criteria uniform, strict, relaxed, running_max)")
    group.add_argument("--granularity", type=field_arg("granularity", lower=True), choices=GRANULARITIES,
                       default=None, help="entry (default) or tile: recompute a tile whole when the rule picks any "
                                          "entry of it")
    group.add_argument("--tile", type=field_arg("tile"), default=None, metavar="ROWSxKEYS",
                       help="a tile's rows x keys, e.g. 64x64 (default): the unit of --granularity tile and of "
                            "--criterion running_max")
    group.add_argument("--exp-format", type=field_arg("exp_format"), default=None, dest="exp_format",
                       help="with --streaming: round the softmax's exponentials to this format (e.g. fp8_e4m3)")
    group.add_argument("--recompute-format", type=field_arg("recompute_format"), default=None,
                       dest="recompute_format",
                       help="recompute the selected entries in this format (bf16, fp16, m11) instead of FP32")
    group.add_argument("--smooth-k", action="store_true", default=None, dest="smooth_k",
                       help="subtract the mean key before the producer (SageAttention's smoothing; attention only)")
    group.add_argument("--policy", default=None, metavar="FILE",
                       help="a whole policy, per site kind, as JSON (or YAML); the options above override it")


def compile_arguments(args, *, grid: bool = False) -> tuple[Policy | None, dict]:
    """(base policy from --policy or None, the keyword overrides for lampc.compile); grid=True leaves out the
    options lampc eval sweeps (format, criterion, tau, block_k)."""
    dest = {n: ARG_DEST.get(n, n) for n in DEFAULTS}
    names = [n for n in DEFAULTS if hasattr(args, dest[n]) and not (grid and n in GRID_OPTIONS)]
    given = {n: getattr(args, dest[n]) for n in names if getattr(args, dest[n]) is not None}
    if getattr(args, "policy", None):
        return load_policy_file(args.policy), given
    return None, {**{n: DEFAULTS[n] for n in names}, **given}


def load_policy_file(path: str | Path) -> Policy:
    """A Policy from JSON/YAML: {kind: {SitePolicy fields} | null, ..., "sites": ...}; errors name the field."""
    path = Path(path)
    if not path.is_file():
        raise CliError(f"--policy: no such file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise CliError(f"--policy: {path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset "
                       f"{err.start}); save it as UTF-8") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as err:  # JSON or YAML syntax
        raise CliError(f"--policy: {path} is not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'}: "
                       f"{str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise CliError(f"--policy: {path} must hold an object with site kinds ({', '.join(SITE_KINDS)}) and sites")
    unknown = set(data) - set(SITE_KINDS) - {"sites", "per_site", "calibration"}
    if unknown:
        raise CliError(f"--policy: unknown key(s) {sorted(unknown)}; expected {', '.join(SITE_KINDS)}, sites, "
                       "per_site (and calibration, a record lampc calibrate writes)")
    fields = {"sites": data.get("sites", "guarded"), "per_site": _per_site(data.get("per_site") or [])}
    for kind in SITE_KINDS:
        site = data.get(kind)
        if site is not None and not isinstance(site, dict):
            raise CliError(f"--policy: {kind} must be an object of SitePolicy fields or null")
        try:
            fields[kind] = _site_policy(site) if site is not None else None
        except (TypeError, ValueError) as err:
            raise CliError(f"--policy: {kind}: {err}") from None
    try:
        return Policy(**fields)
    except ValueError as err:
        raise CliError(f"--policy: {err}") from None


def _per_site(entries) -> tuple[SiteOverride, ...]:
    """per_site: [{"site": 3, "kind": "attention", "module": "...", "tau": 0.02}, ...] as SiteOverrides."""
    if not isinstance(entries, list):
        raise CliError("--policy: per_site must be a list of objects {site, kind, module, and per-site fields}")
    out = []
    for entry in entries:
        if not isinstance(entry, dict) or "site" not in entry or "kind" not in entry:
            raise CliError(f"--policy: per_site entry {entry!r} needs at least site and kind")
        try:
            fields = {k: _file_value(k, v) for k, v in entry.items() if k not in ("site", "kind", "module")}
            out.append(SiteOverride(entry["site"], entry["kind"], fields, module=entry.get("module")))
        except ValueError as err:
            raise CliError(f"--policy: per_site: {err}") from None
    return tuple(out)


def _site_policy(fields: dict) -> SitePolicy:
    """A SitePolicy from a file's fields; "m_bits" (which Policy.to_dict writes beside the format) must agree."""
    fields = dict(fields)
    m_bits = fields.pop("m_bits", None)
    unknown = sorted(set(fields) - set(SITE_FIELDS))
    if unknown:
        raise ValueError(f"unknown SitePolicy field(s) {unknown}; fields: {', '.join(SITE_FIELDS)}")
    fields = {name: _file_value(name, value) for name, value in fields.items()}
    for name in SET_BY_PASSES:
        if name in fields and fields[name] != SitePolicy.__dataclass_fields__[name].default:
            raise ValueError(f"{set_by_passes_text(name)}: remove it (got {fields[name]!r})")
    site = SitePolicy(**fields)
    if m_bits is not None and m_bits != site.m_bits:
        raise ValueError(f"m_bits {m_bits!r} disagrees with format {site.format.name!r} ({site.m_bits} bits)")
    return site


def _file_value(name: str, value):
    """A file's value of SitePolicy field `name`: a text read by the codec (lampc/config/codec.py) as the field's
    annotation says ("0.1", "8", "true", "none"); JSON's and YAML's own numbers, bools and nulls as they are. Names
    that are no SitePolicy field are left for the caller to refuse."""
    return parse_field(SitePolicy, name, value) if isinstance(value, str) and name in SITE_FIELDS else value
