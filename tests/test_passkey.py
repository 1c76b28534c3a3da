"""The passkey retrieval task (lampc/tasks/passkey.py, passkey_task.py) against oracles of its own: each prompt's
length re-encoded by the tokenizer, the needle found as a token subsequence, the digits of the whole prompt, the
score of an oracle reader (which reads the key off the prompt) and of a wrong one through lm-eval's evaluator, and
one run through `compare` on the embedded model."""

from __future__ import annotations

import math
import os
import re

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is the tasks extra: pip install 'lampc[tasks]'")

from lm_eval.api.model import LM  # noqa: E402

from lampc.tasks import PASSKEY_TASK, compare, passkey_task  # noqa: E402
from lampc.tasks.compare import TASK_DIR, resolve_tasks, run  # noqa: E402
from lampc.tasks.passkey import (ANSWER_TOKENS, DEFAULTS, INTRO, NEEDLE, QUESTION, answer_is_right,  # noqa: E402
                                 passkey_documents)
from lampc.tasks.passkey_task import dataset, passkey_task_named, process_results, tokenizer_for  # noqa: E402

SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"'])\s+")
"""Where a sentence ends (a full stop, question or exclamation mark, perhaps a closing quote, then a space)."""


@pytest.fixture(scope="module")
def tokenizer():
    """The embedded model's tokenizer (byte-level BPE, offline: shipped with lampc)."""
    return tokenizer_for("embedded")[0]


@pytest.fixture(scope="module")
def metaspace_tokenizer():
    """A second kind of tokenizer, SentencePiece-like (the Metaspace pre-tokenizer Llama-style models use, which
    writes a space as part of the next word and drops a leading one when decoding), trained here on the filler."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from lampc.tasks.passkey import filler_sentences

    made = Tokenizer(models.BPE(unk_token="<unk>"))
    made.pre_tokenizer, made.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    made.train_from_iterator([*filler_sentences(), INTRO, NEEDLE, QUESTION, "0123456789"],
                             trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>"]))
    return PreTrainedTokenizerFast(tokenizer_object=made)


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False, verbose=False)


def occurrences(sequence: list[int], part: list[int]) -> list[int]:
    """Where `part` starts in `sequence` (every index)."""
    return [i for i in range(len(sequence) - len(part) + 1) if sequence[i:i + len(part)] == part]


@pytest.mark.parametrize("length", [96, 128, 333, 1024, 4096])
@pytest.mark.parametrize("depth", [0.0, 0.37, 1.0])
def test_every_prompt_is_exactly_length_tokens(tokenizer, length, depth):
    docs = passkey_documents(tokenizer, length=length, depth=depth, count=12, seed=length)
    assert [len(ids(tokenizer, d["prompt"])) for d in docs] == [length] * 12
    assert all(d["prompt"].startswith(INTRO) and d["prompt"].endswith(QUESTION) for d in docs)


@pytest.mark.parametrize("length", [140, 512, 2000])
def test_prompts_fit_a_sentencepiece_like_tokenizer_too(metaspace_tokenizer, length):
    docs = passkey_documents(metaspace_tokenizer, length=length, depth=0.5, count=12, seed=1)
    assert [len(ids(metaspace_tokenizer, d["prompt"])) for d in docs] == [length] * 12


@pytest.mark.parametrize("depth", [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
def test_the_key_appears_once_at_the_requested_depth(tokenizer, depth):
    """The needle's tokens occur exactly once, at the depth asked: between the start of the sentence before it and
    the end of the sentence after it (a sentence boundary, the one nearest that fraction of the haystack's tokens,
    the haystack being what the intro, the needle and the question leave of the length). The key's digits are the
    prompt's only ones."""
    length = 1024
    for doc in passkey_documents(tokenizer, length=length, depth=depth, count=8, seed=7):
        prompt, key = doc["prompt"], doc["key"]
        needle = NEEDLE.format(key=key)
        tokens, needle_ids = ids(tokenizer, prompt), ids(tokenizer, needle)
        assert occurrences(tokens, needle_ids) == [doc["needle_token"]]
        assert prompt.count(needle) == 1 and re.findall(r"\d+", prompt) == [key, key]
        intro = len(ids(tokenizer, INTRO))
        haystack = length - intro - len(needle_ids) - len(ids(tokenizer, QUESTION))
        wanted = intro + depth * haystack
        before, after = prompt.split(needle)
        around = max(len(ids(tokenizer, SENTENCE_END.split(before)[-1])), len(ids(tokenizer, SENTENCE_END.split(
            after.strip())[0])))
        assert abs(doc["needle_token"] - wanted) <= around + 2  # + the fitting's few tokens
        if depth == 0.0:
            assert prompt.startswith(INTRO + needle)
        if depth == 1.0:
            assert prompt.endswith(needle + QUESTION)


