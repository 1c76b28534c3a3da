"""One vocabulary: criterion names are compared only in lampc/criteria.py, site-kind names only in
lampc/site_kinds.py; everything else asks the table.

Read from the source with `ast`, so a new module is checked without being listed. What counts as choosing by a
criterion's name (`NAMES`: uniform, target, strict, ...):

    r["criterion"] == "uniform"   c in ("random", "oracle")    a comparison (==, !=, in, not in, is) with a name
    {"strict": ..., "relaxed": ...}   dict(strict=..., ...)    a table keyed by name (two or more name keys, or
                                                               only name keys)
    case "strict":                                             a match case
    for c in ("random", "oracle"):                             a loop over two or more names (a list of them)
    name.startswith("relaxed")    grids["strict"]   .get("target")   a prefix test, a table entry picked by name

What does not: a name in a docstring, a message or a keyword default (`criterion="strict"`), and a record that has
one key spelt like a criterion among others (`{"format": ..., "budget": ...}`, a calibration's `{"target": ...}`).
Two names are also ordinary words of lampc's records (RECORD_WORDS): for them a comparison or a lookup counts only
when its other side reads a criterion (its text says `crit`, as `r["criterion"] == "budget"` does).

Site kinds (`SITE_KINDS`: attention, layer_norm, logits, gelu, and the driver's linear, lowered, unfuse) are checked
the same way, but every kind's name is an ordinary word too (the "logits" output, the layer_norm and gelu consumers
and ops), so a comparison, lookup or match counts only against a side that reads a kind (`s["kind"] ==
"attention"`, `"layer_norm" in kinds`), and a table only with two or more kind keys; a loop over two or more kind
names always counts.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import lampc
from lampc.criteria import NAMES
from lampc.site_kinds import PASS_KINDS, SITE_KINDS

ROOT = Path(lampc.__file__).parent
TABLE = ROOT / "criteria.py"
KIND_TABLE = ROOT / "site_kinds.py"

RECORD_WORDS = {
    "budget": "SitePolicy's field (`name == \"budget\"` over field names)",
    "target": "a calibration's goal, a task item's answer, a graph edge's end (`data[\"target\"]`)",
}


@dataclass(frozen=True)
class Vocabulary:
    """Names that only their table may compare. record_words: the names that are ordinary words too, which count
    only against a side whose text says `reads`; one_key_table: a dict keyed by such names alone (even one) is a
    table by name."""

    names: frozenset
    record_words: frozenset
    reads: str
    one_key_table: bool


CRITERION_NAMES = Vocabulary(frozenset(NAMES), frozenset(RECORD_WORDS), "crit", one_key_table=True)
KIND_NAMES = Vocabulary(frozenset(SITE_KINDS + PASS_KINDS), frozenset(SITE_KINDS + PASS_KINDS), "kind",
                        one_key_table=False)


def _names_in(node: ast.AST, words: Vocabulary) -> list[str]:
    """The names a comparison operand spells: a constant, or the constants of a tuple/list/set display."""
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return [i.value for i in items if isinstance(i, ast.Constant) and i.value in words.names]


def _counts(names: list[str], other: ast.AST, words: Vocabulary) -> bool:
    """Whether naming `names` against `other` picks by name (record words only against a side that reads one)."""
    return any(n not in words.record_words for n in names) or (
        bool(names) and words.reads in ast.unparse(other).lower())


def _table_keys(keys: list[str], words: Vocabulary) -> bool:
    named = [k for k in keys if k in words.names]
    return len(named) >= 2 or (words.one_key_table and bool(named) and len(named) == len(keys))


def _match_hits(match: ast.Match, words: Vocabulary) -> list[ast.MatchValue]:
    return [value for case in match.cases for value in ast.walk(case.pattern) if isinstance(value, ast.MatchValue)
            and _counts(_names_in(value.value, words), match.subject, words)]


def name_choices(source: str, filename: str = "<source>", words: Vocabulary = CRITERION_NAMES) -> list[tuple[int, str]]:
    """(line, code) of every place `source` chooses by a name of `words` (see the module docstring)."""
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            hit = any(_counts(_names_in(a, words), b, words) for a, b in zip(operands, operands[1:])) or any(
                _counts(_names_in(b, words), a, words) for a, b in zip(operands, operands[1:]))
        elif isinstance(node, ast.Dict):
            hit = _table_keys([k.value if isinstance(k, ast.Constant) else None for k in node.keys], words)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
            hit = bool(node.keywords) and _table_keys([k.arg for k in node.keywords], words)
        elif isinstance(node, ast.Match):
            found += [(value.lineno, ast.unparse(value)) for value in _match_hits(node, words)]
            continue
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "startswith", "endswith", "get", "pop", "setdefault"):
            hit = bool(node.args) and _counts(_names_in(node.args[0], words), node.func.value, words)
        elif isinstance(node, ast.Subscript):
            hit = _counts(_names_in(node.slice, words), node.value, words)
        elif isinstance(node, (ast.For, ast.comprehension)):
            hit = isinstance(node.iter, (ast.Tuple, ast.List, ast.Set)) and len(_names_in(node.iter, words)) >= 2
        else:
            continue
        if hit:
            line = node.iter.lineno if isinstance(node, ast.comprehension) else node.lineno
            found.append((line, ast.unparse(node).split("\n")[0].strip()))
    return sorted(found)


def _choices_outside(table: Path, words: Vocabulary) -> list[str]:
    return [f"{path.relative_to(ROOT.parent)}:{line}: {code}"
            for path in sorted(ROOT.rglob("*.py")) if path != table
            for line, code in name_choices(path.read_text(encoding="utf-8"), str(path), words)]


def test_record_words_are_criterion_names():
    assert set(RECORD_WORDS) <= set(NAMES)


def test_criterion_names_are_compared_only_in_the_criteria_table():
    found = _choices_outside(TABLE, CRITERION_NAMES)
    assert found == [], "criterion names chosen outside lampc/criteria.py (ask CRITERIA instead):\n" + "\n".join(found)


@pytest.mark.parametrize("source, line", [
    ('uniform = [r for r in rows if r["criterion"] == "uniform"]\n', 1),
    ('if crit != "strict":\n    pass\n', 1),
    ('x = 1\nbelow = crit in ("random", "oracle")\n', 2),
    ('keep = row["criterion"] not in (*RULES, "budget", POLICY_CELL)\n', 1),
    ('STYLE = {"strict": ("C0", "o"), "relaxed": ("C2", "s"), "policy": ("C1", "*")}\n', 1),
    ('series = {"uniform": []}\n', 1),
    ('GRIDS = dict(strict=(5.0, 1.0), relaxed=(0.9, 0.5))\n', 1),
    ('match c:\n    case "oracle":\n        pass\n', 2),
    ('if name.startswith("relaxed"):\n    pass\n', 1),
    ('taus = GRIDS["strict"]\n', 1),
    ('taus = grids.get("relaxed", ())\n', 1),
    ('if "uniform" in variants:\n    pass\n', 1),
    ('for c in ("random", "oracle"):\n    pass\n', 1),
    ('cells = [Cell(f, c) for f in fs for c in ("random", "oracle")]\n', 1),
])
def test_a_choice_by_name_is_caught(source, line):
    """The checker itself: each form of choosing by name is reported, once, at its line."""
    found = name_choices(source)
    assert [at for at, _ in found] == [line], found


@pytest.mark.parametrize("source", [
    '"""Criteria: uniform, strict, relaxed; random and oracle are baselines."""\n',
    'raise ValueError("criterion \'oracle\' needs the FP32 scores")\n',
    'policy = SitePolicy(criterion="strict", count_from="strict")\n',
    'DEFAULTS = {"format": "m4", "criterion": "strict", "tau": None, "budget": None}\n',
    'if name == "budget":\n    pass\n',
    'fixed = {k: v for k, v in items if k != "budget"}\n',
    'record = {"target": 0.05, "measured": 0.04}\n',
    'end = data["target"]\n',
    'for kind in ("strict", "attention"):\n    pass\n',
    'uniform = [r for r in rows if r["criterion"] == NO_LOOKAHEAD]\n',
    'label = f"{crit} (same counts)" if crit in SAME_COUNT_BASELINES else "strict"\n',
])
def test_names_in_texts_and_records_pass(source):
    assert name_choices(source) == []


def test_site_kind_names_are_compared_only_in_the_site_kinds_table():
    found = _choices_outside(KIND_TABLE, KIND_NAMES)
    assert found == [], "site-kind names chosen outside lampc/site_kinds.py (ask KINDS instead):\n" + "\n".join(found)


@pytest.mark.parametrize("source, line", [
    ('sites = [s for s in stats["sites"] if s["kind"] == "attention" and s["per_head"]]\n', 1),
    ('if self._kinds[index] == "attention":\n    pass\n', 1),
    ('x = 1\nmean = "layer" if kinds == ["attention"] else "site"\n', 2),
    ('if "layer_norm" in kinds:\n    pass\n', 1),
    ('if tag.kind != "lowered":\n    pass\n', 1),
    ('ENTRIES = {"attention": "QK^T", "logits": "logits", "layer_norm": "layer_norm inputs"}\n', 1),
    ('for kind in ("attention", "layer_norm", "logits", "gelu"):\n    pass\n', 1),
    ('linear = {k: getattr(policy, k) for k in ("layer_norm", "gelu")}\n', 1),
    ('match site.kind:\n    case "gelu":\n        pass\n', 2),
    ('what = counts_by_kind.get("logits")\n', 1),
])
def test_a_choice_by_kind_name_is_caught(source, line):
    found = name_choices(source, words=KIND_NAMES)
    assert [at for at, _ in found] == [line], found


@pytest.mark.parametrize("source", [
    '"""Site kinds: attention, layer_norm, logits, gelu."""\n',
    'skips.append(Skip("attention", module_path(node), node.name, reason))\n',
    'if consumer == "layer_norm":\n    pass\n',
    'logits = out["logits"]\n',
    'session = run(model, outputs=["logits"])\n',
    'out = {"logits": logits, "loss": loss}\n',
    'DERIVATIVES = {"gelu_tanh": tanh_d, "gelu": erf_d, "silu": silu_d}\n',
    'axis.set_xscale("linear")\n',
    'match consumer:\n    case "gelu":\n        pass\n',
    'mean = "layer" if all(KINDS[k].per_layer for k in kinds) else "site"\n',
])
def test_kind_names_in_texts_records_and_other_vocabularies_pass(source):
    assert name_choices(source, words=KIND_NAMES) == []
