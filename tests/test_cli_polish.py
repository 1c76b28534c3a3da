"""The command line's small contracts: --help imports no heavy library, option vocabularies take any case, every
command that writes takes --out (and --output), refusals come before the work, and third-party noise stays off by
default (--verbose shows it)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lampc.cli import SUBCOMMANDS, build_parser, main

HEAVY = ("torch", "transformers", "lm_eval", "onnx", "onnxruntime", "onnxscript", "matplotlib")
ROOT = Path(__file__).resolve().parents[1]
WRITING = {"eval": "out", "demo": "out", "calibrate": "out", "export": "out", "tasks": "output"}
"""Every command that writes files, and the attribute its destination lands in."""


def _python(code: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


HELP_PROBE = """
import json, sys
from lampc.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exit_:
    code = exit_.code
heavy = [name for name in json.loads(%r) if name in sys.modules]
print("PROBE", json.dumps({"code": code, "heavy": heavy}))
""" % json.dumps(HEAVY)


def _probe(*argv: str) -> dict:
    done = _python(HELP_PROBE, *argv)
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("PROBE ")]
    assert line, done.stderr[-2000:]
    return {**json.loads(line[-1][len("PROBE "):]), "stdout": done.stdout}


@pytest.mark.parametrize("argv", [["--help"], ["formats", "--help"], ["show", "--help"], ["demo", "--help"],
                                  ["eval", "--help"], ["calibrate", "--help"], ["export", "--help"],
                                  ["generate", "--help"], ["tasks", "--help"], ["evl"], ["eval", "--seq-len", "0"]])
def test_help_and_argument_errors_import_no_heavy_library(argv):
    """`lampc --help`, every subcommand's --help, a mistyped command and a bad argument load none of torch,
    transformers, lm-eval, ONNX or matplotlib (they cost seconds and hundreds of MiB): those load when a command
    runs."""
    probe = _probe(*argv)
    assert probe["code"] == (0 if "--help" in argv else 2)
    assert probe["heavy"] == []


def test_parsing_every_option_imports_no_heavy_library():
    """Building every subcommand's parser and parsing options (the argument checks run
    as types) loads nothing heavy either: a command's work, not its arguments, pays for torch."""
    code = """
import json, sys
from lampc.cli import SUBCOMMANDS, build_parser
parser = build_parser(list(SUBCOMMANDS))
parser.parse_args(["eval", "--format", "M4,m7", "--criterion", "Strict,uniform", "--kinds", "Attention",
                   "--budget", "0.1", "--out", "x"])
parser.parse_args(["show", "--criterion", "RELAXED", "--backend", "Emulate", "--error-scale", "Mixed"])
print("PROBE", json.dumps([name for name in json.loads(sys.argv[1]) if name in sys.modules]))
"""
    done = _python(code, json.dumps(HEAVY))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("PROBE ")[-1].strip() == "[]"


def test_the_top_level_help_lists_each_command_with_its_own_help_line():
    """`lampc --help` lists the commands without importing them: its lines are the ones each command registers."""
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    registered = {choice.dest: choice.help for choice in commands._choices_actions}
    assert set(registered) == set(SUBCOMMANDS)
    for name, (_, help_line) in SUBCOMMANDS.items():
        assert registered[name] == help_line, name
    top = _probe("--help")["stdout"]
    for name, (_, help_line) in SUBCOMMANDS.items():
        assert name in top and help_line.split()[0] in top


# ---- vocabularies: any case ------------------------------------------------------------------------------------


