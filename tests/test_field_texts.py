"""Every text form of a SitePolicy field is read by one codec (lampc/config/codec.py), typed from the field's
annotation: lm-eval's `model_args`, a `--policy` file (its kinds and its per-site entries) and the command line's
policy options. The test walks `dataclasses.fields(SitePolicy)`, so a new field fails here until it has a sample;
then it needs no edit in the readers: each takes its text, gives the value back, and names the field for a bad one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from lampc.cli import build_parser
from lampc.cli_policy import ARG_DEST, compile_arguments, load_policy_file
from lampc.cli_support import CliError
from lampc.config.codec import value_text
from lampc.formats import Format
from lampc.policy import PER_SITE_FIELDS, SET_BY_PASSES, Policy, SitePolicy

USER_FIELDS = [f.name for f in dataclasses.fields(SitePolicy) if f.name not in SET_BY_PASSES]

SAMPLES = {
    # field: (a value that is not the default, the fields it needs beside it, a text that is no value of it)
    "format": ("m7", {}, "m99"),
    "block_k": (4, {}, "abc"),
    "rounding": ("toward_zero", {}, "up"),
    "flush_every": (4, {}, "often"),
    "backend": ("native", {"format": "bf16"}, "gpu"),
    "criterion": ("relaxed", {}, "strictest"),
    "tau": (0.25, {}, "abc"),
    "length_scaling": (True, {}, "maybe"),
    "l_ref": (512, {}, "abc"),
    "budget": (0.05, {"criterion": "budget"}, "x"),
    "count_from": ("relaxed", {"criterion": "random"}, "colour"),
    "seed": (7, {}, "abc"),
    "dense_above": (0.5, {}, "lots"),
    "fused": (True, {}, "maybe"),
    "error_scale": ("l1", {}, "colour"),
    "granularity": ("tile", {}, "block"),
    "tile": ((32, 16), {}, "big"),
    "streaming": (True, {}, "maybe"),
    "exp_format": ("fp8_e4m3", {}, "m99"),
    "operand_format": ("fp8_e4m3", {}, "m99"),
    "operand_block": (32, {}, "big"),
    "recompute_format": ("bf16", {}, "m99"),
    "smooth_k": (True, {}, "maybe"),
}


def _value(site: SitePolicy, name: str):
    value = getattr(site, name)
    return value.name if isinstance(value, Format) else value


def _texts(fields: dict) -> dict:
    return {name: value_text(value) for name, value in fields.items()}


def test_every_user_field_has_a_sample():
    """A new SitePolicy field is tested by every reader below once it has a line in SAMPLES."""
    assert sorted(SAMPLES) == sorted(USER_FIELDS)
    for name, (value, context, _) in SAMPLES.items():
        assert _value(SitePolicy(**context, **{name: value}), name) == value != _value(SitePolicy(), name), name


@pytest.mark.parametrize("name", USER_FIELDS)
def test_model_args_read_every_field_from_its_text(name):
    pytest.importorskip("lm_eval", reason="lm-eval is the tasks extra")
    from lampc.tasks.model_args import read_model_args

    value, context, bad = SAMPLES[name]
    args = read_model_args(**_texts(context), **{name: value_text(value)})
    assert args.overrides[name] == value and type(args.overrides[name]) is type(value)
    assert _value(Policy.from_overrides(args.base, **args.overrides).attention, name) == value
    with pytest.raises(ValueError, match="model_args") as err:
        read_model_args(**_texts(context), **{name: bad})
    assert name in str(err.value)


@pytest.mark.parametrize("name", USER_FIELDS)
def test_a_policy_file_reads_every_field_as_text_or_as_a_value(tmp_path, name):
    value, context, bad = SAMPLES[name]
    path = tmp_path / "policy.json"
    for given in (value, value_text(value)):  # JSON's own type, or text (as a YAML string or a hand-written file)
        path.write_text(json.dumps({"attention": {**context, name: given}}))
        assert _value(load_policy_file(path).attention, name) == value, given
    path.write_text(json.dumps({"attention": {**context, name: bad}}))
    with pytest.raises(CliError, match="--policy: attention: ") as err:
        load_policy_file(path)
    assert name in str(err.value)


@pytest.mark.parametrize("name", PER_SITE_FIELDS)
def test_a_per_site_entry_reads_its_fields_as_text(tmp_path, name):
    value, context, _ = SAMPLES[name]
    path = tmp_path / "policy.json"
    entry = {"site": 0, "kind": "attention", **_texts({k: v for k, v in context.items() if k in PER_SITE_FIELDS}),
             name: value_text(value)}
    path.write_text(json.dumps({"attention": {}, "per_site": [entry]}))
    policy = load_policy_file(path)
    assert _value(policy.site_policy("attention", 0), name) == value


def _cli_options() -> dict[str, argparse.Action]:
    """The policy options of `lampc show` (every compiling command shares them), by SitePolicy field."""
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    field_of = {dest: field for field, dest in ARG_DEST.items()}  # --accumulator-rounding sets `rounding`
    return {field_of.get(a.dest, a.dest): a for a in commands.choices["show"]._actions
            if field_of.get(a.dest, a.dest) in USER_FIELDS}


def test_the_cli_has_options_for_the_fields_it_had():
    assert set(_cli_options()) == {"format", "block_k", "backend", "criterion", "tau", "budget", "fused",
                                   "error_scale", "rounding", "flush_every", "granularity", "tile", "streaming",
                                   "exp_format", "recompute_format", "smooth_k", "operand_format", "operand_block"}


@pytest.mark.parametrize("name", sorted(_cli_options()))
def test_the_cli_reads_every_field_it_has_an_option_for(name, capsys):
    value, context, bad = SAMPLES[name]
    options = _cli_options()
    before = [word for field, text in _texts(context).items()
              for word in (options[field].option_strings[0], text)[:1 if options[field].nargs == 0 else 2]]
    flag = options[name].option_strings[0]
    words = [flag] if options[name].nargs == 0 else [flag, value_text(value)]
    _, overrides = compile_arguments(build_parser().parse_args(["show", *before, *words]))
    assert overrides[name] == value and type(overrides[name]) is type(value)
    assert _value(Policy.from_overrides(None, **overrides).attention, name) == value
    if options[name].nargs == 0:
        return
    try:  # refused by argparse, naming the option, or (a text any string is, a format's name) by the policy
        _, overrides = compile_arguments(build_parser().parse_args(["show", *before, flag, bad]))
    except SystemExit as exit_:
        assert exit_.code == 2
        err = capsys.readouterr().err
        assert f"argument {flag}" in err and repr(bad) in err
    else:
        with pytest.raises(ValueError, match=f"SitePolicy.{name}"):
            Policy.from_overrides(None, **overrides)


@pytest.mark.parametrize("name, text, value", [("tau", "none", None), ("budget", "8", 8), ("budget", "5e-2", 0.05),
                                               ("block_k", " 2 ", 2), ("length_scaling", "Yes", True)])
def test_the_readers_agree_on_the_codecs_words(tmp_path, name, text, value):
    """The same text means the same value in each reader (the command line where it has the option): "none" for
    an optional field, a count or a fraction for the budget, spaces around a number, a flag's word in any case."""
    pytest.importorskip("lm_eval", reason="lm-eval is the tasks extra")
    from lampc.tasks.model_args import read_model_args

    context = {"criterion": "budget"} if name == "budget" else {}
    assert read_model_args(**context, **{name: text}).overrides[name] == value
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"attention": {**context, name: text}}))
    assert getattr(load_policy_file(path).attention, name) == (SitePolicy().tau if value is None else value)
    options = _cli_options()
    if name in options:
        _, overrides = compile_arguments(build_parser().parse_args(["show", options[name].option_strings[0], text]))
        assert overrides.get(name) == value  # a None option is one not given: the default
