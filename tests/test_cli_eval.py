"""`lampc eval` and `lampc demo`: a bad argument exits 2 with a message naming it; a tiny model runs end to end."""

import json
import random

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from lampc.cli import main
from lampc.eval.cli_eval import parse_taus

pytestmark = pytest.mark.slow  # whole-model integration tests: `-m "not slow"` leaves them out

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


def test_tau_criterion_takes_any_case_as_criterion_does():
    assert parse_taus(["Strict=0.1", "RELAXED=0.03,0.5"]) == {"strict": [0.1], "relaxed": [0.03, 0.5]}


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
    pairs = [c for c in json.loads((out / "results.json").read_text())["comparisons"] if c["tau"] == rows[3]["tau"]]
    assert {c["baseline"] for c in pairs} >= {"uniform"}
    for c in pairs:  # the demo says, for the picked tau, whether each difference is beyond the windows' noise
        r, lo, hi = c["kl_ratio"], c["kl_ratio_lo"], c["kl_ratio_hi"]
        kl = f"{r:.3g}x below [{lo:.3g}, {hi:.3g}]" if r >= 1 else f"{1 / r:.3g}x above [{1 / hi:.3g}, {1 / lo:.3g}]"
        assert (f"m3 strict tau={c['tau']:g} vs {c['baseline']}: KL {kl} ({c['kl_verdict']}); flips "
                f"{c['flips_test']} vs {c['flips_base']}") in printed


def test_eval_generate_adds_the_generation_columns(capsys, model_dir, text_file, tmp_path):
    out = tmp_path / "gen"
    code = main(["eval", "--model", str(model_dir), "--text", str(text_file), "--seq-len", "16", "--n-seq", "2",
                 "--format", "m3", "--criterion", "uniform,strict", "--tau", "0.3", "--generate", "3,6",
                 "--out", str(out), "--quiet"])
    assert code == 0
    assert "tokens = fp32" in capsys.readouterr().out
    rows = json.loads((out / "results.json").read_text())["rows"]
    for row in rows:
        assert row["gen_prompts"] == 3 and row["gen_new_tokens"] == 6
        assert 0 <= row["gen_match_tokens"] <= 6 and 0 <= row["gen_identical"] <= 1
    assert rows[0]["gen_decode_rate"] == 0.0 and rows[1]["gen_decode_rate"] > 0.0  # uniform / strict
    header = (out / "results.csv").read_text().splitlines()[0]
    assert "gen_match_tokens" in header and "gen_decode_rate" in header


@pytest.mark.parametrize("argv, message", [
    (["--generate", "3"], "argument --generate: expected N,M"),
    (["--generate", "0,4"], "argument --generate: N and M must be positive"),
])
def test_eval_generate_rejects_bad_values(capsys, argv, message):
    assert message in fails(capsys, "eval", *argv)


def test_eval_generate_beyond_the_context_is_refused(capsys, model_dir, tmp_path):
    err = fails(capsys, "eval", "--model", str(model_dir), "--seq-len", "60", "--generate", "2,8",
                "--out", str(tmp_path), "--quiet")
    assert "generate: prompts of 60 tokens + 8 new tokens exceed the model's context of 64" in err


