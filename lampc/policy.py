"""Policy: the user's choices for a LAMP compilation, validated on construction.

A `SitePolicy` fixes the numbers at one kind of site (format, accumulation, backend) and the look-ahead
rule (criterion, tau, ...). A `Policy` holds one `SitePolicy` per site kind (attention, layer_norm, logits,
gelu) plus which producers are lowered at all. Names follow the paper: `tau`, `m_bits`, `block_k`.

A `SitePolicy` is the user's flat record; on construction it builds its typed parts (`site.config`, a
`lampc.config.SiteConfig`: the producer, the rule, the execution and the facts a matcher found), and each part
checks its own fields: a bad value raises `ValueError` naming the field, the value and what was expected. The parts
are what a rewritten graph carries (node tags) and what its ops receive, each op only the parts it reads, as their
texts (lampc/config/codec.py, the one text form of every field):

    >>> SitePolicy(format="m4", criterion="strict", tau=0.1).config.texts
    SiteTexts(producer='emulate m4', rule='strict tau=0.1', facts='softcap=none biased=0', execution='fused=0 ...')
    >>> SitePolicy(format="m4", criterion="strict", tau=0.1).to_spec()      # the whole record, defaults left out
    'format=m4 tau=0.1'

Vocabulary words (criterion, backend, count_from, error_scale, sites, kinds; formats too) are taken in any case and
kept in lower case. A bool is no number: `dense_above=True` is refused like `block_k=True`. This module loads no
torch or numpy (the command line reads its vocabularies to build --help); numbers of theirs are taken as the
Python numbers they hold.
"""

from __future__ import annotations

import dataclasses
import numbers
import sys
from dataclasses import dataclass, field

from .config import (BACKENDS, ERROR_SCALES, NATIVE_FORMATS, Execution, Producer, Record, Rule, SiteConfig, SiteFacts,
                     decode, encode, make_producer)
from .config.producer import PRODUCER_FIELDS, field_format, producer_fields
from .config.rule import check_choice as _check_choice
from .criteria import COUNT_SOURCES, CRITERIA as CRITERION_TABLE, NAMES as CRITERIA, STREAMING  # noqa: F401
from .formats import Format
from .site_kinds import ATTENTION, LINEAR_KINDS, SITE_KINDS  # noqa: F401 (re-exported; declared in lampc/site_kinds.py)