def test_policy_options_take_their_vocabulary_in_any_case():
    from lampc.cli_policy import compile_arguments
    from lampc.policy import Policy

    args = build_parser().parse_args(["show", "--format", "M4", "--criterion", "Strict", "--backend", "EMULATE",
                                      "--error-scale", "Mixed", "--kinds", "Attention,LOGITS", "--sites", "ALL"])
    _, overrides = compile_arguments(args)
    assert overrides["criterion"] == "strict" and overrides["backend"] == "emulate"
    assert overrides["error_scale"] == "mixed" and overrides["kinds"] == ["attention", "logits"]
    assert overrides["sites"] == "all"
    policy = Policy.from_overrides(None, **overrides)
    assert policy.logits.criterion == "strict" and policy.attention.error_scale == "mixed"
    assert build_parser().parse_args(["show", "--kinds", "ALL"]).kinds == ["attention", "layer_norm", "logits",
                                                                             "gelu"]


def test_eval_generate_and_export_lists_take_any_case():
    from lampc.eval.cli_eval import parse_count_from, parse_criteria
    from lampc.eval.cli_generate import parse_compare

    args = build_parser().parse_args(["eval", "--criterion", "Strict,UNIFORM", "--count-from", "Relaxed"])
    assert parse_criteria(args.criterion) == ["strict", "uniform"]
    assert parse_count_from(args.count_from) == ["relaxed"]
    assert parse_compare(build_parser().parse_args(["generate", "--compare", "FP32,Uniform"]).compare) == [
        "fp32", "uniform"]
    assert build_parser().parse_args(["export", "--out", "m.onnx", "--rounding", "BITS"]).rounding == "bits"


