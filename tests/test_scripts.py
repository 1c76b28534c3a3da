"""scripts/: the tools that made the embedded model and the offline task data, kept outside the installed package.

They run as `python scripts/<name>.py` from a clone, importing lampc like any user of it; the wheel holds only
lampc (pyproject's package discovery), so neither is installed.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
import setuptools

from lampc.models.load import EMBEDDED_DIR

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ["train_embedded", "make_austen_tasks"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_script_runs_as_a_file(name, capsys, monkeypatch):
    """Run as __main__ from its path (no package around it: a relative import would fail), `--help` only."""
    monkeypatch.setattr(sys, "argv", [f"scripts/{name}.py", "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(REPO / "scripts" / f"{name}.py"), run_name="__main__")
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: {name}.py")


def test_training_writes_where_the_package_reads():
    """Its defaults are the embedded model's folder in the package and the slice the tests check."""
    train = runpy.run_path(str(REPO / "scripts" / "train_embedded.py"))
    args = train["parse_args"]([])
    assert Path(args.out) == EMBEDDED_DIR
    assert Path(args.slice) == EMBEDDED_DIR / "persuasion_slice.txt" and Path(args.slice).is_file()


def test_the_wheel_holds_lampc_only():
    """setuptools' discovery with pyproject's own options (namespace packages unless `namespaces = false`, as
    setuptools reads a pyproject) finds lampc's packages and nothing of scripts/."""
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11's TOML reader")
    options = dict(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"])
    find = setuptools.find_namespace_packages if options.pop("namespaces", True) else setuptools.find_packages
    packages = find(str(REPO), **options)
    assert "lampc" in packages and "lampc.models" in packages
    assert [p for p in packages if p.split(".")[0] != "lampc"] == []
    for name in SCRIPTS:
        assert list((REPO / "lampc").rglob(f"{name}.py")) == []
