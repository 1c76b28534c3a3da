"""Passkey retrieval documents: a number hidden at a chosen depth in Austen's prose, each prompt exactly `length`
tokens of the model's tokenizer.

    docs = passkey_documents(tokenizer, length=1024, depth=0.25, count=100, seed=0)
    docs[0]["prompt"]   # 'There is important information hidden ... The pass key is 48213. Remember it. 48213 is
                        #  the pass key. ... What is the pass key? The pass key is'
    docs[0]["key"]      # '48213'
    answer_is_right(" 48213. Remember", "48213")   # True

A prompt is INTRO, a haystack of *Persuasion*'s sentences (the paragraphs lampc ships in austen/, none with a digit,
so the key's are the prompt's only digits), the NEEDLE at a sentence boundary, and the QUESTION. `depth` places the
needle in the haystack, measured in tokens: 0.0 right after the intro, 1.0 right before the question, else at the
sentence boundary nearest that fraction of the haystack's tokens. The haystack ends with a whole sentence and
begins with the tail of one, cut to the token that makes the prompt `length` tokens (re-encoded whole, without
special tokens, as lampc's lm-eval adapter encodes it). Keys are distinct, `digits` long (no leading zero), and the
haystack's last sentence is drawn per document: all from `seed`, the same for every tokenizer (regenerating
austen_paragraphs.jsonl, scripts/make_austen_tasks.py, changes the haystacks).

An answer is right when the first run of digits in the generated text starts with the key (lm-eval's generation
stops at a newline, a full stop or a few tokens).
"""

from __future__ import annotations

import functools
import json
import math
import random
import re

from .path import TASK_DIR

INTRO = ("There is important information hidden inside a lot of irrelevant text. Find it and memorize it. I will "
         "quiz you about the important information there.")
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"
MAX_DIGITS = 10
ANSWER_TOKENS = MAX_DIGITS + 2
"""Tokens generated per answer: a key of MAX_DIGITS digits one token each, a leading space and a full stop."""
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"'])\s+")
FIT_TRIES = 8
MIN_HAYSTACK = 8
"""Tokens of filler a prompt holds at least, so that its cut sentence can be fitted to the token."""


def passkey_documents(tokenizer, *, length: int = 256, depth: float = 0.5, count: int = 100, seed: int = 0,
                      digits: int = 5) -> list[dict]:
    """`count` documents {"id", "prompt", "key", "depth", "needle_token", "length"}: the prompt is `length` tokens
    of `tokenizer`, its needle's first token at index needle_token. ValueError naming the field for a bad value,
    or a length too short to hold the intro, the needle and the question."""
    check_parameters(length=length, depth=depth, count=count, seed=seed, digits=digits)
    keys = random.Random(seed).sample(range(10 ** (digits - 1), 10 ** digits), count)
    sentences = filler_sentences()
    draw = random.Random(f"{seed}: the haystack's last sentence")  # its own stream: the same ends for every count
    ends = [draw.randrange(len(sentences)) for _ in keys]
    counts = [n_tokens(tokenizer, " " + s) for s in sentences]
    docs = []
    for i, (key, end) in enumerate(zip(keys, ends)):
        prompt, needle_token = _fitted(tokenizer, sentences, counts, length=length, depth=depth, key=str(key), end=end)
        docs.append({"id": i, "prompt": prompt, "key": str(key), "depth": float(depth), "needle_token": needle_token,
                     "length": length})
    return docs


DEFAULTS = dict(passkey_documents.__kwdefaults__)
"""The parameters' defaults: length 256, depth 0.5, count 100, seed 0, digits 5."""


def answer_is_right(generated: str, key: str) -> bool:
    """Whether the first number in `generated` (its first run of digits) is `key`."""
    found = re.search(r"\d+", generated)
    return found is not None and found.group(0) == str(key)