def test_generate_command_compares_variants(capsys, model_dir, tmp_path):
    out = tmp_path / "gen.json"
    code = main(["generate", "--model", str(model_dir), "--prompt", "w1 w2 w3 w4", "--prompt", "w5 w6",
                 "--max-new-tokens", "6", "--compare", "fp32,uniform", "--format", "m3", "--tau", "0.3",
                 "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.count("prompt: ") == 2 and "fp32" in printed and "uniform" in printed and "lamp" in printed
    doc = json.loads(out.read_text())
    assert [v["variant"] for v in doc["prompts"][0]["variants"]] == ["fp32", "lamp", "uniform"]
    for item in doc["prompts"]:
        reference = item["variants"][0]["tokens"]
        for v in item["variants"][1:]:  # the marked position is the first token that differs from fp32's
            at = v["diverges_at"]
            if at is None:
                assert v["tokens"] == reference
            else:
                assert v["tokens"][:at] == reference[:at] and (at == len(reference) or v["tokens"][at] != reference[at])
                assert "[[" in v["marked"]
    assert doc["recompute_rate"]["decode"] > 0.0


def test_generate_command_greedy_fp32_equals_transformers(capsys, model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    main(["generate", "--model", str(model_dir), "--prompt", "w1 w2 w3", "--max-new-tokens", "5",
          "--compare", "fp32", "--json", "-"])
    doc = json.loads(capsys.readouterr().out)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    ids = torch.tensor([AutoTokenizer.from_pretrained(model_dir)("w1 w2 w3")["input_ids"]])
    expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False)[0, 3:]
    fp32 = doc["prompts"][0]["variants"][0]
    eos = model.generation_config.eos_token_id
    tokens = expected.tolist()
    assert fp32["tokens"] == (tokens[:tokens.index(eos) + 1] if eos in tokens else tokens)


@pytest.mark.parametrize("argv, message", [
    ([], "give at least one --prompt or a --prompts-file"),
    (["--prompt", "a", "--compare", "fp16"], "--compare: expected a comma-separated list of fp32, uniform"),
    (["--prompt", "a", "--max-new-tokens", "-2"], "--max-new-tokens: must be >= 0"),
    (["--prompts-file", "/nonexistent/prompts.txt"], "--prompts-file: no such file"),
    (["--prompt", "a", "--json", "/nonexistent/dir/out.json"], "--json: cannot write"),
    (["--prompt", "a", "--kinds", "attention,softmax"], "argument --kinds"),
])
def test_generate_command_rejects_bad_arguments(capsys, argv, message):
    err = fails(capsys, "generate", *argv)
    assert message in err


def test_user_errors_are_one_line_not_tracebacks(capsys, tmp_path):
    not_onnx = tmp_path / "x.onnx"
    not_onnx.write_text("not a model")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(bytes(range(256)) * 4)
    for argv, message in (
        (["show", "--model", "/nonexistent/model"], "unknown model '/nonexistent/model'"),
        (["show", "--onnx", str(not_onnx)], "is not an ONNX model"),
        (["eval", "--text", str(binary), "--n-seq", "1", "--seq-len", "8", "--format", "m4", "--criterion",
          "uniform", "--out", str(tmp_path / "o"), "--quiet"], "is not valid UTF-8"),
    ):
        err = fails(capsys, *argv)
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_eval_checks_its_output_directory_before_any_work(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    err = fails(capsys, "eval", "--out", str(blocker / "sub"), "--n-seq", "1", "--seq-len", "8")
    assert "--out: cannot write in" in err and "FP32 reference" not in err


def test_eval_takes_the_policy_options(capsys, model_dir, text_file, tmp_path):
    out = tmp_path / "kinds"
    code = main(["eval", "--model", str(model_dir), "--text", str(text_file), "--seq-len", "16", "--n-seq", "2",
                 "--format", "m3", "--criterion", "uniform,budget", "--budget", "2", "--kinds", "attention,logits",
                 "--sites", "all", "--out", str(out), "--quiet"])
    assert code == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["criterion"] for r in rows] == ["uniform", "budget"]
    assert rows[1]["rule"] == "budget k=2" and rows[1]["recompute_rate"] > 0
    assert "--criterion budget needs --budget" in fails(capsys, "eval", "--criterion", "budget")


def test_policy_file_per_kind(capsys, tmp_path):
    from lampc.cli_policy import load_policy_file

    good = tmp_path / "p.json"
    good.write_text(json.dumps({"attention": {"format": "m7", "tau": 0.2},
                                "logits": {"criterion": "budget", "budget": 0.01}, "sites": "all"}))
    policy = load_policy_file(good)
    assert policy.attention.format.name == "m7" and policy.logits.budget == 0.01 and policy.sites == "all"
    assert policy.layer_norm is None
    yaml_file = tmp_path / "p.yaml"
    yaml_file.write_text("attention:\n  format: m5\n  criterion: relaxed\n")
    assert load_policy_file(yaml_file).attention.criterion == "relaxed"
    for content, message in (('{"attention": {"tau": -1}}', "attention: SitePolicy.tau"),
                             ('{"attn": {}}', "unknown key"), ("[1, 2]", "must hold an object"),
                             ("{", "is not valid JSON")):
        bad = tmp_path / "bad.json"
        bad.write_text(content)
        assert message in fails(capsys, "show", "--policy", str(bad))


def test_load_model_at_the_top_level():
    import lampc
    from lampc.models import load_model

    assert lampc.load_model is load_model


def test_long_steps_print_one_line_each_when_stderr_is_no_terminal(capsys, model_dir, text_file, tmp_path):
    code = main(["eval", "--model", str(model_dir), "--text", str(text_file), "--seq-len", "16", "--n-seq", "2",
                 "--format", "m3", "--criterion", "uniform,strict", "--tau", "0.3", "--generate", "2,3",
                 "--out", str(tmp_path / "lines")])
    assert code == 0
    err = capsys.readouterr().err
    assert "\r" not in err  # no bar redrawn into a log
    for line in ("lampc: capturing the model as graphs (torch.export: the forward and its cached steps)", "lampc: FP32 greedy continuations of 2 prompts",
                 "lampc: m3 uniform", "lampc: m3 strict tau=0.3", "done in"):
        assert line in err


def _per_site_file(tmp_path, taus) -> str:
    """A per-site policy file for the tiny model's two attention sites (as `lampc calibrate` writes one)."""
    path = tmp_path / "per_site.json"
    path.write_text(json.dumps({"attention": {"format": "m3", "criterion": "strict", "tau": 0.3},
                                "per_site": [{"site": i, "kind": "attention", "tau": t} for i, t in enumerate(taus)]}))
    return str(path)


def test_eval_runs_a_per_site_policy_as_written_beside_uniform(capsys, model_dir, text_file, tmp_path):
    """The policy cell's rate is the one a compile of the same per-site policy gives on the same windows, and it
    differs from the kind's own tau (0.3) at every site: the per-site taus are what ran."""
    import lampc
    from lampc.cli_policy import load_policy_file
    from lampc.eval.sweep import load_sequences
    from lampc.models import load_model

    policy_file = _per_site_file(tmp_path, [0.05, 3.0])
    out = tmp_path / "per-site"
    code = main(["eval", "--model", str(model_dir), "--text", str(text_file), "--seq-len", "16", "--n-seq", "2",
                 "--policy", policy_file, "--out", str(out), "--quiet"])
    assert code == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["criterion"], r["format"]) for r in rows] == [("uniform", "m3"), ("policy", "m3")]
    assert rows[0]["recompute_rate"] == 0.0 and rows[1]["rule"] == "strict, one tau per site (2 sites)"
    model, tokenizer = load_model(str(model_dir))
    windows, _ = load_sequences(tokenizer, text=str(text_file), seq_len=16, n_seq=2, seed=42)
    rates = {}
    for name, policy in (("per-site", load_policy_file(policy_file)), ("kind's tau", None)):
        compiled = lampc.compile(model, policy, **({} if policy else {"format": "m3", "tau": 0.3}))
        compiled(windows)
        rates[name] = [s["rate"] for s in compiled.stats()["sites"]]
    assert json.loads(rows[1]["layer_rates"]) == pytest.approx(rates["per-site"], abs=1e-8)
    assert rates["per-site"][0] > rates["kind's tau"][0] and rates["per-site"][1] < rates["kind's tau"][1]


