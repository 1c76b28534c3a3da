"""lm-eval's `model_args` for the model "lampc": every value as lm-eval's own parser hands it over, checked before any
model is loaded. A bad value is a ValueError that names the field and what it takes; nothing becomes a default
silently. Values are produced by lm-eval's `simple_parse_args_string` (the CLI's and simple_evaluate's parser)."""

from __future__ import annotations

import re

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is the tasks extra: pip install 'lampc[tasks]'")

from lm_eval.utils import simple_parse_args_string  # noqa: E402

from lampc.policy import Policy  # noqa: E402
from lampc.tasks.model_args import DEFAULT_BATCH_SIZE, read_model_args  # noqa: E402

BOOL_EXPECTED = "expected true/false, 1/0 or yes/no"


def _read(arg_string: str):
    """model_args as lm-eval parses them from `--model_args` / `simple_evaluate(model_args=...)`."""
    return read_model_args(**simple_parse_args_string(arg_string))


@pytest.mark.parametrize("arg_string", ["fused=maybe", "fused=ture", "length_scaling=on", "fp32=maybe", "kl=nope",
                                        "kl=2", "fused=0.5", "fp32=None"])
def test_a_bool_field_takes_only_the_six_words(arg_string):
    field, text = arg_string.split("=")
    value = simple_parse_args_string(arg_string)[field]
    with pytest.raises(ValueError, match=rf"model_args {field}: {BOOL_EXPECTED} \(any case\), got "
                                         rf"{re.escape(repr(value))}"):
        _read(arg_string)


@pytest.mark.parametrize("text, want", [("true", True), ("TRUE", True), ("Yes", True), ("1", True), ("false", False),
                                        ("False", False), ("NO", False), ("0", False), ("'yes'", True),
                                        ("'0'", False)])
def test_the_bool_words_in_any_case(text, want):
    args = _read(f"kl={text},fused={text},length_scaling={text},criterion=strict")
    assert args.kl is want
    assert args.overrides["fused"] is want and args.overrides["length_scaling"] is want
    assert _read(f"fp32={text}").fp32 is want


@pytest.mark.parametrize("arg_string, shown", [("batch_size=-1", "-1"), ("batch_size=abc", "'abc'"),
                                               ("batch_size=0", "0"), ("batch_size=2.5", "2.5"),
                                               ("batch_size=true", "True"), ("batch_size=auto:x", "'auto:x'")])
def test_batch_size_is_a_positive_integer_or_auto(arg_string, shown):
    with pytest.raises(ValueError, match=rf"model_args batch_size: expected an integer >= 1 or auto, got "
                                         rf"{re.escape(shown)}"):
        _read(arg_string)


@pytest.mark.parametrize("text, want", [("4", 4), ("'16'", 16), ("auto", DEFAULT_BATCH_SIZE),
                                        ("auto:4", DEFAULT_BATCH_SIZE)])
def test_batch_size_accepted(text, want):
    assert _read(f"batch_size={text}").batch_size == want
    assert read_model_args().batch_size == DEFAULT_BATCH_SIZE


@pytest.mark.parametrize("arg_string, shown", [("max_length=0", "0"), ("max_length=-5", "-5"),
                                               ("max_length=abc", "'abc'"), ("max_length=1.5", "1.5")])
def test_max_length_is_a_positive_integer(arg_string, shown):
    with pytest.raises(ValueError, match=rf"model_args max_length: expected an integer >= 1, got {re.escape(shown)}"):
        _read(arg_string)


def test_max_length_accepted():
    assert _read("max_length=128").max_length == 128
    assert read_model_args().max_length is None


@pytest.mark.parametrize("arg_string, named", [("fp32=True,format=m4", "format"),
                                               ("fp32=true,tau=0.2,criterion=strict", "criterion, tau"),
                                               ("fp32=1,kinds=attention+logits", "kinds"),
                                               ("fp32=yes,sites=all", "sites")])