@dataclass(frozen=True)
class SitePolicy(Record):
    """How one kind of site runs: low-precision format, accumulation, backend and look-ahead rule.

    format:         a `lampc.formats.Format` or its name ("m4", "bf16", ...); the producer's accumulator format.
    block_k:        1 = strict accumulation (round after every multiply-add); b > 1 = FP32 partial sums of b terms.
    rounding:       "nearest" (ties to even) or "toward_zero" (a truncating accumulator: FP22 is m13 toward zero);
                    emulate only, formats with FP32's exponent range.
    flush_every:    None, or n: the two-level accumulation of production FP8 kernels, the low-precision
                    accumulator added into FP32 every n blocks (docs/NUMERICS.md §3); emulate only. The
                    product is then FP32: the scores and outputs are not rounded to the format again.
    operand_format: None, or the format the producer's operands are rounded to first (an FP8 GEMM's inputs:
                    "fp8_e4m3"), each block of operand_block rows of the left operand (q, x) and columns of the
                    right one (keys of k, outputs of w) with one FP32 scale, amax / the format's largest value,
                    multiplied back after the accumulator (lampc/numerics/operands.py); emulate only. The recompute
                    reads the FP32 operands.
    operand_block:  rows / columns per scale of operand_format (an attention kernel's tile).
    backend:        "emulate" (bit-exact rounding model) or "native" (the real torch dtype, bf16/fp16 only).
    criterion:      one of CRITERIA.
    tau:            the criterion's threshold; None takes DEFAULT_TAU. Ranges: target [1, 2], strict > 0,
                    relaxed (0, 1]. For random/oracle it is the tau of `count_from`. uniform and budget take
                    none (it stays None; giving one is an error).
    length_scaling: scale tau per row by sqrt(l_ref / L_t) (strict, relaxed; relaxed caps it at 1).
    l_ref:          reference row length for length scaling.
    budget:         for criterion "budget": an int k >= 0 (entries per row) or a float in (0, 1] (fraction).
    count_from:     for random/oracle: the criterion whose per-row counts they reproduce.
    seed:           seed of the random baseline.
    dense_above:    recompute rate above which the FP32 recompute is done densely (one matmul) instead of
                    gathering the selected dot products.
    fused:          the deployment setting. Softmax sites (attention, logits) become one op, lampc.lamp_scores
                    (producer, look-ahead and recompute over one score buffer, no copies); their look-ahead, and
                    that of linear sites, runs through torch.compile (the first call of each shape compiles),
                    or for native strict/uniform sites on the CPU from row statistics (lookahead/row_stats.py).
                    Same values as unfused; the row-statistics selection can differ only where a sensitivity is
                    within FP32 rounding of tau.
    softcap:        set by the attention pass, not by users: the model's logit soft-capping c (Gemma2's
                    `attn_logit_softcapping`), whose consumer is softmax(c·tanh(s/c) + mask); the look-ahead
                    differentiates through the cap (docs/NUMERICS.md §6).
    biased:         set by the attention pass, not by users: the site's mask carries a finite additive bias the
                    softmax sees (Bloom's ALiBi through baddbmm); the look-ahead's softmax includes it.
    error_scale:    what each entry's sensitivity is multiplied by (docs/NUMERICS.md §9): "score" (the paper's
                    |ŝ_i|, a relative error), "l1" (the accumulation's error bound from Σ_k |q_k·k_ik|),
                    "norms" (its Cauchy–Schwarz bound from ‖q‖·‖k_i‖, O(T·d)), "mixed" (|ŝ_i| floored at
                    ‖q‖·‖k_i‖·|c|/√K, a cancelling dot product's size; tau in the paper's units) or "exact"
                    (|s_i − ŝ_i| from the FP32 product: evaluation only, the oracle's weight under a threshold);
                    for the rules that weigh errors (strict, relaxed, budget, and random/oracle counting from
                    strict or relaxed).
    granularity:    "entry" (each score decided alone) or "tile": a tile of `tile` entries is recomputed whole
                    when the rule selects any entry of it (softmax sites; docs/NUMERICS.md §10). The tiles start at
                    row 0 and key 0; the last ones may be partial.
    tile:           (rows, keys) of a tile: the unit of granularity="tile" and of criterion "running_max", the
                    tiles the statistics count, and at a streaming site the key chunk (a multiple of its keys).
    streaming:      attention sites as one op, lampc.lamp_attention, that owns q·kᵀ, the mask, the softmax and
                    p·v and walks the keys in chunks with an online softmax: memory O(T·chunk) per head, never
                    T x T (lampc/lookahead/streaming.py). Same selection as the materialised site, values equal to
                    FP32 rounding; criteria uniform, strict, relaxed and running_max only (the others need whole
                    sorted rows); not with fused, nor with sites="all".
    exp_format:     the attention softmax's exponentials rounded to this format before the normaliser and p·v
                    (as an FP8 attention kernel feeds P to its second GEMM); None: FP32. Materialised: exp(s − the
                    row's maximum), the model's softmax becoming lampc.rounded_softmax; streaming: exp(s − the
                    running maximum), as a tiled kernel rounds them. Attention sites.
    recompute_format: the selected entries recomputed with the site's producer in this format (a 16-bit
                    recompute: bf16, fp16, m11) instead of FP32; None: FP32. Softmax sites.
    smooth_k:       subtract the mean key (over the keys of each head) from the keys before the producer
                    (SageAttention's smoothing): every score of a row moves by the same q·k̄, which the softmax
                    does not see, and the producer works on smaller numbers. Attention sites without a soft cap.
    """

    format: Format | str = "m4"
    block_k: int = 1
    rounding: str = "nearest"
    flush_every: int | None = None
    operand_format: Format | str | None = None
    operand_block: int = 64
    backend: str = "emulate"
    criterion: str = "strict"
    tau: float | None = None
    length_scaling: bool = False
    l_ref: int = 1024
    budget: int | float | None = None
    count_from: str = "strict"
    seed: int = 0
    dense_above: float = 0.25
    fused: bool = False
    softcap: float | None = None
    biased: bool = False
    error_scale: str = "score"
    granularity: str = "entry"
    tile: tuple[int, int] = (64, 64)
    streaming: bool = False
    exp_format: Format | str | None = None
    recompute_format: Format | str | None = None
    smooth_k: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "format", field_format(self.format))
        for name in NUMERIC_FIELDS:  # numpy/torch scalars as Python numbers; a bool is refused below, by name
            object.__setattr__(self, name, plain_number(getattr(self, name)))
        for name in ("backend", "criterion", "count_from", "error_scale", "granularity"):
            object.__setattr__(self, name, _lower(getattr(self, name)))
        producer = make_producer(self.backend, {name: getattr(self, name) for name in PRODUCER_FIELDS},
                                 {name: SitePolicy.__dataclass_fields__[name].default for name in PRODUCER_FIELDS})
        rule, execution, facts = (part(**{f.name: getattr(self, f.name) for f in dataclasses.fields(part)})
                                  for part in (Rule, Execution, SiteFacts))  # each part takes its fields by name
        object.__setattr__(self, "tau", rule.tau)  # None takes the criterion's default
        for name in ("tile", "exp_format", "recompute_format"):  # as the parts hold them: (rows, keys), Format
            object.__setattr__(self, name, getattr(rule if name == "tile" else execution, name))
        if hasattr(producer, "operand_format"):
            object.__setattr__(self, "operand_format", producer.operand_format)
            if producer.operand_format is not None and rule.error_scale in ("l1", "norms"):
                raise ValueError(f"SitePolicy.error_scale={rule.error_scale!r} bounds the accumulation's error only; "
                                 "with operand_format the operands' rounding adds its own: use 'score', 'mixed' or "
                                 "'exact'")
        object.__setattr__(self, "config", SiteConfig(producer, rule, execution, facts))
        if self.streaming and not self.rule.streams:
            raise ValueError(f"SitePolicy.streaming=True runs criteria {', '.join(STREAMING)} (a function of each "
                             f"entry and of row statistics); criterion {self.criterion!r} needs whole sorted rows: "
                             "use streaming=False (materialised)")

    @classmethod
    def from_config(cls, config: SiteConfig) -> "SitePolicy":
        """The SitePolicy whose parts are `config`'s (the inverse of `.config`)."""
        parts = (config.rule, config.execution, config.facts)
        return cls(**producer_fields(config.producer),
                   **{f.name: getattr(part, f.name) for part in parts for f in dataclasses.fields(part)})

    @property
    def producer(self) -> Producer:
        """The site's producer (lampc/config/producer.py): Emulated(format, block_k) or Native(format)."""
        return self.config.producer

    @property
    def rule(self):
        """The criterion's entry in lampc.criteria.CRITERIA (its rule, threshold and texts); not to be confused
        with `config.rule`, the typed Rule record (lampc/config/rule.py), whose `.entry` this is."""
        return self.config.rule.entry

    @property
    def counting_rule(self):
        """The criterion whose per-row counts this site's selection has: count_from's for random and oracle."""
        return self.config.rule.counting_entry

    @property
    def m_bits(self) -> int:
        return self.format.m_bits

    @property
    def rule_text(self) -> str:
        """The look-ahead rule in a few words, e.g. 'strict tau=0.1' or 'budget k=8'."""
        text = self.rule.text(self)
        if self.softcap is not None:
            text += f" through softcap {self.softcap:g}"
        if self.biased:
            text += " with the additive bias"
        if self.error_scale != "score":
            text += f" error scale {self.error_scale}"
        return text

    @property
    def summary(self) -> str:
        """Numbers and rule in a line, as `show` prints them: 'format m4 (block_k 1, emulate)  rule strict tau=0.1'."""
        return f"format {self.format.name} (block_k {self.block_k}, {self.backend})  rule {self.rule_text}"

    @property
    def label(self) -> str:
        """Numbers and rule in one line of a listing: 'm4/bk1/emulate strict tau=0.1'."""
        return self.config.label

    def to_spec(self) -> str:
        """The whole SitePolicy as one line of text (lampc/config/codec.py), e.g. 'format=m4 tau=0.1'."""
        return encode(self)

    @classmethod
    def from_spec(cls, spec: str) -> "SitePolicy":
        """Inverse of `to_spec`."""
        return decode(cls, spec)


