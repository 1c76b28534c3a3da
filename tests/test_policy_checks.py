"""Policy inputs that were once taken silently or refused unclearly: a bool where a number belongs, the pass-only
fields (softcap, biased) in a user's policy, `kinds` of the wrong type, vocabulary words in another case, a policy
file that is not UTF-8, and numpy scalars as calibration targets."""

from __future__ import annotations

import json

import numpy as np
import pytest

import lampc
from lampc.cli_policy import load_policy_file
from lampc.cli_support import CliError
from lampc.policy import SET_BY_PASSES, SITE_KINDS, Policy, SiteOverride, SitePolicy

NUMERIC_FIELDS = {"block_k": {}, "tau": {}, "l_ref": {}, "seed": {}, "dense_above": {}, "softcap": {},
                  "budget": {"criterion": "budget"}}
"""SitePolicy's numeric fields, with what each needs beside it to apply."""


@pytest.mark.parametrize("name", sorted(NUMERIC_FIELDS))
@pytest.mark.parametrize("flag", [True, False, np.True_], ids=["True", "False", "np.True_"])
def test_a_bool_is_no_number_for_any_numeric_field(name, flag):
    """`dense_above=True` once became the rate 1.0; every numeric field refuses a bool by name."""
    with pytest.raises(ValueError, match=f"SitePolicy.{name}") as err:
        SitePolicy(**NUMERIC_FIELDS[name], **{name: flag})
    assert repr(flag) in str(err.value) or str(flag) in str(err.value)


@pytest.mark.parametrize("name, value", [("block_k", np.int64(4)), ("tau", np.float32(0.25)),
                                         ("l_ref", np.int32(512)), ("seed", np.uint8(3)),
                                         ("dense_above", np.float16(0.5))])
def test_numpy_scalars_still_count_as_numbers(name, value):
    site = SitePolicy(**{name: value})
    assert getattr(site, name) == value and type(getattr(site, name)) in (int, float)


@pytest.mark.parametrize("field, value", [("softcap", 30.0), ("biased", True)])
def test_a_user_policy_cannot_set_a_field_the_pass_discovers(field, value):
    """softcap and biased describe the model (Gemma2's cap, Bloom's ALiBi); on GPT-2 they changed the selections."""
    assert field in SET_BY_PASSES
    with pytest.raises(ValueError, match=f"Policy.attention.{field}.*set by the attention pass"):
        Policy(attention=SitePolicy(**{field: value}))
    with pytest.raises(ValueError, match=f"{field}.*set by the attention pass"):
        Policy.from_overrides(None, **{field: value})
    with pytest.raises(ValueError, match=f"Policy.logits.{field}"):
        Policy(attention=None, logits=SitePolicy(**{field: value}))
    SitePolicy(**{field: value})  # a site's own policy (the pass builds these) keeps them


@pytest.mark.parametrize("field, value", [("softcap", 30.0), ("biased", True)])
def test_a_policy_file_cannot_set_a_field_the_pass_discovers(tmp_path, field, value):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"attention": {"format": "m4", "criterion": "strict", field: value}}))
    with pytest.raises(CliError, match=f"--policy: attention: {field} is set by the attention pass"):
        load_policy_file(path)


def test_a_file_policy_lampc_wrote_still_loads(tmp_path):
    """Policy.to_dict writes softcap None and biased False; those defaults are no setting and load."""
    path = tmp_path / "policy.json"
    written = Policy.from_overrides(None, format="m7", kinds=["attention", "logits"])
    path.write_text(json.dumps(written.to_dict()))
    assert load_policy_file(path) == written


def test_compile_refuses_a_pass_only_field_before_capturing():
    with pytest.raises(ValueError, match="softcap is set by the attention pass"):
        lampc.compile(object(), softcap=30.0)  # no model is looked at: the policy is checked first


@pytest.mark.parametrize("kinds", [42, 4.5, [["attention"]], [3], {"attention": 1}, []])
def test_kinds_of_the_wrong_type_name_kinds_and_the_choices(kinds):
    with pytest.raises(ValueError, match="kinds") as err:
        Policy.from_overrides(None, kinds=kinds)
    assert all(kind in str(err.value) for kind in SITE_KINDS)
    with pytest.raises(ValueError, match="kinds must be"):
        lampc.compile(object(), kinds=kinds)


