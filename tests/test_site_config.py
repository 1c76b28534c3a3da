"""The typed site configuration (lampc/config/): each part validates itself, one codec derived from the dataclass
fields reads and writes every part, SitePolicy is exactly its parts, and producers are chosen by type.

Oracles: the dataclass fields themselves (every field of every part round-trips through its text), hand-written
texts, and the source (no producer-type branch outside lampc/producers/ and lampc/config/producer.py)."""

from __future__ import annotations

import ast
import dataclasses
import itertools
from pathlib import Path

import pytest

import lampc
from lampc.config import (Emulated, Execution, Native, Record, Rule, SiteConfig, SiteFacts, decode, decode_producer,
                          encode, parse_field)
from lampc.criteria import CRITERIA
from lampc.policy import SitePolicy

ROOT = Path(lampc.__file__).parent


def _policies():
    """SitePolicies over every criterion, both producers and the settings each part holds."""
    for criterion, producer in itertools.product(CRITERIA, ("emulate m4", "emulate m7 block_k=32", "native bf16")):
        backend, fmt, *rest = producer.split()
        extra = {"block_k": int(rest[0].split("=")[1])} if rest else {}
        rule = {"budget": 0.25} if CRITERIA[criterion].takes_budget else {}
        if CRITERIA[criterion].counted:
            rule["count_from"] = "relaxed"
        yield SitePolicy(format=fmt, backend=backend, criterion=criterion, dense_above=0.5, fused=True, seed=7,
                         **extra, **rule)
    yield SitePolicy(format="fp16", criterion="strict", tau=0.02, length_scaling=True, l_ref=64, error_scale="l1",
                     softcap=30.0, biased=True)


@pytest.mark.parametrize("site", list(_policies()), ids=lambda s: s.label)
def test_a_site_policy_is_exactly_its_parts(site):
    config = site.config
    assert SitePolicy.from_config(config) == site
    assert SiteConfig.from_texts(*config.texts) == config
    assert SitePolicy.from_spec(site.to_spec()) == site
    assert (config.producer.format, config.producer.backend, config.producer.block_k) == (site.format, site.backend,
                                                                                         site.block_k)
    assert (config.rule.criterion, config.rule.tau, config.rule.budget) == (site.criterion, site.tau, site.budget)
    assert (config.execution.fused, config.execution.dense_above) == (site.fused, site.dense_above)
    assert (config.facts.softcap, config.facts.biased) == (site.softcap, site.biased)


def test_the_texts_are_short_and_name_the_numbers():
    site = SitePolicy(format="m4", criterion="strict", tau=0.1)
    assert site.config.texts == ("emulate m4", "strict tau=0.1", "softcap=none biased=0", "fused=0 dense_above=0.25")
    assert site.label == "m4/bk1/emulate strict tau=0.1"
    assert SitePolicy(format="bf16", backend="native", criterion="budget", budget=8).label == "bf16/native budget k=8"
    assert Emulated("m7", block_k=32).to_text() == "emulate m7 block_k=32"
    assert decode_producer("native fp16") == Native("fp16")


@pytest.mark.parametrize("part", [Emulated("m3", 4), Native("fp16"), Rule("relaxed", tau=0.5, length_scaling=True,
                                                                             l_ref=8, seed=3),
                                  Rule("budget", budget=3), Execution(True, 1.0), SiteFacts(2.5, True)])
def test_every_field_of_every_part_round_trips_through_its_text(part):
    for f in dataclasses.fields(part):
        text = encode(part)
        assert decode(type(part), text) == part, text
        if f.name in type(part).CODE_POSITIONAL or text.count(f"{f.name}=") == 1:
            continue
        assert getattr(part, f.name) == f.default  # a field left out of the text is at its default


def test_a_new_field_is_one_line_in_its_dataclass():
    """A record the codec has never seen, with a field of each kind: encoded and decoded with no other code."""

    @dataclasses.dataclass(frozen=True)
    class Probe(Record):
        CODE_TAG = "probe"
        CODE_POSITIONAL = ("name",)
        name: str = "a"
        count: int = 1
        rate: float | None = None
        flag: bool = False
        budget: int | float | None = None

    value = Probe("b", count=4, rate=0.5, flag=True, budget=0.05)
    assert encode(value) == "probe b count=4 rate=0.5 flag=1 budget=0.05"
    assert decode(Probe, encode(value)) == value
    assert decode(Probe, "probe c budget=8 rate=none") == Probe("c", budget=8)
    assert type(decode(Probe, "probe c budget=8").budget) is int


@pytest.mark.parametrize("cls, name, text, expected", [
    (SitePolicy, "tau", "abc", "SitePolicy.tau: expected a number"),
    (SitePolicy, "fused", "maybe", "SitePolicy.fused: expected true or false"),
    (SitePolicy, "block_k", "2.5", "SitePolicy.block_k: expected an integer"),
    (SitePolicy, "budget", "x", "SitePolicy.budget: expected an integer count or a fraction"),
    (SitePolicy, "colour", "red", "SitePolicy.colour: no such field"),
])
def test_a_bad_text_names_the_field(cls, name, text, expected):
    with pytest.raises(ValueError, match=expected.replace(".", r"\.")):
        parse_field(cls, name, text)


