"""Number-format descriptors: what a low-precision accumulator (or a native dtype) can represent.

A `Format` is a small frozen description of a binary floating-point format: how many explicit mantissa
bits it keeps, its exponent range, and what happens on overflow. It carries no behaviour of its own;
`lampc.numerics.round_to` reads it to round float32 tensors onto the format's grid.

Two kinds exist:

- **mantissa-only** formats `m1` .. `m23` (docs/METHOD.md §2): the FP32 exponent range is kept and only the
  significand is shortened. `m23` is FP32 itself (rounding is a no-op).
- **full** formats with their own exponent field: `bf16`, `fp16`, `tf32`, `fp8_e4m3`, `fp8_e5m2`.

    >>> parse("bf16")
    Format('bf16', m_bits=7, exp_bits=8)
    >>> mantissa_only(4).max_finite == (2 - 2**-4) * 2.0**127
    True
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads when a dtype is first asked for: `lampc --help` reads formats without it
    import torch

ACCUMULATOR_ROUNDINGS = ("nearest", "toward_zero")
"""How an emulated accumulator rounds: to nearest, ties to even, or toward zero (truncation: FP22 is m13 toward zero)."""

FP32_MANTISSA_BITS = 23
FP32_EXPONENT_BITS = 8


@dataclasses.dataclass(frozen=True)
class Format:
    """A binary floating-point format with round-to-nearest-even, described by its bit budget.

    Fields:
        name: short lower-case name used everywhere (`"m4"`, `"bf16"`, `"fp8_e4m3"`).
        m_bits: explicit (stored) mantissa bits; the significand has `m_bits + 1` bits.
        exp_bits: exponent field width, or None for "mantissa-only": the FP32 exponent range
            (normal exponents -126..127, FP32 subnormals) is kept.
        dtype_name: the name of the torch dtype that implements the format natively ("bfloat16"), or None;
            the `torch_dtype` property is that dtype.
        finite_only: True for the OCP "fn" encoding (fp8_e4m3): no infinities, the top binade is
            used for finite values except its all-ones mantissa, which is NaN. Overflow gives NaN.

    Semantics modelled: IEEE-754 style sign/exponent/significand values with gradual underflow
    (subnormals), round to nearest with ties to even, signed zeros, NaN and infinity propagation,
    overflow to ±inf (or NaN for `finite_only`) when |x| >= max_finite + ulp(max_finite)/2.

    Not modelled: other rounding modes (stochastic, toward zero), saturating casts, flush-to-zero /
    denormals-are-zero hardware modes, NaN payloads (a NaN stays a NaN, its payload is not specified),
    exponent biases other than IEEE's `2**(exp_bits-1) - 1`, scaling factors of block formats (MX),
    and how a real accelerator orders or fuses its additions (see docs/NUMERICS.md).
    """

    name: str
    m_bits: int
    exp_bits: int | None = None
    dtype_name: str | None = None
    finite_only: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.m_bits <= FP32_MANTISSA_BITS:
            raise ValueError(f"m_bits must be in 1..23, got {self.m_bits}")
        if self.exp_bits is not None and not 2 <= self.exp_bits <= FP32_EXPONENT_BITS:
            raise ValueError(f"exp_bits must be in 2..8 or None, got {self.exp_bits}")

    def __repr__(self) -> str:
        exp = "fp32" if self.exp_bits is None else str(self.exp_bits)
        extra = ", finite_only=True" if self.finite_only else ""
        return f"Format({self.name!r}, m_bits={self.m_bits}, exp_bits={exp}{extra})"

    def __str__(self) -> str:
        return self.name

    @property
    def torch_dtype(self) -> torch.dtype | None:
        """The torch dtype that implements the format natively (torch.bfloat16), or None."""
        if self.dtype_name is None:
            return None
        import torch

        return getattr(torch, self.dtype_name)

    # -- exponent range -------------------------------------------------------------------------

    @property
    def is_mantissa_only(self) -> bool:
        """True when the exponent range is FP32's (no exponent field of its own)."""
        return self.exp_bits is None

    @property
    def bias(self) -> int:
        """IEEE exponent bias, `2**(exp_bits-1) - 1` (127 for mantissa-only formats)."""
        exp_bits = FP32_EXPONENT_BITS if self.exp_bits is None else self.exp_bits
        return 2 ** (exp_bits - 1) - 1

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal number, `1 - bias`."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        """Exponent of the largest finite number (`bias`, or `bias + 1` for finite-only formats)."""
        return self.bias + 1 if self.finite_only else self.bias

    # -- special values -------------------------------------------------------------------------

    @property
    def max_finite(self) -> float:
        """Largest finite value (448 for fp8_e4m3, 57344 for fp8_e5m2, 65504 for fp16)."""
        top_fraction = 2.0 ** (1 - self.m_bits) if self.finite_only else 2.0**-self.m_bits
        return (2.0 - top_fraction) * 2.0**self.emax

    @property
    def overflow_threshold(self) -> float:
        """Smallest |x| that overflows: max_finite + ulp(max_finite) / 2 (a tie there overflows)."""
        return self.max_finite + 2.0 ** (self.emax - self.m_bits - 1)

    @property
    def overflow_value(self) -> float:
        """What an overflowing magnitude becomes: inf, or NaN for finite-only formats."""
        return float("nan") if self.finite_only else float("inf")

    @property
    def min_normal(self) -> float:
        """Smallest positive normal value, `2**emin`."""
        return 2.0**self.emin

    @property
    def min_subnormal(self) -> float:
        """Smallest positive subnormal value, `2**(emin - m_bits)` (the subnormal grid spacing)."""
        return 2.0 ** (self.emin - self.m_bits)

    @property
    def unit_roundoff(self) -> float:
        """u = 2**-(m_bits + 1): the relative error bound of one rounding in the normal range."""
        return 2.0 ** -(self.m_bits + 1)

    @property
    def has_fp32_range(self) -> bool:
        """True when the format has FP32's exponent range and infinities (m1..m23, bf16, tf32): rounding to it
        drops a constant number of mantissa bits, and only then can an accumulator truncate (ACCUMULATOR_ROUNDINGS)."""
        return self.emin == -126 and self.emax == 127 and not self.finite_only

    @property
    def is_identity(self) -> bool:
        """True when rounding a float32 to this format never changes it (fp32 and m23)."""
        return (
            self.m_bits == FP32_MANTISSA_BITS
            and self.exp_bits in (None, FP32_EXPONENT_BITS)
            and not self.finite_only
        )


def mantissa_only(m: int) -> Format:
    """The mantissa-only format `m<m>`: m explicit mantissa bits, FP32 exponent range (docs/METHOD.md §2)."""
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= FP32_MANTISSA_BITS:
        raise ValueError(f"m must be an int in 1..23 (explicit mantissa bits), got m={m!r}")
    return Format(f"m{m}", m_bits=m, dtype_name="float32" if m == FP32_MANTISSA_BITS else None)


# Named formats. Special values follow IEEE 754-2019 (binary32, binary16), Google's bfloat16,
# NVIDIA's TF32 (an 8-bit exponent with a 10-bit mantissa, stored in 32 bits) and the OCP 8-bit
# floating point specification (OFP8, 2023): E4M3 has no infinities (max 448, S.1111.111 is NaN),
# E5M2 is IEEE-like (max 57344, with infinities).
FP32 = Format("fp32", m_bits=23, exp_bits=8, dtype_name="float32")
TF32 = Format("tf32", m_bits=10, exp_bits=8)
BF16 = Format("bf16", m_bits=7, exp_bits=8, dtype_name="bfloat16")
FP16 = Format("fp16", m_bits=10, exp_bits=5, dtype_name="float16")
FP8_E4M3 = Format(
    "fp8_e4m3", m_bits=3, exp_bits=4, dtype_name="float8_e4m3fn", finite_only=True
)
FP8_E5M2 = Format("fp8_e5m2", m_bits=2, exp_bits=5, dtype_name="float8_e5m2")

NAMED_FORMATS: dict[str, Format] = {f.name: f for f in (FP32, TF32, BF16, FP16, FP8_E4M3, FP8_E5M2)}

_MANTISSA_ONLY_NAME = re.compile(r"m(\d+)")


def valid_names() -> list[str]:
    """Every name `parse` accepts (case-insensitive)."""
    return ["m1", "...", "m23", *NAMED_FORMATS]


def parse(name_or_format: str | Format) -> Format:
    """Return the Format for a name ("m4", "bf16", "FP8_E4M3", ...); a Format is returned unchanged."""
    if isinstance(name_or_format, Format):
        return name_or_format
    if not isinstance(name_or_format, str):
        raise TypeError(f"format must be a str or a Format, got {type(name_or_format).__name__}")
    key = name_or_format.strip().lower()
    if key in NAMED_FORMATS:
        return NAMED_FORMATS[key]
    match = _MANTISSA_ONLY_NAME.fullmatch(key)
    if match and 1 <= int(match.group(1)) <= FP32_MANTISSA_BITS:
        return mantissa_only(int(match.group(1)))
    names = ", ".join(valid_names())
    raise ValueError(f"unknown format {name_or_format!r}; valid names: {names}")


def all_formats() -> list[Format]:
    """The named formats, then the mantissa-only formats m1..m23."""
    return [*NAMED_FORMATS.values(), *(mantissa_only(m) for m in range(1, FP32_MANTISSA_BITS + 1))]


def formats_table(formats: list[Format] | None = None) -> str:
    """A plain-text table of formats (what `lampc formats` prints)."""
    formats = all_formats() if formats is None else [parse(f) for f in formats]
    header = ("name", "mantissa bits", "exponent bits", "max finite", "unit roundoff", "native dtype")
    rows = [header]
    for fmt in formats:
        exp = "fp32 range" if fmt.exp_bits is None else str(fmt.exp_bits)
        native = fmt.dtype_name or "-"
        rows.append(
            (fmt.name, str(fmt.m_bits), exp, f"{fmt.max_finite:.6g}", f"2^-{fmt.m_bits + 1}", native)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