def test_documents_are_determined_by_the_seed(tokenizer):
    first = passkey_documents(tokenizer, length=200, count=30, seed=3)
    assert passkey_documents(tokenizer, length=200, count=30, seed=3) == first
    other = passkey_documents(tokenizer, length=200, count=30, seed=4)
    assert [d["key"] for d in other] != [d["key"] for d in first]
    assert [d["prompt"] for d in other] != [d["prompt"] for d in first]


@pytest.mark.parametrize("digits", [1, 3, 5, 10])
def test_keys_are_distinct_and_digits_long(tokenizer, digits):
    count = min(60, 9 * 10 ** (digits - 1))
    keys = [d["key"] for d in passkey_documents(tokenizer, length=150, count=count, seed=0, digits=digits)]
    assert len(set(keys)) == count
    assert all(len(k) == digits and k.isdigit() and k[0] != "0" for k in keys)
    if digits == 1:  # all nine one-digit keys
        assert sorted(keys) == [str(k) for k in range(1, 10)]


@pytest.mark.parametrize("field, value", [
    ("length", 0), ("length", 12.5), ("length", True), ("depth", -0.1), ("depth", 1.5), ("depth", math.nan),
    ("depth", "half"), ("count", 0), ("count", 10), ("seed", None), ("digits", 0), ("digits", 11)])
def test_bad_values_are_refused_by_name(tokenizer, field, value):
    parameters = {"length": 128, "count": 10 if field == "count" else 4, "digits": 1 if field == "count" else 5,
                  field: value}
    with pytest.raises(ValueError, match=rf"^passkey {field}: "):
        passkey_documents(tokenizer, **parameters)
    if field != "count":  # the task config checks its parameters before lm-eval sees them
        with pytest.raises(ValueError, match=rf"^passkey {field}: "):
            passkey_task(**{field: value})


def test_a_length_too_short_or_too_long_for_the_model_is_refused(tokenizer):
    with pytest.raises(ValueError, match=r"^passkey length: the intro, the needle and the question are \d+ tokens"):
        passkey_documents(tokenizer, length=40)
    context = tokenizer_for("embedded")[1]
    assert len(dataset(model="embedded", length=context - ANSWER_TOKENS, count=2)["test"]) == 2
    with pytest.raises(ValueError, match=rf"^passkey length: the model embedded reads at most {context} tokens"):
        dataset(model="embedded", length=context - ANSWER_TOKENS + 1, count=2)
    with pytest.raises(ValueError, match="lampc model's tokenizer"):
        dataset(pretrained="gpt2", length=128)
    said: list[str] = []
    with pytest.raises(ValueError, match=rf"^passkey length: the model embedded reads at most {context} tokens"):
        compare("embedded", {}, resolve_tasks([f"{PASSKEY_TASK}_{context}"]), progress=said.append)
    assert said == []  # refused before the FP32 reference began


def test_an_answer_is_right_when_its_first_number_is_the_key():
    assert answer_is_right(" 48213. Remember it", "48213")
    assert answer_is_right(" 48213", "48213") and answer_is_right("48213\n", "48213")
    assert answer_is_right(" the number 48213", "48213")
    assert not answer_is_right(" 482130", "48213")  # another number, though it starts with the key
    assert not answer_is_right(" 48212", "48213") and not answer_is_right(" 4821", "48213")
    assert not answer_is_right(" 4 8213", "48213")  # the first run of digits is "4"
    assert not answer_is_right(" 12345 or 48213", "48213") and not answer_is_right(" a very fine day", "48213")
    assert not answer_is_right("", "48213")
    assert process_results({"key": "48213"}, [" 48213"]) == {"acc": 1.0}
    assert process_results({"key": "48213"}, [" 48214"]) == {"acc": 0.0}


class Reader(LM):
    """A model for lm-eval that only generates: it reads the pass key off its prompt (the oracle), or answers one
    more than it (always wrong); it records each prompt it is given."""

    def __init__(self, *, wrong: bool = False):
        super().__init__()
        self.wrong, self.prompts = wrong, []

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        answers = []
        for request in requests:
            prompt = request.args[0]
            self.prompts.append(prompt)
            key = int(re.search(r"The pass key is (\d+)\.", prompt).group(1))
            answers.append(f" {key + 1 if self.wrong else key}. Remember it.")
        return answers

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise AssertionError("the passkey task only generates")

    loglikelihood_rolling = loglikelihood


