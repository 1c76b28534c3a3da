"""Format descriptors: special values against torch/ml_dtypes, parsing, errors, the table."""

import dataclasses

import ml_dtypes
import pytest
import torch

from lampc import formats
from lampc.formats import BF16, FP8_E4M3, FP8_E5M2, FP16, FP32, TF32, Format


@pytest.mark.parametrize(
    "fmt, finfo",
    [
        (FP32, ml_dtypes.finfo("float32")),
        (BF16, ml_dtypes.finfo(ml_dtypes.bfloat16)),
        (FP16, ml_dtypes.finfo("float16")),
        (FP8_E4M3, ml_dtypes.finfo(ml_dtypes.float8_e4m3fn)),
        (FP8_E5M2, ml_dtypes.finfo(ml_dtypes.float8_e5m2)),
    ],
    ids=lambda v: getattr(v, "name", ""),
)
def test_special_values_match_ml_dtypes(fmt, finfo):
    assert fmt.max_finite == float(finfo.max)
    assert fmt.min_normal == float(finfo.smallest_normal)
    assert fmt.min_subnormal == float(finfo.smallest_subnormal)
    assert fmt.m_bits == finfo.nmant
    assert fmt.unit_roundoff == float(finfo.eps) / 2


def test_named_format_specs():
    assert FP8_E4M3.max_finite == 448 and FP8_E4M3.finite_only
    assert FP8_E4M3.overflow_threshold == 464  # 448 + ulp(448)/2: ml_dtypes sends 464 to NaN
    assert FP8_E5M2.max_finite == 57344 and FP8_E5M2.overflow_value == float("inf")
    assert FP16.max_finite == 65504 and FP16.overflow_threshold == 65520
    assert TF32.m_bits == 10 and TF32.exp_bits == 8 and TF32.torch_dtype is None
    assert BF16.torch_dtype is torch.bfloat16 and FP16.torch_dtype is torch.float16


@pytest.mark.parametrize("m", [1, 4, 7, 10, 23])
def test_mantissa_only_keeps_fp32_range(m):
    fmt = formats.mantissa_only(m)
    assert fmt.name == f"m{m}" and fmt.m_bits == m and fmt.exp_bits is None
    assert fmt.is_mantissa_only
    assert fmt.min_normal == 2.0**-126
    assert fmt.max_finite == (2 - 2.0**-m) * 2.0**127
    assert fmt.unit_roundoff == 2.0 ** -(m + 1)


def test_identity_formats():
    assert FP32.is_identity and formats.mantissa_only(23).is_identity
    assert not any(f.is_identity for f in (TF32, BF16, FP16, FP8_E4M3, FP8_E5M2))
    assert not formats.mantissa_only(22).is_identity


@pytest.mark.parametrize("bad", [0, 24, -1, 4.0, "4", True])
def test_mantissa_only_rejects_bad_m(bad):
    with pytest.raises(ValueError, match=r"\bm\b"):
        formats.mantissa_only(bad)


@pytest.mark.parametrize(
    "name, expected",
    [("m1", "m1"), ("M23", "m23"), ("bf16", "bf16"), ("BF16", "bf16"), ("fp32", "fp32"),
     ("tf32", "tf32"), ("Fp16", "fp16"), ("fp8_e4m3", "fp8_e4m3"), ("FP8_E5M2", "fp8_e5m2")],
)
def test_parse_names(name, expected):
    assert formats.parse(name).name == expected


def test_parse_returns_format_unchanged():
    fmt = formats.mantissa_only(5)
    assert formats.parse(fmt) is fmt


@pytest.mark.parametrize("bad", ["m0", "m24", "fp64", "", "e4m3"])
def test_parse_unknown_lists_valid_names(bad):
    with pytest.raises(ValueError, match="valid names: m1, ..., m23, fp32, tf32, bf16"):
        formats.parse(bad)


def test_parse_rejects_non_string():
    with pytest.raises(TypeError):
        formats.parse(4)


def test_format_is_frozen_and_hashable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        BF16.m_bits = 3
    assert len({formats.mantissa_only(4), formats.parse("m4")}) == 1


def test_repr_is_readable():
    assert repr(BF16) == "Format('bf16', m_bits=7, exp_bits=8)"
    assert repr(formats.mantissa_only(4)) == "Format('m4', m_bits=4, exp_bits=fp32)"
    assert "finite_only=True" in repr(FP8_E4M3)


def test_descriptor_validates_fields():
    with pytest.raises(ValueError, match="m_bits"):
        Format("bad", m_bits=0)
    with pytest.raises(ValueError, match="exp_bits"):
        Format("bad", m_bits=3, exp_bits=9)


def test_formats_table_lists_every_format():
    table = formats.formats_table()
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["name", "mantissa"]
    assert len(lines) == 2 + len(formats.all_formats())
    assert any(line.startswith("fp8_e4m3") and "448" in line for line in lines)
    assert any(line.startswith("m4 ") and "fp32 range" in line and "2^-5" in line for line in lines)
