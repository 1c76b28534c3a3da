"""Make the offline task data of lampc/tasks/austen/ from *Persuasion* (the held-out novel: the embedded model never
saw it). `python scripts/make_austen_tasks.py` rewrites the three JSONL files; they are committed, so running the
tasks needs neither this script nor the corpus (it is not part of the installed package).

    austen_lastword.jsonl   LAMBADA-style cloze: a passage and its last word, a word that already occurred in the
                            passage (so a reader of the passage can know it); scored by exact match of the greedy
                            continuation's first word
    austen_choice.jsonl     the same passages with four candidate last words (the true one and three words of the
                            novel of similar frequency that do not occur in the passage); scored by loglikelihood
    austen_paragraphs.jsonl whole paragraphs, scored by rolling loglikelihood (word and byte perplexity)

Deterministic: fixed seeds, the novel's own order. Passages come from every part of the novel (evenly strided).
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from pathlib import Path

from lampc.eval.data import persuasion_text
from lampc.tasks.path import TASK_DIR

WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?")
TARGET = re.compile(r"^(?P<context>.*\S)\s+(?P<word>[A-Za-z]{3,})(?P<end>[.,;:!?])", re.S)


def paragraphs(text: str) -> list[str]:
    """Paragraphs of running prose (chapter headings and short lines dropped), whitespace normalised."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        block = " ".join(block.split())
        if len(block.split()) >= 25 and not block.lower().startswith("chapter"):
            out.append(block)
    return out


def cloze_items(paras: list[str], *, min_words: int = 30, max_words: int = 90) -> list[dict]:
    """One item per eligible sentence end: the passage up to a sentence's last word, and that word."""
    items = []
    for index, para in enumerate(paras):
        for match in re.finditer(r"[.!?;]", para):
            head = para[: match.end()]
            found = TARGET.match(head)
            if not found:
                continue
            context_words = found["context"].split()
            if len(context_words) < min_words:
                continue
            context = " ".join(context_words[-max_words:])
            word = found["word"]
            earlier = {w.lower() for w in WORD.findall(context)}
            if word.lower() in earlier and word.lower() not in STOPWORDS:
                items.append({"paragraph": index, "context": context, "target": word})
    return items


STOPWORDS = frozenset("""the and that was her his she him had have with for not but which you they their them this
from were been would could there what when all said one any very more than much such will who are its our your
upon into then some only should must being those these has may did does own""".split())


def choices_for(item: dict, by_frequency: list[str], rank: dict[str, int], rng: random.Random) -> tuple[list, int]:
    """The true word and three of similar frequency absent from the passage, shuffled; (choices, gold index)."""
    present = {w.lower() for w in WORD.findall(item["context"])} | {item["target"].lower()}
    centre = rank.get(item["target"].lower(), len(by_frequency) // 2)
    for width in (60, 240, len(by_frequency)):  # widen the band until three words qualify
        pool = [w for w in by_frequency[max(0, centre - width): centre + width] if w not in present and len(w) >= 3]
        if len(pool) >= 3:
            break
    else:
        raise ValueError(f"fewer than three distractors for {item['target']!r}: the text is too small")
    distractors = rng.sample(pool, 3)
    choices = [item["target"]] + [d.capitalize() if item["target"][0].isupper() else d for d in distractors]
    rng.shuffle(choices)
    return choices, choices.index(item["target"])


def build(text: str, *, n_cloze: int = 200, n_paragraphs: int = 60, seed: int = 0) -> dict[str, list[dict]]:
    paras = paragraphs(text)
    items = cloze_items(paras)
    stride = max(1, len(items) // n_cloze)
    items = items[::stride][:n_cloze]
    counts = Counter(w.lower() for w in WORD.findall(text))
    by_frequency = [w for w, _ in counts.most_common()]
    rank = {w: i for i, w in enumerate(by_frequency)}
    rng = random.Random(seed)
    lastword = [{"id": i, "context": it["context"], "target": it["target"]} for i, it in enumerate(items)]
    choice = []
    for i, it in enumerate(items):
        options, gold = choices_for(it, by_frequency, rank, rng)
        choice.append({"id": i, "context": it["context"], "choices": options, "gold": gold})
    step = max(1, len(paras) // n_paragraphs)
    whole = [{"id": i, "text": p} for i, p in enumerate(paras[::step][:n_paragraphs])]
    return {"austen_lastword": lastword, "austen_choice": choice, "austen_paragraphs": whole}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(TASK_DIR))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in build(persuasion_text()).items():
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{name}: {len(rows)} documents -> {out / (name + '.jsonl')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