def test_kinds_take_a_name_a_list_a_tuple_or_all_in_any_case():
    assert Policy.from_overrides(None, kinds="Logits").enabled_kinds() == ["logits"]
    assert Policy.from_overrides(None, kinds=("ATTENTION", "gelu")).enabled_kinds() == ["attention", "gelu"]
    assert Policy.from_overrides(None, kinds="ALL").enabled_kinds() == list(SITE_KINDS)


def test_vocabulary_words_are_taken_in_any_case():
    """format always was (formats.parse); criterion, backend, error_scale, count_from, sites and kinds now too."""
    loud = SitePolicy(format="M4", criterion="Strict", backend="EMULATE", error_scale="Mixed")
    assert loud == SitePolicy(format="m4", criterion="strict", backend="emulate", error_scale="mixed")
    assert SitePolicy(criterion="Random", count_from="RELAXED").count_from == "relaxed"
    assert SitePolicy(format="bf16", backend="Native").backend == "native"
    assert Policy(sites="ALL").sites == "all"
    assert SiteOverride(0, "Attention", {"tau": 0.2}).kind == "attention"
    assert SitePolicy.from_spec(loud.to_spec()) == loud
    with pytest.raises(ValueError, match="SitePolicy.criterion must be one of"):
        SitePolicy(criterion="Strictest")


def test_a_policy_file_takes_vocabulary_words_in_any_case(tmp_path):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"attention": {"format": "M7", "criterion": "RELAXED"}, "sites": "All"}))
    policy = load_policy_file(path)
    assert (policy.attention.format.name, policy.attention.criterion, policy.sites) == ("m7", "relaxed", "all")


def test_a_policy_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('{"attention": {"format": "m4"}} // réglé'.encode("latin-1"))
    with pytest.raises(CliError, match=f"--policy: {path} is not UTF-8 text"):
        load_policy_file(path)


# ---- calibration targets -------------------------------------------------------------------------------------


@pytest.mark.parametrize("targets, message", [
    (dict(rate=np.float32(1.5)), "rate must be a recompute rate in (0, 1), got 1.5"),
    (dict(rate=np.True_), "rate must be a recompute rate in (0, 1), got True"),
    (dict(kl=np.float32(-1.0)), "kl must be a finite KL divergence > 0, got -1.0"),
    (dict(kl=np.bool_(True)), "kl must be a finite KL divergence > 0, got True"),
])
def test_numpy_targets_out_of_range_are_refused_by_name(targets, message):
    from lampc.eval.calibrate import calibrate

    with pytest.raises(ValueError) as err:
        calibrate(object(), None, **targets)
    assert message in str(err.value)


@pytest.mark.slow
def test_a_numpy_rate_calibrates_like_the_float_it_holds(capsys):
    """`rate=np.float32(0.05)` was refused although SitePolicy takes numpy scalars: now it is the float it holds.
    The calibration's longest step (each site alone at four thresholds) says which site it is at."""
    import torch
    from tiny_models import tiny_gpt2

    from lampc.eval.calibrate import Calibrator

    token_ids = torch.randint(0, 97, (400,), generator=torch.Generator().manual_seed(0))
    calibrator = Calibrator(tiny_gpt2(score_gain=4.0), token_ids=token_ids, seq_len=32, n_seq=2, format="m3",
                            progress=True)
    err = capsys.readouterr().err
    assert "lampc: site 0 alone (1 of 2 sites)" in err and "lampc: site 1 alone (2 of 2 sites)" in err
    numpy_rate = np.float32(0.05)
    got, want = calibrator.for_rate(numpy_rate), calibrator.for_rate(float(numpy_rate))
    assert got.target == want.target == {"rate": float(numpy_rate)}
    assert [s["tau"] for s in got.sites] == [s["tau"] for s in want.sites]
    assert got.measured == want.measured
    assert json.loads(json.dumps(got.to_dict()))["calibration"]["target"] == {"rate": float(numpy_rate)}