def test_fp32_refuses_the_policy_fields_it_would_drop(arg_string, named):
    with pytest.raises(ValueError, match=rf"model_args fp32=True runs the uncompiled FP32 model, which has no "
                                         rf"policy: leave out {re.escape(named)}"):
        _read(arg_string)
    assert _read("fp32=True,kl=false,batch_size=2").fp32 is True  # its own fields are fine


@pytest.mark.parametrize("arg_string, message", [
    ("tau=abc", "model_args: SitePolicy.tau must be a finite number, got 'abc'"),
    ("tau=-1", "model_args: SitePolicy.tau for criterion 'strict' must be"),
    ("criterion=budget,budget=x", "model_args budget: expected an int k per row or a fraction in (0, 1], got 'x'"),
    ("criterion=budget", "model_args: SitePolicy.budget is required for criterion='budget'"),
    ("block_k=abc", "model_args: SitePolicy.block_k must be an integer >= 1, got 'abc'"),
    ("block_k=0", "model_args: SitePolicy.block_k must be an integer >= 1, got 0"),
    ("format=m99", "model_args: SitePolicy.format"),
    ("kinds=attention+colour", "model_args: kinds must be"),
    ("sites=some", "model_args: Policy.sites must be one of guarded, all"),
    ("dense_above=lots", "model_args: SitePolicy.dense_above must be a rate in [0, 1], got 'lots'"),
])
def test_policy_fields_are_checked_by_the_policy_itself(arg_string, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _read(arg_string)


def test_policy_fields_arrive_typed():
    args = _read("format=m7,criterion=budget,budget=0.05,block_k='2',tau=None,kinds=attention+logits,fused=yes")
    assert args.overrides == {"format": "m7", "criterion": "budget", "budget": 0.05, "block_k": 2, "tau": None,
                              "kinds": ["attention", "logits"], "fused": True}
    policy = Policy.from_overrides(args.base, **args.overrides)
    assert policy.enabled_kinds() == ["attention", "logits"] and policy.logits.budget == 0.05
    assert _read("criterion=budget,budget='8'").overrides["budget"] == 8  # a count, as parse_budget reads it
    assert _read("kinds=all").overrides["kinds"] == "all"


def test_a_missing_policy_file_names_the_field(tmp_path):
    with pytest.raises(ValueError, match=r"model_args policy: no such file: .*nope\.json"):
        read_model_args(policy=str(tmp_path / "nope.json"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_a_cuda_device_in_model_args_without_cuda_is_refused(device):
    with pytest.raises(ValueError, match=rf"model_args device: {device!r} is not available here: this torch has no "
                                         rf"CUDA"):
        _read(f"device={device}")


def test_a_device_that_is_no_device_is_refused():
    with pytest.raises(ValueError, match=r"model_args device: expected a torch device such as cpu, cuda, cuda:0 or "
                                         r"mps, got 'gpu'"):
        _read("device=gpu")
    assert _read("device=cpu").device == torch.device("cpu")
    assert read_model_args().device == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback is for a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_lm_evals_own_device_falls_back_to_the_cpu_with_one_warning(device):
    """lm-eval's --device defaults to cuda:0: on a CPU-only torch that is lm-eval's default, not the user's
    choice, so lampc runs on the CPU and says so once."""
    with pytest.warns(UserWarning, match=rf"lm-eval's device {device!r} is not available here: this torch has no "
                                         r"CUDA \(.*\); running on the CPU") as caught:
        args = read_model_args(lm_eval_device=device)
    assert args.device == torch.device("cpu") and len(caught) == 1
    assert read_model_args(lm_eval_device="cpu").device == torch.device("cpu")


def test_model_args_device_wins_over_lm_evals():
    assert read_model_args(device="cpu", lm_eval_device="cuda:0").device == torch.device("cpu")


def test_unknown_field_lists_the_accepted_ones():
    with pytest.raises(ValueError, match=r"model_args: unknown field\(s\) \['colour'\]; lampc takes model, fp32, "):
        _read("model=embedded,colour=red")