def check_parameters(*, length, depth, count, seed, digits) -> None:
    """ValueError naming the first field out of its range."""
    for name, value in (("length", length), ("count", count), ("seed", seed), ("digits", digits)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"passkey {name}: expected an integer, got {value!r}")
    if length < 1:
        raise ValueError(f"passkey length: expected a number of tokens >= 1, got {length}")
    if isinstance(depth, bool) or not isinstance(depth, (int, float)) or not math.isfinite(depth) \
            or not 0.0 <= depth <= 1.0:
        raise ValueError(f"passkey depth: expected a fraction from 0.0 (the start) to 1.0 (the end), got {depth!r}")
    if not 1 <= digits <= MAX_DIGITS:
        raise ValueError(f"passkey digits: expected 1 to {MAX_DIGITS}, got {digits}")
    keys = 9 * 10 ** (digits - 1)
    if not 1 <= count <= keys:
        raise ValueError(f"passkey count: expected 1 to {keys} documents (distinct {digits}-digit keys), got {count}")


@functools.cache
def filler_sentences() -> tuple[str, ...]:
    """The sentences of the shipped *Persuasion* paragraphs (austen/austen_paragraphs.jsonl), in order, without
    those holding a digit."""
    with open(TASK_DIR / "austen_paragraphs.jsonl", encoding="utf-8") as f:
        paragraphs = [json.loads(line)["text"] for line in f if line.strip()]
    sentences = [s.strip() for p in paragraphs for s in SENTENCE_END.split(p)]
    return tuple(s for s in sentences if s and not re.search(r"\d", s))


def n_tokens(tokenizer, text: str) -> int:
    return len(encode(tokenizer, text))


def encode(tokenizer, text: str) -> list[int]:
    """Token ids as lampc's lm-eval adapter makes them: no special tokens (and no warning past model_max_length)."""
    return tokenizer.encode(text, add_special_tokens=False, verbose=False)


def _fitted(tokenizer, sentences, counts, *, length, depth, key, end) -> tuple[str, int]:
    """(prompt of exactly `length` tokens, the needle's first token). The haystack's budget is corrected by what the
    whole prompt re-encodes to (a cut mid-word can encode to a token more or fewer) until it fits; where the
    corrections circle, the haystack ends one sentence later and is fitted again."""
    fixed = n_tokens(tokenizer, INTRO) + n_tokens(tokenizer, NEEDLE.format(key=key)) + n_tokens(tokenizer, QUESTION)
    if length - fixed < MIN_HAYSTACK:
        raise ValueError(f"passkey length: the intro, the needle and the question are {fixed} tokens of this "
                         f"tokenizer and the haystack needs {MIN_HAYSTACK}; give a length of at least "
                         f"{fixed + MIN_HAYSTACK}, got {length}")
    for shift in range(len(sentences)):
        last = (end + shift) % len(sentences)
        budget, seen = length - fixed, set()
        while budget >= 1 and budget not in seen and len(seen) < FIT_TRIES:
            seen.add(budget)
            prompt = _assembled(tokenizer, sentences, counts, budget=budget, depth=depth, key=key, end=last)
            got = n_tokens(tokenizer, prompt)
            if got == length:
                return prompt, n_tokens(tokenizer, prompt[:prompt.index(NEEDLE.format(key=key))])
            budget += length - got
    raise RuntimeError(f"passkey: no haystack makes the prompt exactly {length} tokens of this tokenizer (key {key})")


def _assembled(tokenizer, sentences, counts, *, budget, depth, key, end) -> str:
    """The prompt for a haystack of `budget` tokens: whole sentences ending with sentence `end` (cyclically), the
    first of them cut to its tail, the needle at the sentence boundary nearest `depth` of the budget."""
    chosen, total, i = [], 0, end
    while total < budget:
        chosen.insert(0, i)
        total += counts[i]
        i = (i - 1) % len(sentences)
    pieces = [" " + sentences[j] for j in chosen]
    excess = total - budget
    if excess:
        tail = tokenizer.decode(encode(tokenizer, pieces[0])[excess:])
        pieces[0] = tail if tail[:1].isspace() else " " + tail.lstrip()
    offsets = [0, counts[chosen[0]] - excess]
    for j in chosen[1:]:
        offsets.append(offsets[-1] + counts[j])
    target = depth * budget
    at = min(range(len(offsets)), key=lambda k: (abs(offsets[k] - target), k))
    prompt = INTRO + "".join(pieces[:at]) + NEEDLE.format(key=key) + "".join(pieces[at:]) + QUESTION
    return prompt
