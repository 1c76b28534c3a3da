"""The import contract: lampc's layers only point down, and no import closes a circle, lazy imports included.

    formats, version, graph_view -> kernels -> numerics -> policy, criteria -> lookahead -> ops -> passes, capture -> runtime -> api
        -> inspect, eval, export, models, tasks, cli_support, cli_policy -> cli -> the `lampc` facade

A module may import its own layer and the layers below, never above. Every import counts, also one inside a
function (a lazy import is still a dependency) and one under TYPE_CHECKING. Read from the source with `ast`, so a
new module is checked without being listed: only a new top-level package needs a line in LAYERS.

Within a layer, imports may go either way, so the layers alone allow two modules that import each other; the
circle tests forbid that, with every import counted (a lazy import only hides a circle until someone moves it to
the top of the file), between modules and between lampc's packages (`lampc.eval`, `lampc.models`, ...). A
package's __init__ that imports (re-exports) its submodules closes no circle with them; a submodule that reads a
name back from its package's __init__ does (see `import_cycles`). The training and task-making scripts live in
scripts/, outside the package, and are not checked.
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
    ("lampc.kernels",),
    ("lampc.numerics",),
    ("lampc.policy", "lampc.criteria", "lampc.site_kinds", "lampc.config"),
    ("lampc.producers",),
    ("lampc.lookahead",),
    ("lampc.ops",),
    ("lampc.passes", "lampc.capture", "lampc.capture_step"),
    ("lampc.runtime",),
    ("lampc.api",),
    ("lampc.cells",),
    ("lampc.inspect", "lampc.eval", "lampc.export", "lampc.models", "lampc.tasks", "lampc.cli_tasks", "lampc.cli_support",
     "lampc.cli_policy"),
    ("lampc.cli",),
    ("lampc",),
]


def layer_of(module: str) -> int:
    """The layer of a lampc module: that of the longest LAYERS prefix it falls under. `lampc` is the facade, no
    prefix: a module of a package not in LAYERS has no layer."""
    best, depth = None, -1
    for layer, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            inside = module == prefix or (prefix != "lampc" and module.startswith(prefix + "."))
            if inside and prefix.count(".") > depth:
                best, depth = layer, prefix.count(".")
    if best is None:
        raise LookupError(f"{module} is in no layer: add its package to LAYERS in tests/test_layers.py")
    return best


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = {module_name(p): p.read_text(encoding="utf-8") for p in sorted(ROOT.rglob("*.py"))}


def imports(module: str, source: str, *, load_time_only: bool = False, modules=None) -> set[str]:
    """The lampc modules `module` imports (resolved from relative imports). load_time_only: only statements that
    run when the module loads (module level, outside TYPE_CHECKING). modules: the names that are modules, packages
    included (default: lampc's files)."""
    return set(import_lines(module, source, load_time_only=load_time_only, modules=modules))


def import_lines(module: str, source: str, *, load_time_only: bool = False, modules=None) -> dict[str, int]:
    """`imports`, each with the line of its first import statement."""
    modules = SOURCES.keys() if modules is None else modules
    tree = ast.parse(source)
    package = module if is_package(module, modules) else module.rpartition(".")[0]
    nodes = _load_time(tree.body) if load_time_only else ast.walk(tree)
    found: dict[str, int] = {}
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "lampc"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "lampc":
                continue
            # `from . import ops` imports a module; `from .x import f` imports x
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for name in names:
            found[name] = min(found.get(name, node.lineno), node.lineno)
    return found


def is_package(module: str, modules) -> bool:
    """Whether `module` is a package (an __init__.py): some other module lies inside it."""
    return any(other.startswith(module + ".") for other in modules)


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


def top_package(module: str) -> str:
    """The part of lampc a module belongs to: `lampc.eval.sweep` -> `lampc.eval`; `lampc.api` -> itself."""
    return ".".join(module.split(".")[:2])


def import_cycles(sources: dict[str, str], *, load_time_only: bool = False, group=None) -> list[str]:
    """Every circle of imports among `sources` ({module name: source text}), each as
    'a -> b -> a  [a:12 imports b; b:30 imports a]' (the module and line of each import). Every import counts,
    also one inside a function or under TYPE_CHECKING, unless load_time_only. group: what each module counts as
    (`top_package`: circles between packages, imports within one dropped); by default each module itself.

    A package is its __init__.py: it imports its submodules as any module would (an edge down, no circle). A
    submodule that reads a name from its own package (`from lampc.eval import f`, `from . import f` where f is no
    module) points back at that __init__, a circle if the __init__ leads to it: import f from the module that
    defines it. The ancestor packages that Python runs before a submodule (`import lampc.eval.data` runs
    lampc/eval/__init__.py first) are not edges, or every package that re-exports its submodules would close a
    circle with each of them. At load time only, a submodule's import of its own package is dropped (Python has
    that __init__ loading already)."""
    group = group or (lambda module: module)
    graph = nx.DiGraph()
    for module, source in sources.items():
        for other, line in import_lines(module, source, load_time_only=load_time_only, modules=sources).items():
            if other not in sources:
                continue  # no such module: test_every_module_has_a_layer's business
            if load_time_only and module.startswith(other + "."):
                continue
            a, b = group(module), group(other)
            if a != b and not graph.has_edge(a, b):
                graph.add_edge(a, b, why=f"{module}:{line} imports {other}")
    return sorted((_describe(graph, cycle) for cycle in nx.simple_cycles(graph)), key=lambda c: (c.count("->"), c))


def _describe(graph: nx.DiGraph, cycle: list[str]) -> str:
    """'a -> b -> a  [why a imports b; why b imports a]', from the cycle's first module in name order."""
    start = cycle.index(min(cycle))
    cycle = cycle[start:] + cycle[:start]
    steps = zip(cycle, cycle[1:] + cycle[:1])
    return " -> ".join(cycle + cycle[:1]) + "  [" + "; ".join(graph.edges[a, b]["why"] for a, b in steps) + "]"


def test_every_module_has_a_layer():
    assert len(SOURCES) > 50
    for module in SOURCES:
        layer_of(module)


def test_layers_only_point_down():
    violations = [v for module, source in SOURCES.items() for v in upward_imports(module, source)]
    assert violations == []


def test_no_import_cycle_at_load_time():
    cycles = import_cycles(SOURCES, load_time_only=True)
    assert not cycles, "import circles at load time:\n" + "\n".join(cycles)


def test_no_import_cycle_between_modules():
    """Lazy imports (inside a function, under TYPE_CHECKING) included: a circle made of them is still a circle."""
    cycles = import_cycles(SOURCES)
    assert not cycles, "import circles between modules:\n" + "\n".join(cycles)


def test_no_import_cycle_between_packages():
    """`lampc.eval` and `lampc.models` may not import each other even through different modules."""
    cycles = import_cycles(SOURCES, group=top_package)
    assert not cycles, "import circles between packages:\n" + "\n".join(cycles)


LAZY_CIRCLE = {  # a -> b at load time, b -> a only inside a function: no load-time circle, still a circle
    "lampc.fake": "",
    "lampc.fake.a": "from .b import helper\n",
    "lampc.fake.b": "def helper():\n    from lampc.fake.a import thing\n    return thing\n",
}
NO_CIRCLE = {**LAZY_CIRCLE, "lampc.fake.b": "def helper():\n    from lampc.fake.c import thing\n    return thing\n",
             "lampc.fake.c": "import lampc.formats\n", "lampc.formats": ""}


def test_a_lazy_import_circle_is_caught():
    """The checker itself, on sources of its own: the circle is named with the line of each import."""
    assert import_cycles(LAZY_CIRCLE, load_time_only=True) == []
    assert import_cycles(LAZY_CIRCLE) == [
        "lampc.fake.a -> lampc.fake.b -> lampc.fake.a  [lampc.fake.a:1 imports lampc.fake.b; "
        "lampc.fake.b:2 imports lampc.fake.a]"]


def test_the_same_modules_without_the_circle_pass():
    """The twin: b's lazy import goes on to c (and c to another package) instead of back to a."""
    assert import_cycles(NO_CIRCLE) == []
    assert import_cycles(NO_CIRCLE, group=top_package) == []


@pytest.mark.parametrize("sources, found", [
    ({"lampc.p": "from . import a\n", "lampc.p.a": "def f():\n    from lampc.p import g\n"}, ["lampc.p", "lampc.p.a"]),
    ({"lampc.p": "from .a import g\n", "lampc.p.a": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
      "    from .. import p\n"}, ["lampc.p", "lampc.p.a"]),
    ({"lampc.p": "from .a import g\n", "lampc.p.a": "from . import b\n", "lampc.p.b": "import lampc.p.c\n",
      "lampc.p.c": ""}, []),
])
def test_a_package_and_its_submodule(sources, found):
    """A package that imports its submodules is no circle with them until one reads the package's own names
    (lazily, or under TYPE_CHECKING); `from . import b` reads the module b, and `import lampc.p.c` runs lampc.p
    first without reading it."""
    cycles = [cycle.split("  [")[0] for cycle in import_cycles(sources)]
    assert cycles == ([" -> ".join(found + found[:1])] if found else [])


def test_a_circle_between_packages_is_caught():
    """x.a imports y.b, y.c imports x.a (lazily): no two modules import each other, the packages x and y do."""
    sources = {"lampc.x": "", "lampc.x.a": "import lampc.y.b\n", "lampc.y": "", "lampc.y.b": "",
               "lampc.y.c": "def f():\n    from lampc.x import a\n"}
    assert import_cycles(sources) == []
    assert import_cycles(sources, group=top_package) == [
        "lampc.x -> lampc.y -> lampc.x  [lampc.x.a:1 imports lampc.y.b; lampc.y.c:2 imports lampc.x.a]"]


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