@pytest.mark.parametrize("make, expected", [
    (lambda: Emulated("m4", block_k=0), "SitePolicy.block_k must be an integer >= 1"),
    (lambda: Native("m4"), "backend='native' needs a format torch has as a dtype"),
    (lambda: Rule("strict", tau=-1.0), "SitePolicy.tau for criterion 'strict'"),
    (lambda: Rule("uniform", tau=0.1), "SitePolicy.tau does not apply"),
    (lambda: Rule("budget"), "SitePolicy.budget is required"),
    (lambda: Execution(dense_above=2.0), "SitePolicy.dense_above must be a rate"),
    (lambda: SiteFacts(softcap=-1.0), "SitePolicy.softcap must be a positive number"),
    (lambda: decode_producer("fast m4"), "producer text must start with one of emulate, native"),
    (lambda: Rule.from_text("strict tau"), "expected name=value"),
])
def test_each_part_validates_itself(make, expected):
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        make()


def test_a_site_policy_refuses_what_its_parts_refuse():
    with pytest.raises(ValueError, match="block_k applies to backend='emulate' only"):
        SitePolicy(format="bf16", backend="native", block_k=4)
    with pytest.raises(ValueError, match="SitePolicy.backend must be one of emulate, native"):
        SitePolicy(backend="fast")
    for not_one in (True, 1.0):  # equal to the default 1, but no integer block size
        with pytest.raises(ValueError, match="SitePolicy.block_k"):
            SitePolicy(format="bf16", backend="native", block_k=not_one)


def _producer_branches(source: str) -> list[int]:
    """Lines comparing something with a producer type's name, or testing isinstance against a producer type."""
    lines, names = [], {"emulate", "native"}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                constants = [side] + (list(side.elts) if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [])
                if any(isinstance(c, ast.Constant) and c.value in names for c in constants):
                    lines.append(node.lineno)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2:
            if any(getattr(n, "id", None) in ("Emulated", "Native") for n in ast.walk(node.args[1])):
                lines.append(node.lineno)
    return sorted(set(lines))


def test_no_producer_type_branch_outside_the_producers():
    allowed = {ROOT / "config" / "producer.py"} | set((ROOT / "producers").glob("*.py"))
    found = [f"{path.relative_to(ROOT.parent)}:{line}" for path in sorted(ROOT.rglob("*.py")) if path not in allowed
             for line in _producer_branches(path.read_text(encoding="utf-8"))]
    assert found == []


def test_the_branch_check_sees_a_branch():
    assert _producer_branches('if site.backend == "native":\n    pass\n') == [1]
    assert _producer_branches('x = p.backend in ("emulate", "native")\n') == [1]
    assert _producer_branches('if isinstance(p, Native):\n    pass\n') == [1]
    assert _producer_branches('impl = implementation(p)\nhelp = "backend=\'native\' is fast"\n') == []


def _texts_and_tags(gm) -> list[tuple[str, object, object]]:
    """(node, the configuration its op arguments decode to, the one its tag carries) for every site op of gm."""
    from lampc.config import SiteConfig
    from lampc.graph_view import argument
    from lampc.ops import SITE_OPS

    out = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in SITE_OPS:
            continue
        config = node.meta["lampc"].config
        names = {a.name for a in node.target._schema.arguments}
        read = {name: argument(node, name) for name in ("producer", "rule", "facts", "execution") if name in names}
        decoded = SiteConfig.from_texts(read.get("producer", config.producer.to_text()),
                                        read.get("rule", config.rule.to_text()), read.get("facts"),
                                        read.get("execution"))
        want = dataclasses.replace(config, **{k: v for k, v in (("facts", SiteFacts()), ("execution", Execution()))
                                              if k not in read})
        out.append((node.name, decoded, want))
    return out


@pytest.mark.slow
def test_every_site_op_runs_the_configuration_its_tag_carries():
    """The ops run their text arguments; export, show, respec and unfusing read the tags: the two must agree, after
    compile, after respec and after unfusing."""
    from tiny_models import tiny_gpt2

    from lampc.passes import unfuse_sites
    from lampc.passes.respec import respec_sites

    compiled = lampc.compile(tiny_gpt2(), kinds="all", format="m5", criterion="strict", tau=0.2, fused=True)
    gm = compiled.graph_module
    pairs = _texts_and_tags(gm)
    assert len(pairs) >= 4 and all(decoded == tag for _, decoded, tag in pairs), pairs
    site = compiled.sites[0]
    respec_sites(gm, {site.index: SitePolicy(format="m6", criterion="relaxed", tau=0.5, fused=True)})
    pairs = _texts_and_tags(gm)
    assert all(decoded == tag for _, decoded, tag in pairs), pairs
    assert any(tag.rule.criterion == "relaxed" for _, _, tag in pairs)
    unfuse_sites(gm)
    pairs = _texts_and_tags(gm)
    assert all(decoded == tag for _, decoded, tag in pairs), pairs
    every = [n for n in gm.graph.nodes if n.meta.get("lampc") is not None and n.meta["lampc"].site is not None]
    assert all(n.meta["lampc"].config is not None for n in every)  # operands and taps too
