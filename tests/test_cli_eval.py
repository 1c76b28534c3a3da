"""`lampc eval` and `lampc demo`: a bad argument exits 2 with a message naming it; a tiny model runs end to end."""

import json
import random

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from lampc.cli import main
from lampc.eval.cli_eval import parse_taus

WORDS = [f"w{i}" for i in range(63)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny GPT-2 (context 64) and a word-level tokenizer over 63 words + [UNK], saved like a HF model."""
    path = tmp_path_factory.mktemp("tiny-model")
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=64, bos_token_id=0,
                        eos_token_id=0)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight[:, :64].normal_(0.0, 0.5)  # peaked attention: the look-ahead has work
    model.save_pretrained(path)
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("text") / "words.txt"
    path.write_text(" ".join(rng.choice(WORDS) for _ in range(400)) + "\n")
    return path


def fails(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--format", "m4,m99"], "--format: unknown format 'm99'"),
    (["--format", "m4,,m7"], "--format: expected a comma-separated list"),
    (["--criterion", "strict,best"], "--criterion: unknown criterion 'best'"),
    (["--tau", "0.1,abc"], "--tau: 'abc' is not a number"),
    (["--criterion", "target", "--tau", "0.5"],
     "--tau: tau 0.5 for criterion target: must be in [1, 2] (2 = no recompute), got 0.5"),
    (["--criterion", "relaxed", "--tau", "2"], "criterion relaxed"),
    (["--criterion", "strict", "--tau", "-1"], "must be > 0"),
    (["--criterion", "uniform", "--tau", "0.1"], "--tau: no selected criterion takes a tau"),
    (["--seq-len", "0"], "argument --seq-len: must be a positive integer, got 0"),
    (["--n-seq", "two"], "argument --n-seq: expected a positive integer, got 'two'"),
    (["--batch-size", "-3"], "argument --batch-size: must be a positive integer"),
    (["--block-k", "0"], "argument --block-k"),
    (["--count-from", "strict,oracle"], "--count-from: 'oracle' is not a rule random/oracle can count from"),
    (["--tau", "best=0.1"], "--tau: 'best' in 'best=0.1' is not a criterion that takes a tau"),
    (["--criterion", "strict,relaxed", "--tau", "strict=1.5", "--tau", "0.5,2.5"], "tau 2.5 for criterion relaxed"),
    (["--text", "/nonexistent/persuasion.txt"], "--text: no such file: /nonexistent/persuasion.txt"),
    (["--model", "/nonexistent/model"], "--model: unknown model '/nonexistent/model'"),
])
def test_eval_rejects_bad_arguments(capsys, argv, message):
    err = fails(capsys, "eval", *argv)
    assert message in err
    assert err.startswith(("lampc eval: error:", "usage:"))


def test_tau_lists():
    assert parse_taus(["0.5,2"]) == [0.5, 2.0]
    assert parse_taus(["strict=0.5,2", "relaxed=0.03", "1.5"]) == {"strict": [0.5, 2.0], "relaxed": [0.03],
                                                                   "all": [1.5]}
    assert parse_taus(None) is None


def test_eval_rejects_seq_len_above_context(capsys, model_dir):
    err = fails(capsys, "eval", "--model", str(model_dir), "--seq-len", "65")
    assert "--seq-len: 65 is outside [2, 64], the context of model" in err


def test_eval_rejects_text_too_short(capsys, model_dir, text_file, tmp_path):
    err = fails(capsys, "eval", "--model", str(model_dir), "--text", str(text_file), "--seq-len", "64",
                "--n-seq", "50", "--criterion", "uniform", "--format", "m4", "--out", str(tmp_path), "--quiet")
    assert "text too short" in err


def test_demo_rejects_bad_arguments(capsys):
    assert "--tau: tau 0.0 for criterion strict" in fails(capsys, "demo", "--tau", "0")
    assert "--max-rate: must be a rate in (0, 1]" in fails(capsys, "demo", "--max-rate", "5")
    assert "--format: unknown format 'fp7'" in fails(capsys, "demo", "--format", "fp7")


def test_eval_end_to_end(capsys, model_dir, text_file, tmp_path):
    out = tmp_path / "eval"
    code = main(["eval", "--model", str(model_dir), "--text", str(text_file), "--seq-len", "32", "--n-seq", "3",
                 "--batch-size", "2", "--format", "m3", "--criterion", "uniform,strict,random", "--tau", "0.3",
                 "--tau", "random=0.3",
                 "--out", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "criterion" in printed and "strict" in printed and "random" in printed
    assert str(out.resolve()) in printed and "results.csv" in printed
    doc = json.loads((out / "results.json").read_text())
    assert [r["criterion"] for r in doc["rows"]] == ["uniform", "strict", "random"]
    assert doc["metadata"]["command"].startswith("lampc eval --model")
    assert "--tau 0.3 --tau random=0.3 --count-from strict" in doc["metadata"]["command"]
    assert doc["rows"][0]["dataset"] == "words.txt"
    assert (out / "kl_vs_rate.png").is_file() and not (out / "kl_vs_m.png").exists()  # one format: no m plot


def test_demo_end_to_end(capsys, model_dir, text_file, tmp_path):
    out = tmp_path / "demo"
    code = main(["demo", "--model", str(model_dir), "--text", str(text_file), "--seq-len", "32", "--n-seq", "2",
                 "--format", "m3", "--tau", "0.3,3", "--max-rate", "0.5", "--out", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    for word in ("uniform", "strict", "random", "oracle", "KL reduction vs uniform", "kl_vs_rate.png"):
        assert word in printed
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["criterion"] for r in rows] == ["uniform", "strict", "strict", "random", "oracle"]
    assert rows[3]["tau"] == rows[4]["tau"] and rows[3]["count_from"] == "strict"