@pytest.mark.parametrize("option", [["--tau", "0.1"], ["--criterion", "uniform,strict"], ["--format", "m4"]])
def test_eval_refuses_a_grid_over_a_per_site_policy(capsys, tmp_path, option):
    err = fails(capsys, "eval", "--policy", _per_site_file(tmp_path, [0.05, 3.0]), *option,
                "--out", str(tmp_path / "x"))
    assert f"{option[0]}: the --policy file sets one rule per site (per_site)" in err


def test_generate_with_a_per_site_policy_compares_uniform(capsys, model_dir, tmp_path):
    out = tmp_path / "gen.json"
    code = main(["generate", "--model", str(model_dir), "--prompt", "w1 w2 w3 w4", "--max-new-tokens", "4",
                 "--compare", "uniform", "--policy", _per_site_file(tmp_path, [0.05, 3.0]), "--json", str(out)])
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["policy"].endswith("per-site rules at 2 site(s)")
    assert [v["variant"] for v in doc["prompts"][0]["variants"]] == ["lamp", "uniform"]


def test_tasks_names_its_cell_from_the_policy_file(tmp_path):
    from lampc.cli_policy import load_policy_file
    from lampc.cli_tasks import _cell_name

    per_site = load_policy_file(_per_site_file(tmp_path, [0.05, 3.0]))
    assert _cell_name(per_site, {}) == "m3 strict, per-site taus"
    assert _cell_name(None, {"format": "m7", "criterion": "relaxed", "tau": 0.2}) == "m7 relaxed tau=0.2"


