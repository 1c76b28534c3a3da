"""The import contract: lampc's layers only point down, and no two modules import each other at load time.

    formats, version, graph_view -> numerics -> policy, criteria -> lookahead -> ops -> passes, capture -> runtime -> api
        -> inspect, eval, export, models, tasks, cli_support, cli_policy -> cli -> the `lampc` facade

A module may import its own layer and the layers below, never above. Every import counts, also one inside a
function (a lazy import is still a dependency) and one under TYPE_CHECKING. Read from the source with `ast`, so a
new module is checked without being listed: only a new top-level package needs a line in LAYERS.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

import lampc

ROOT = Path(lampc.__file__).parent
LAYERS = [
    ("lampc.formats", "lampc.version", "lampc.graph_view"),
    ("lampc.numerics",),
    ("lampc.policy", "lampc.criteria"),
    ("lampc.lookahead",),
    ("lampc.ops",),
    ("lampc.passes", "lampc.capture", "lampc.capture_step"),
    ("lampc.runtime",),
    ("lampc.api",),
    ("lampc.inspect", "lampc.eval", "lampc.export", "lampc.models", "lampc.tasks", "lampc.cli_tasks", "lampc.cli_support",
     "lampc.cli_policy"),
    ("lampc.cli",),
    ("lampc",),
]


def layer_of(module: str) -> int:
    """The layer of a lampc module: that of the longest LAYERS prefix it falls under."""
    best, depth = None, -1
    for layer, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and prefix.count(".") > depth:
                best, depth = layer, prefix.count(".")
    if best is None:
        raise LookupError(f"{module} is in no layer: add its package to LAYERS in tests/test_layers.py")
    return best


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(module: str, source: str, *, load_time_only: bool = False) -> set[str]:
    """The lampc modules `module` imports (resolved from relative imports). load_time_only: only statements that
    run when the module loads (module level, outside TYPE_CHECKING)."""
    tree = ast.parse(source)
    package = module if source_is_package(module) else module.rpartition(".")[0]
    nodes = _load_time(tree.body) if load_time_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "lampc"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "lampc":
                continue
            for alias in node.names:  # `from . import ops` imports a module; `from .x import f` imports x
                candidate = f"{base}.{alias.name}"
                found.add(candidate if _is_module(candidate) else base)
    return found


def source_is_package(module: str) -> bool:
    return (ROOT.parent / module.replace(".", "/") / "__init__.py").exists()


def _is_module(name: str) -> bool:
    path = ROOT.parent / name.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _load_time(body):
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.If, ast.Try)):
            yield from _load_time(node.body + getattr(node, "orelse", []) + getattr(node, "finalbody", []))


def upward_imports(module: str, source: str) -> list[str]:
    """'module (layer) -> imported (layer)' for each import that points up."""
    mine = layer_of(module)
    return [f"{module} (layer {mine}) -> {other} (layer {layer_of(other)})"
            for other in sorted(imports(module, source)) if layer_of(other) > mine]


SOURCES = {module_name(p): p.read_text(encoding="utf-8") for p in sorted(ROOT.rglob("*.py"))}


def test_every_module_has_a_layer():
    assert len(SOURCES) > 50
    for module in SOURCES:
        layer_of(module)


def test_layers_only_point_down():
    violations = [v for module, source in SOURCES.items() for v in upward_imports(module, source)]
    assert violations == []


def test_no_import_cycle_at_load_time():
    graph = nx.DiGraph()
    for module, source in SOURCES.items():
        for other in imports(module, source, load_time_only=True):
            if other != module and not module.startswith(other + "."):  # a package's own __init__ is loaded first
                graph.add_edge(module, other)
    assert list(nx.simple_cycles(graph)) == []


@pytest.mark.parametrize("module, source, bad", [
    ("lampc.numerics.rounding", "from ..runtime.compiled import CompiledModel\n", "lampc.runtime.compiled"),
    ("lampc.ops.tap", "def f():\n    from lampc.eval import sweep\n", "lampc.eval.sweep"),
    ("lampc.passes.attention", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..api import compile\n",
     "lampc.api"),
    ("lampc.policy", "from .lookahead import softmax\n", "lampc.lookahead.softmax"),
])
def test_an_upward_import_is_caught(module, source, bad):
    """The checker itself: an upward import at module level, inside a function and under TYPE_CHECKING."""
    found = upward_imports(module, source)
    assert len(found) == 1 and f"-> {bad} " in found[0]


def test_downward_and_sibling_imports_pass():
    assert upward_imports("lampc.ops.fused_site", "from .softmax_site import lowp_scores\n"
                                                  "from ..lookahead import row_stats\n") == []
    assert imports("lampc.ops.fused_site", "from ..lookahead import row_stats\n") == {"lampc.lookahead.row_stats"}