def test_a_bad_vocabulary_word_is_still_refused_by_name(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["show", "--criterion", "Strictest"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--criterion" in err and "strictest" in err.lower() and "strict" in err


# ---- --out and --output ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(WRITING))
@pytest.mark.parametrize("spelling", ["--out", "--output"])
def test_every_writing_command_takes_both_spellings(command, spelling):
    args = build_parser().parse_args([command, spelling, "somewhere"] + (["--rate", "0.05"]
                                                                         if command == "calibrate" else []))
    assert getattr(args, WRITING[command]) == "somewhere"


@pytest.mark.parametrize("command", sorted(WRITING))
def test_help_documents_one_spelling(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert "--out " in text and "--output" not in text


# ---- refusals before the work ------------------------------------------------------------------------------------


def _fails(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("extra, named", [(["--format", "m7"], "--format"), (["--criterion", "relaxed"], "--criterion"),
                                          (["--tau", "0.5"], "--tau"), (["--policy", "p.json"], "--policy"),
                                          (["--kinds", "all"], "--kinds"), (["--decode"], "--decode"),
                                          (["--model", "embedded"], "--model"), (["--full"], "--full")])
def test_show_onnx_refuses_the_options_it_would_ignore(capsys, tmp_path, extra, named):
    """`show --onnx FILE` prints the file as exported; a policy or model option cannot change it and is refused."""
    err = _fails(capsys, "show", "--onnx", str(tmp_path / "m.onnx"), *extra)
    assert named in err and "--onnx" in err


def test_calibrate_refuses_an_out_that_is_a_directory_before_any_work(capsys, tmp_path):
    err = _fails(capsys, "calibrate", "--rate", "0.05", "--out", str(tmp_path), "--quiet")
    assert f"--out: {tmp_path} is a directory" in err


def test_calibrate_refuses_an_out_it_cannot_write_before_any_work(capsys):
    """/proc takes no new files, even for root (a chmod'ed directory would not stop root)."""
    err = _fails(capsys, "calibrate", "--rate", "0.05", "--out", "/proc/lampc-calibrated.json", "--quiet")
    assert "--out: cannot write /proc/lampc-calibrated.json" in err


def test_generate_refuses_a_json_file_it_cannot_write_before_any_work(capsys):
    err = _fails(capsys, "generate", "--prompt", "a", "--json", "/proc/lampc-generate.json")
    assert "--json: cannot write /proc/lampc-generate.json" in err


def test_the_write_checks_leave_nothing_behind(tmp_path):
    from lampc.cli_support import check_writable_file

    target = tmp_path / "new.json"
    check_writable_file(target, "--out")
    assert list(tmp_path.iterdir()) == []
    target.write_text("kept")
    check_writable_file(target, "--out")
    assert target.read_text() == "kept"


# ---- a model directory without a tokenizer --------------------------------------------------------------------


@pytest.fixture(scope="module")
def no_tokenizer_dir(tmp_path_factory):
    from tiny_models import tiny_llama

    path = tmp_path_factory.mktemp("no-tokenizer")
    tiny_llama().save_pretrained(path)
    return path


def test_a_model_directory_without_tokenizer_files_says_so(no_tokenizer_dir):
    """HF's own message asks to install sentencepiece (Llama), or loads an empty vocabulary silently (GPT-2)."""
    from lampc.models import ModelNotFoundError, load_model

    with pytest.raises(ModelNotFoundError) as err:
        load_model(no_tokenizer_dir)
    message = str(err.value)
    assert "no tokenizer files" in message and "tokenizer.json" in message and "tokenizer.model" in message
    assert "install sentencepiece" not in message and "sentencepiece or tiktoken" not in message


def test_a_gpt2_directory_without_tokenizer_files_is_refused_too(tmp_path):
    from tiny_models import tiny_gpt2

    from lampc.models import ModelNotFoundError, load_model

    tiny_gpt2().save_pretrained(tmp_path)
    with pytest.raises(ModelNotFoundError, match="no tokenizer files"):
        load_model(tmp_path)


def test_the_command_line_names_the_missing_tokenizer(capsys, no_tokenizer_dir):
    err = _fails(capsys, "show", "--model", str(no_tokenizer_dir))
    assert "--model" in err and "no tokenizer files" in err


# ---- third-party noise ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny GPT-2 with a word-level tokenizer, saved like a Hugging Face model."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tiny_models import tiny_gpt2

    path = tmp_path_factory.mktemp("tiny-model")
    tiny_gpt2().save_pretrained(path)
    vocab = {"[UNK]": 0, **{f"w{i}": i + 1 for i in range(96)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(path)
    return path


def _lampc(*argv: str) -> subprocess.CompletedProcess:
    return _python("import sys; from lampc.cli import main; sys.exit(main(sys.argv[1:]))", *argv, timeout=300)


@pytest.mark.slow
def test_no_third_party_noise_by_default_and_verbose_shows_it(model_dir):
    """By default stderr holds lampc's own progress lines only (no weight-loading bar); --verbose shows the bar."""
    quiet = _lampc("show", "--model", str(model_dir))
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "Loading weights" not in quiet.stderr and "Warning" not in quiet.stderr
    assert "lampc: compiling" in quiet.stderr  # the long step says what it is doing
    assert all(line.startswith("lampc: ") for line in quiet.stderr.splitlines()), quiet.stderr
    verbose = _lampc("show", "--model", str(model_dir), "--verbose")
    assert verbose.returncode == 0 and "Loading weights" in verbose.stderr


def test_the_known_future_warning_is_silenced_only_inside_a_command():
    """torch's `LeafSpec` FutureWarning (raised while ONNX export copies the graph) is filtered during a command,
    by its message only, and the filters are restored afterwards; other warnings still show."""
    import warnings

    from lampc.cli_support import third_party_output

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        before = list(warnings.filters)
        with third_party_output(verbose=False, quiet=False):
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) "
                          "and treespec.is_leaf()` instead.", FutureWarning)
            warnings.warn("lampc: 2 attention candidate(s) left in FP32", UserWarning)
            warnings.warn("something else is deprecated", FutureWarning)
        after = list(warnings.filters)
    assert [str(w.message) for w in seen] == ["lampc: 2 attention candidate(s) left in FP32",
                                              "something else is deprecated"]
    assert after == before
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with third_party_output(verbose=True, quiet=False):
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning)
    assert len(seen) == 1


LIBRARY_STATE = """
import json, sys
import transformers.utils.logging as hf
import huggingface_hub.utils as hub, huggingface_hub.constants as hub_constants
import datasets.utils as ds, datasets.config as ds_config
print("STATE", json.dumps({"verbosity": hf.get_verbosity(), "bars": hf.is_progress_bar_enabled(),
                           "hub_bars_off": hub.are_progress_bars_disabled(),
                           "hub_env": hub_constants.HF_HUB_DISABLE_PROGRESS_BARS,
                           "datasets_bars_off": ds.are_progress_bars_disabled(),
                           "datasets_env": ds_config.HF_DATASETS_DISABLE_PROGRESS_BARS}))
"""


@pytest.mark.parametrize("quiet", [False, True])
def test_libraries_first_loaded_inside_a_command_are_left_as_a_plain_import_leaves_them(quiet):
    """transformers, huggingface_hub and datasets read their verbosity and progress-bar settings from the
    environment when imported: imported for the first time inside a command (quiet or not), they are afterwards as
    they would have been imported outside it (verbosity, bars on), not at ERROR with bars off."""
    pytest.importorskip("datasets")
    plain = _python(LIBRARY_STATE)
    inside = _python("from lampc.cli_support import third_party_output\n"
                     f"with third_party_output(quiet={quiet}):\n"
                     "    import transformers.utils.logging, huggingface_hub.utils, datasets.utils\n"
                     + LIBRARY_STATE)
    assert plain.returncode == 0 and inside.returncode == 0, plain.stderr[-2000:] + inside.stderr[-2000:]
    want = json.loads(plain.stdout.split("STATE ", 1)[1])
    assert want["bars"] and not want["hub_bars_off"] and not want["datasets_bars_off"]  # the oracle is the default
    assert json.loads(inside.stdout.split("STATE ", 1)[1]) == want


def test_a_command_run_in_process_leaves_transformers_logging_as_it_was(tmp_path):
    """`lampc.cli.main` inside a program: transformers' verbosity and progress bar are as before, after --quiet."""
    import transformers.utils.logging as hf

    before = (hf.get_verbosity(), hf.is_progress_bar_enabled())
    with pytest.raises(SystemExit):
        main(["calibrate", "--rate", "0.1", "--out", str(tmp_path / "none" / "p.json"), "--quiet"])
    assert (hf.get_verbosity(), hf.is_progress_bar_enabled()) == before


def test_quiet_hides_third_party_warnings_but_not_lampcs_own():
    """--quiet drops other libraries' warnings; lampc's own (calibrate's out-of-reach KL, lm-eval's device
    fallback, lp_matmul's and generate's) are results, and still show."""
    import warnings

    from lampc.cli_support import third_party_output

    ours = ["lampc calibrate: KL 1e-09 is out of reach", "lampc: lm-eval's device 'cuda:0' is not available here",
            "lp_matmul: torch.compile failed; using the eager path", "generate: do_sample=False (greedy decoding)"]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with third_party_output(quiet=True):
            for message in ours:
                warnings.warn(message, UserWarning)
            warnings.warn("something else is deprecated", FutureWarning)
            warnings.warn("a library's own advice", UserWarning)
    assert [str(w.message) for w in seen] == ours


@pytest.mark.parametrize("extra, named", [(["--tau", "0"], "--tau"), (["--block-k", "0"], "--block-k")])
def test_show_onnx_refuses_an_option_given_as_zero(capsys, tmp_path, extra, named):
    """0 is a value given: `--tau 0` or `--block-k 0` beside --onnx is refused like any other."""
    err = _fails(capsys, "show", "--onnx", str(tmp_path / "m.onnx"), *extra)
    assert named in err and "--onnx" in err


def test_output_into_a_closed_pipe_ends_quietly():
    """`lampc formats | head -0`: the reader has left before lampc writes; lampc stops without a traceback, with
    the status a shell gives a command the pipe ended (141)."""
    proc = subprocess.Popen([sys.executable, "-m", "lampc.cli", "formats"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before the child has written anything: its first write finds no reader
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipeError" not in err