@pytest.mark.slow
def test_lm_eval_scores_an_oracle_reader_right_and_a_wrong_one_wrong(tokenizer):
    """Through lm-eval's evaluator (the prompts made with the embedded tokenizer): the reader that answers the key
    scores 1 on every document, the one that answers another number 0; the prompt lm-eval hands the model is the
    document's, `length` tokens."""
    config = passkey_task(length=160, depth=0.3, count=6)
    for wrong, score in ((False, 1.0), (True, 0.0)):
        reader = Reader(wrong=wrong)
        results = run(reader, [config], limit=None)
        name = config["task"]
        assert results["results"][name]["acc,none"] == score
        samples = results["samples"][name]
        assert len(samples) == 6 and all(s["acc"] == score for s in samples)
        docs = passkey_documents(tokenizer, length=160, depth=0.3, count=6)
        assert sorted(reader.prompts) == sorted(d["prompt"] for d in docs)
        assert {len(ids(tokenizer, p)) for p in reader.prompts} == {160}


def test_task_names_spell_the_parameters():
    config = resolve_tasks(["austen_passkey_1024_depth25"])[0]
    assert config["task"] == "austen_passkey_1024_depth25" and config["custom_dataset"] is dataset
    assert {k: config["metadata"][k] for k in ("length", "depth")} == {"length": 1024, "depth": 0.25}
    assert passkey_task_named(PASSKEY_TASK)["metadata"].keys().isdisjoint(DEFAULTS)  # the defaults, unnamed
    named = passkey_task_named("austen_passkey_depth0_seed3_digits7")["metadata"]
    assert (named["depth"], named["seed"], named["digits"]) == (0.0, 3, 7) and "length" not in named
    assert passkey_task(length=512, depth=0.5)["task"] == "austen_passkey_512_depth50"
    assert passkey_task(seed=2)["task"] == "austen_passkey_seed2"
    with pytest.raises(ValueError, match=r"task 'austen_passkey_long': passkey tasks are named austen_passkey\["):
        resolve_tasks(["austen_passkey_long"])
    with pytest.raises(ValueError, match="passkey depth: "):
        resolve_tasks(["austen_passkey_depth150"])
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['width'\]"):
        passkey_task(width=3)
    assert resolve_tasks(["passkey"]) == ["passkey"]  # lm-eval's own (LIBRA's) task of that name, not lampc's


def test_lm_evals_task_loader_reads_the_yaml_with_metadata():
    """As `lampc-lm-eval --tasks austen_passkey --model_args model=embedded --metadata '{"length": 128}'` builds it:
    the YAML from lampc's task folder, the parameters and the model from the metadata."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASK_DIR), include_defaults=False,
                          metadata={"model": "embedded", "format": "m4", "length": 128, "depth": 1.0, "count": 5})
    task = manager.load([PASSKEY_TASK])["tasks"][PASSKEY_TASK]
    docs = list(task.test_docs())
    assert len(docs) == 5 and all(d["length"] == 128 and d["depth"] == 1.0 for d in docs)
    assert task.config.generation_kwargs["max_gen_toks"] == ANSWER_TOKENS
    assert task.doc_to_text(docs[0]) == docs[0]["prompt"]


@pytest.mark.slow
def test_compare_runs_the_task_on_the_embedded_model(tmp_path):
    """`compare` end to end, FP32 and one LAMP cell on four 128-token documents: the table's rows and the samples
    (the embedded model is too small to retrieve a key: its accuracy is not asserted)."""
    from lampc.tasks.compare import markdown, write

    name = "austen_passkey_128_depth50"
    cells = {"m4 strict": dict(format="m4", criterion="strict", tau=0.1)}
    rows, raw = compare("embedded", cells, resolve_tasks([name]), limit=4, batch_size=4, progress=lambda line: None)
    assert [(r["cell"], r["task"], r["metric"], r["documents"]) for r in rows] == [
        ("fp32", name, "acc", 4), ("m4 strict", name, "acc", 4)]
    fp32, lamp = rows
    assert 0.0 <= fp32["score"] <= 1.0 and lamp["fp32"] == fp32["score"]
    assert lamp["flips"] == lamp["right_to_wrong"] + lamp["wrong_to_right"] and 0.0 <= lamp["mcnemar_p"] <= 1.0
    assert lamp["kl"] > 0 and 0 < lamp["recompute_rate"] < 1
    tokenizer = tokenizer_for("embedded")[0]
    for cell in ("fp32", "m4 strict"):
        samples = raw[cell]["samples"][name]
        assert sorted(s["doc_id"] for s in samples) == [0, 1, 2, 3]
        for sample in samples:
            prompt = sample["arguments"][0][0]
            assert len(ids(tokenizer, prompt)) == 128 and sample["target"] == sample["doc"]["key"]
            assert sample["acc"] == float(answer_is_right(sample["filtered_resps"][0], sample["doc"]["key"]))
    assert name in markdown(rows)
    assert {p.name for p in write(rows, raw, tmp_path)} >= {"tasks.csv", "tasks.json", "tasks.md"}