SITE_FIELDS = tuple(f.name for f in dataclasses.fields(SitePolicy))
SET_BY_PASSES = ("softcap", "biased")
"""SitePolicy fields the attention pass sets at a site it finds: facts about the model (Gemma2's logit cap,
Bloom's ALiBi bias), not choices. A Policy (the user's) refuses them; a site's own SitePolicy carries them."""

def set_by_passes_text(name: str) -> str:
    """Why a user's policy may not set `name`, one of SET_BY_PASSES."""
    return (f"{name} is set by the attention pass where the model has it (Gemma2's logit softcap, Bloom's ALiBi "
            "bias), not by a policy")


NUMERIC_FIELDS = ("block_k", "flush_every", "operand_block", "tau", "l_ref", "budget", "seed", "dense_above", "softcap")
"""SitePolicy fields that hold numbers (never a bool)."""


NO_RECOMPUTE = {"criterion": "uniform", "tau": None, "budget": None, "length_scaling": False, "error_scale": "score"}
"""SitePolicy fields that turn any site policy into uniform: its numbers kept, no rule (and none of the rule's
settings, which uniform refuses)."""

PER_SITE_FIELDS = ("tau", "criterion", "budget", "length_scaling", "l_ref", "error_scale")
"""The SitePolicy fields one site may set apart from its kind: the look-ahead rule, never the numbers or the
structure (format, block_k, backend and fused stay the kind's, so every site of a kind runs the same ops)."""