def test_eval_prints_intervals_comparisons_and_the_short_row_note(capsys, model_dir, text_file, tmp_path):
    """The table shows each number with its 95% interval and n; each rule is compared with uniform and random on
    the same windows; rows of 32 tokens (16.5 visible keys on average) get the short-row note."""
    from lampc.eval.report_table import comparisons, with_ci, sci

    out = tmp_path / "ci"
    code = main(["eval", "--model", str(model_dir), "--text", str(text_file), "--seq-len", "32", "--n-seq", "4",
                 "--format", "m3", "--criterion", "uniform,strict,random", "--tau", "0.3", "--out", str(out),
                 "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    doc = json.loads((out / "results.json").read_text())
    strict = doc["rows"][1]
    assert "percentile bootstrap over the 4 windows" in printed and "KL [95% CI]" in printed
    assert with_ci(strict, "kl", sci) in printed  # e.g. "4.4e-2 [3.9e-2, 5.1e-2]"
    assert f"{strict['n_flips']}/128" in printed
    assert "KL reduction [95% CI]" in printed and "random (same counts)" in printed
    assert doc["comparisons"] == json.loads(json.dumps(comparisons(doc["rows"])))
    verdicts = {c["kl_verdict"] for c in doc["comparisons"]}
    assert verdicts <= {"lower KL", "within noise", "higher KL"} and any(v in printed for v in verdicts)
    assert "16.5 visible keys per row" in printed and doc["notes"] and "16.5 visible keys" in doc["notes"][0]


def test_eval_generate_notes_short_prompts(capsys, model_dir, text_file, tmp_path):
    """Prompts of 16 tokens, 6 new tokens: prefill rows see (16 + 1) / 2 = 8.5 keys on average, the 5 decode steps
    16 + 1 ... 16 + 5, i.e. 19 on average; both are noted, with those numbers."""
    out = tmp_path / "gen-notes"
    code = main(["eval", "--model", str(model_dir), "--text", str(text_file), "--seq-len", "16", "--n-seq", "2",
                 "--format", "m3", "--criterion", "strict", "--tau", "0.3", "--generate", "3,6",
                 "--out", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    row = json.loads((out / "results.json").read_text())["rows"][0]
    assert row["gen_prefill_keys_per_row"] == pytest.approx(8.5) and row["gen_decode_keys_per_row"] == pytest.approx(19)
    assert len(row["gen_per_prompt"]["match_tokens"]) == 3
    assert sum(row["gen_per_prompt"]["match_tokens"]) / 3 == pytest.approx(row["gen_match_tokens"])
    assert "prefill's attention rows (the prompts) are short: 8.5 visible keys" in printed.replace("\n  ", " ")
    assert "decode steps' attention rows are short: 19.0 visible keys" in printed.replace("\n  ", " ")


def test_generate_command_notes_short_prompts(capsys, model_dir, tmp_path):
    """Prompts of 4 and 2 tokens (left-padded): prefill rows see (1+2+3+4 + 1+2) / 6 keys; 5 decode steps see
    4+1..4+5 and 2+1..2+5 keys: (35 + 25) / 10 = 6."""
    out = tmp_path / "gen.json"
    code = main(["generate", "--model", str(model_dir), "--prompt", "w1 w2 w3 w4", "--prompt", "w5 w6",
                 "--max-new-tokens", "6", "--format", "m3", "--tau", "0.3", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["keys_per_row"]["prefill"] == pytest.approx(13 / 6) and doc["keys_per_row"]["decode"] == pytest.approx(6)
    assert "2.2 visible keys per row" in printed and "6.0 visible keys per row" in printed


def test_eval_policy_plot_has_the_policy_point(capsys, model_dir, text_file, tmp_path):
    from matplotlib.container import ErrorbarContainer

    from lampc.eval.plots import kl_vs_rate_figure

    out = tmp_path / "policy-plot"
    code = main(["eval", "--model", str(model_dir), "--text", str(text_file), "--seq-len", "16", "--n-seq", "3",
                 "--policy", _per_site_file(tmp_path, [0.05, 3.0]), "--out", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    doc = json.loads((out / "results.json").read_text())
    policy = doc["rows"][1]
    ax = kl_vs_rate_figure(doc["rows"]).axes[0]
    drawn = [(float(x), float(y)) for line in ax.get_lines() for x, y in zip(*line.get_data())]
    assert (pytest.approx(100 * policy["recompute_rate"]), pytest.approx(policy["kl"])) in drawn
    assert any(isinstance(c, ErrorbarContainer) for c in ax.containers)
    assert [(c["criterion"], c["baseline"]) for c in doc["comparisons"]] == [("policy", "uniform")]
    assert "policy" in printed.split("each LAMP row against its baselines")[1]
