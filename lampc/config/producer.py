"""The producer of a site: how its matmul runs in low precision. One type per kind of producer, as data.

    Emulated(format, block_k, rounding, flush_every, operand_format, operand_block)
                                the bit-exact model of an m-bit accumulator: RN (or RZ) after every multiply-add
                                (block_k = 1) or after each sequential FP32 sum of block_k terms, optionally
                                flushed into FP32 every flush_every blocks (lampc/numerics/accumulate.py); its
                                operands optionally rounded to operand_format first, one scale per
                                operand_block rows / columns (lampc/numerics/operands.py)
    Native(format)              the real torch dtype's GEMM (bf16, fp16): operands in the dtype, FP32
                                accumulation inside, the output rounded to the dtype

A producer type is the key its implementation is registered under (lampc/producers/): the ops ask the registry,
never the type's name. `SitePolicy.backend` names the type (`PRODUCER_TYPES`); a new producer is a dataclass here
(its fields validate themselves), an entry in `PRODUCER_TYPES`, and its implementation (docs/DESIGN.md, "Adding a
producer"). Loads no torch.

    >>> Emulated("m4").label
    'm4/bk1/emulate'
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..formats import ACCUMULATOR_ROUNDINGS as ROUNDINGS, Format, parse as parse_format
from .codec import Record

NATIVE_FORMATS = ("bf16", "fp16", "fp32")
"""Formats the native producer runs as real torch dtypes (matmul with FP32 accumulation inside)."""


@dataclass(frozen=True)
class Producer(Record):
    """A site's producer: every type has a `format` (what its output is rounded to)."""

    format: Format

    def __post_init__(self) -> None:
        object.__setattr__(self, "format", field_format(self.format))

    @property
    def backend(self) -> str:
        """The name users give this producer type (SitePolicy.backend)."""
        return self.CODE_TAG

    @property
    def block_k(self) -> int:
        """Terms summed in FP32 before a rounding: 1 (round every term) unless the type accumulates in blocks."""
        return 1

    @property
    def label(self) -> str:
        """Its numbers in one word, as listings print them: 'm4/bk1/emulate', 'bf16/native'."""
        return f"{self.format.name}/{self.backend}"


@dataclass(frozen=True)
class Emulated(Producer):
    """The emulated m-bit accumulator: block_k = 1 rounds after every multiply-add (strict), b > 1 sums b terms in
    FP32 before each rounding."""

    CODE_TAG = "emulate"
    CODE_POSITIONAL = ("format",)

    format: Format = "m4"
    block_k: int = 1
    rounding: str = "nearest"
    flush_every: int | None = None
    operand_format: Format | None = None
    operand_block: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.block_k, bool) or not isinstance(self.block_k, int) or self.block_k < 1:
            raise ValueError(f"SitePolicy.block_k must be an integer >= 1, got {self.block_k!r}")
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"SitePolicy.rounding must be one of {', '.join(ROUNDINGS)}, got {self.rounding!r}")
        if self.rounding == "toward_zero" and not self.format.has_fp32_range:
            raise ValueError(f"SitePolicy.rounding='toward_zero' needs a format with FP32's exponent range (m1..m23, "
                             f"bf16, tf32), got format {self.format.name!r}")
        flush = self.flush_every
        if flush is not None and (isinstance(flush, bool) or not isinstance(flush, int) or flush < 1):
            raise ValueError(f"SitePolicy.flush_every must be an integer >= 1 or None, got {flush!r}")
        if self.operand_format is not None:
            try:
                fmt = parse_format(self.operand_format)
            except (ValueError, TypeError) as err:
                raise ValueError(f"SitePolicy.operand_format: {err}") from None
            object.__setattr__(self, "operand_format", None if fmt.is_identity else fmt)
        block = self.operand_block
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise ValueError(f"SitePolicy.operand_block must be an integer >= 1, got {block!r}")

    @property
    def label(self) -> str:
        extra = ("/rz" if self.rounding == "toward_zero" else "") + (
            f"/flush{self.flush_every}" if self.flush_every is not None else "") + (
            f"/operands {self.operand_format.name}@{self.operand_block}" if self.operand_format is not None else "")
        return f"{self.format.name}/bk{self.block_k}{extra}/emulate"

    @property
    def plain(self) -> bool:
        """Round to nearest, one chunk, FP32 operands: the accumulator the fast fused paths implement (lp_product,
        Triton)."""
        return self.rounding == "nearest" and self.flush_every is None and self.operand_format is None


@dataclass(frozen=True)
class Native(Producer):
    """A real low-precision GEMM in the format's torch dtype (bf16, fp16; fp32 is the identity)."""

    CODE_TAG = "native"
    CODE_POSITIONAL = ("format",)

    format: Format = "bf16"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.format.name not in NATIVE_FORMATS:
            raise ValueError(
                f"SitePolicy.backend='native' needs a format torch has as a dtype (bf16, fp16, fp32), "
                f"got format {self.format.name!r}; use backend='emulate'")


PRODUCER_TYPES: dict[str, type[Producer]] = {kind.CODE_TAG: kind for kind in (Emulated, Native)}
"""SitePolicy.backend -> the producer type it builds (each type's tag is its backend name)."""

BACKENDS = tuple(PRODUCER_TYPES)
PRODUCER_FIELDS = tuple(dict.fromkeys(f.name for t in PRODUCER_TYPES.values() for f in dataclasses.fields(t)))
"""The SitePolicy fields that describe a producer (each type takes the ones it declares)."""


def make_producer(backend: str, fields: dict, defaults: dict) -> Producer:
    """The producer SitePolicy's flat fields describe: `fields` holds SitePolicy's value of every field some producer
    type declares (PRODUCER_FIELDS), `defaults` SitePolicy's defaults of them; the type takes those it declares, and
    any other that is not at its default is refused by name (block_k with backend='native')."""
    if backend not in PRODUCER_TYPES:
        raise ValueError(f"SitePolicy.backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    kind = PRODUCER_TYPES[backend]
    own = {f.name for f in dataclasses.fields(kind)}
    producer = kind(**{name: value for name, value in fields.items() if name in own})
    for name, value in fields.items():
        if name not in own and (type(value) is not type(defaults[name]) or value != defaults[name]):
            users = [b for b, t in PRODUCER_TYPES.items() if name in {f.name for f in dataclasses.fields(t)}]
            raise ValueError(f"SitePolicy.{name} applies to backend={' or '.join(map(repr, users))} only; "
                             f"{backend} has no {name}, got {value!r}")
    return producer


def producer_fields(producer: Producer) -> dict:
    """The SitePolicy fields that describe `producer` (the inverse of make_producer), with its backend."""
    return {"backend": producer.backend, **{f.name: getattr(producer, f.name) for f in dataclasses.fields(producer)}}


def decode_producer(text: str) -> Producer:
    """The producer written as `text` (its type from the first word)."""
    tag = text.split(maxsplit=1)[0] if text.strip() else ""
    if tag not in PRODUCER_TYPES:
        raise ValueError(f"producer text must start with one of {', '.join(BACKENDS)}; got {text!r}")
    return PRODUCER_TYPES[tag].from_text(text)


def field_format(value) -> Format:
    try:
        return parse_format(value)
    except (ValueError, TypeError) as err:
        raise ValueError(f"SitePolicy.format: {err}") from None