@dataclass(frozen=True)
class SiteOverride:
    """One site's own rule, over its kind's SitePolicy: e.g. the threshold `lampc calibrate` chose for it.

    site:    the site's index, as `lampc show` and the statistics number it (graph order, attention first)
    kind:    the site's kind; compile refuses the override if site `site` is of another kind
    fields:  SitePolicy fields from PER_SITE_FIELDS, as (name, value) pairs
    module:  the producer's module path; when given, compile refuses the override at a site of another module
    """

    site: int
    kind: str
    fields: tuple[tuple[str, object], ...]
    module: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.site, bool) or not isinstance(self.site, int) or self.site < 0:
            raise ValueError(f"SiteOverride.site must be a site index >= 0, got {self.site!r}")
        object.__setattr__(self, "kind", _lower(self.kind))
        _check_choice("kind", self.kind, SITE_KINDS, owner="SiteOverride")
        fields = tuple(self.fields.items()) if isinstance(self.fields, dict) else tuple(map(tuple, self.fields))
        object.__setattr__(self, "fields", fields)
        bad = [name for name, _ in fields if name not in PER_SITE_FIELDS]
        if bad:
            raise ValueError(f"SiteOverride (site {self.site}): field(s) {bad} cannot differ per site; per-site "
                             f"fields: {', '.join(PER_SITE_FIELDS)}")
        if self.module is not None and not isinstance(self.module, str):
            raise ValueError(f"SiteOverride.module must be a module path or None, got {self.module!r}")

    def apply(self, base: SitePolicy) -> SitePolicy:
        """The site's SitePolicy: `base` (its kind's) with these fields (ValueError naming the site if invalid)."""
        try:
            return _replace_site(base, dict(self.fields))
        except ValueError as err:
            raise ValueError(f"Policy.per_site, site {self.site} ({self.kind}): {err}") from None

    def to_dict(self) -> dict:
        out = {"site": self.site, "kind": self.kind}
        if self.module is not None:
            out["module"] = self.module
        return {**out, **dict(self.fields)}


@dataclass(frozen=True)
class Policy:
    """One `SitePolicy` per site kind; a kind set to None is not rewritten.

    sites:    "guarded" lowers only the producers of the enabled site kinds (the paper's setting: attention's QKᵀ);
              "all" also lowers every other matmul of the model (the deployment case), in the format of the first
              enabled kind, with no look-ahead where there is no site.
    per_site: `SiteOverride`s, each giving one site its own rule over its kind's (a calibrated tau per layer,
              from `lampc calibrate`); compile refuses one that names no site of the model, or a site of another
              kind or module.
    """

    attention: SitePolicy | None = field(default_factory=SitePolicy)
    layer_norm: SitePolicy | None = None
    logits: SitePolicy | None = None
    gelu: SitePolicy | None = None
    sites: str = "guarded"
    per_site: tuple[SiteOverride, ...] = ()

    def __post_init__(self) -> None:
        for kind in SITE_KINDS:
            value = getattr(self, kind)
            if value is not None and not isinstance(value, SitePolicy):
                raise ValueError(f"Policy.{kind} must be a SitePolicy or None, got {type(value).__name__}")
            if value is not None:
                _check_no_pass_fields(value, f"Policy.{kind}.")
        object.__setattr__(self, "sites", _lower(self.sites))
        _check_choice("sites", self.sites, ("guarded", "all"), owner="Policy")
        if self.sites == "all" and not self.enabled_kinds():
            raise ValueError("Policy.sites='all' needs at least one enabled site kind to take the format from")
        _check_attention_only(self)
        for kind in LINEAR_KINDS:
            site = getattr(self, kind)
            if site is not None and site.counting_rule.softmax_only:
                what = f"criterion {site.criterion!r}" + (f" (count_from={site.count_from!r})" if site.rule.counted
                                                           else "")
                raise ValueError(f"Policy.{kind}: {what} applies to softmax sites only (attention, logits); use "
                                 "strict, relaxed or budget at layer_norm and activation sites")
        object.__setattr__(self, "per_site", tuple(self.per_site))
        seen = set()
        for override in self.per_site:
            if not isinstance(override, SiteOverride):
                raise ValueError(f"Policy.per_site must hold SiteOverride entries, got {type(override).__name__}")
            if override.site in seen:
                raise ValueError(f"Policy.per_site: site {override.site} is overridden twice")
            seen.add(override.site)
            base = getattr(self, override.kind)
            if base is None:
                raise ValueError(f"Policy.per_site: site {override.site} is a {override.kind} site, but the policy "
                                 f"does not enable {override.kind}")
            site = override.apply(base)
            if override.kind in LINEAR_KINDS and site.counting_rule.softmax_only:
                raise ValueError(f"Policy.per_site, site {override.site}: criterion {site.criterion!r} applies to "
                                 "softmax sites only")

    def site_policy(self, kind: str, index: int) -> SitePolicy:
        """The SitePolicy of site `index` of `kind`: the kind's, with that site's override if any."""
        base = getattr(self, kind)
        override = self.override_of(index)
        return base if override is None else override.apply(base)

    def override_of(self, index: int) -> SiteOverride | None:
        return next((o for o in self.per_site if o.site == index), None)

    def enabled_kinds(self) -> list[str]:
        return [kind for kind in SITE_KINDS if getattr(self, kind) is not None]

    def unguarded(self) -> SitePolicy:
        """The policy of producers that are no site (sites='all'): the first enabled kind's numbers, uniform."""
        base = getattr(self, self.enabled_kinds()[0])
        return dataclasses.replace(base, **NO_RECOMPUTE)

    def for_kind(self, kind: str) -> SitePolicy | None:
        return getattr(self, kind)

    @classmethod
    def from_overrides(cls, policy: "Policy | SitePolicy | None" = None, **overrides) -> "Policy":
        """Build a Policy from an optional base and keyword overrides.

        SitePolicy field names (format, tau, criterion, ...) apply to every enabled site kind; Policy field
        names (attention, layer_norm, logits, gelu, sites) replace that field. `kinds=[...]` enables those
        site kinds with the default SitePolicy (before the SitePolicy overrides apply); `kinds="all"` every kind.
        """
        if isinstance(policy, SitePolicy):
            policy = cls(attention=policy)
        if policy is None:
            policy = cls()
        if not isinstance(policy, Policy):
            raise ValueError(f"policy must be a lampc.Policy, a lampc.SitePolicy or None, got {type(policy).__name__}")
        passed = [name for name in SET_BY_PASSES if name in overrides]
        if passed:
            raise ValueError(f"{set_by_passes_text(passed[0])}: leave {', '.join(passed)} out")
        kinds = overrides.pop("kinds", None)
        if kinds is not None:
            kinds = parse_kinds(kinds)
            policy = dataclasses.replace(
                policy, **{k: (getattr(policy, k) or SitePolicy()) if k in kinds else None for k in SITE_KINDS})
        site_names = set(SITE_FIELDS)
        policy_names = {f.name for f in dataclasses.fields(Policy)}
        unknown = set(overrides) - site_names - policy_names
        if unknown:
            raise ValueError(
                f"unknown policy field(s) {sorted(unknown)}; SitePolicy fields: {sorted(site_names)}, "
                f"Policy fields: {sorted(policy_names)}"
            )
        site_overrides = {k: v for k, v in overrides.items() if k in site_names}
        top = {k: v for k, v in overrides.items() if k in policy_names}
        clash = sorted(set(PER_SITE_FIELDS) & set(site_overrides))
        if clash and (top.get("per_site") or policy.per_site):
            raise ValueError(f"{', '.join(clash)} given for every site, but the policy has per-site rules "
                             f"(per_site, e.g. calibrated taus) that these would change the meaning of: leave "
                             f"{', '.join(clash)} out, or compile without per_site")
        policy = dataclasses.replace(policy, **top)
        if site_overrides:
            changed = {}
            for kind in SITE_KINDS:
                current = getattr(policy, kind)
                if current is not None:
                    changed[kind] = _replace_site(current, site_overrides)
            policy = dataclasses.replace(policy, **changed)
        return policy

    def to_dict(self) -> dict:
        out = {"sites": self.sites}
        for kind in SITE_KINDS:
            site = getattr(self, kind)
            out[kind] = None if site is None else _site_dict(site)
        if self.per_site:
            out["per_site"] = [o.to_dict() for o in self.per_site]
        return out


def _replace_site(site: SitePolicy, overrides: dict) -> SitePolicy:
    """Apply overrides; a new criterion without a tau takes that criterion's default tau."""
    overrides = dict(overrides)
    if "criterion" in overrides and "tau" not in overrides:
        overrides["tau"] = None
    return dataclasses.replace(site, **overrides)


def _site_dict(site: SitePolicy) -> dict:
    out = dataclasses.asdict(site)
    out["format"] = site.format.name
    out["m_bits"] = site.m_bits
    return out


def parse_kinds(kinds) -> list[str]:
    """`kinds` as a list of SITE_KINDS: "all", one kind's name, or a list (tuple, set) of names, in any case."""
    if isinstance(kinds, str):
        words = [kinds.lower()]
    elif isinstance(kinds, (list, tuple, set, frozenset)):
        words = [_lower(k) for k in kinds]
    else:
        words = None
    if words == ["all"]:
        return list(SITE_KINDS)
    if not words or any(w not in SITE_KINDS for w in words):
        raise ValueError(f"kinds must be 'all', a site kind or a non-empty list of site kinds "
                         f"({', '.join(SITE_KINDS)}); got {kinds!r}")
    return list(dict.fromkeys(words))


def plain_number(value):
    """A numpy scalar or a one-element torch tensor as the Python number (or bool) it holds; anything else
    unchanged. Neither library is imported: a value of theirs means it is loaded already."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.bool_):
        return bool(value)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


ATTENTION_ONLY = {"streaming": "the streaming site owns an attention's softmax and p·v",
                  "exp_format": "only attention's softmax is rewritten (the logits site's is the user's)",
                  "smooth_k": "only attention's keys may move by a constant the softmax does not see"}
SOFTMAX_ONLY = {"granularity": "tiles are (rows, keys) of a softmax site's scores",
                "recompute_format": "the 16-bit recompute is the softmax sites'"}


def _check_attention_only(policy: "Policy") -> None:
    """ValueError naming a field set where it means nothing: streaming and smooth_k off attention, granularity and
    recompute_format at linear sites, streaming with sites='all'."""
    defaults = SitePolicy.__dataclass_fields__
    for kind in SITE_KINDS:
        site = getattr(policy, kind)
        if site is None:
            continue
        fields = ({**ATTENTION_ONLY, **SOFTMAX_ONLY} if kind in LINEAR_KINDS else
                  ATTENTION_ONLY if kind != ATTENTION else {})
        for name, why in fields.items():
            if getattr(site, name) != defaults[name].default:
                raise ValueError(f"Policy.{kind}.{name}={getattr(site, name)!r} means nothing at {kind} sites: "
                                 f"{why}")
    if policy.sites == "all" and policy.attention is not None and policy.attention.streaming:
        raise ValueError("Policy.attention.streaming=True computes p·v inside the attention op in FP32, which "
                         "sites='all' would lower: use sites='guarded' with streaming")


def _lower(value):
    """A vocabulary word in lower case (anything that is no str unchanged, for the check to refuse)."""
    return value.lower() if isinstance(value, str) else value


def _check_no_pass_fields(site: SitePolicy, owner: str) -> None:
    """ValueError naming a pass-only field (SET_BY_PASSES) that `site` sets to other than its default."""
    for name in SET_BY_PASSES:
        if getattr(site, name) != SitePolicy.__dataclass_fields__[name].default:
            raise ValueError(f"{owner}{set_by_passes_text(name)}; got {getattr(site, name)!r}: leave it out")
