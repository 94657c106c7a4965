"""mypy sees the package as the interpreter does: ``_mypy/taskstream`` follows ``[tool.setuptools.package-dir]``.

mypy checks ``taskstream.*`` through the committed symlinks of ``_mypy/taskstream`` (the editable install's
import hook is invisible to it; docs/decisions/0013-type-checking.md). A package added to pyproject.toml without
its link would be checked by nobody and every type from it would be Any: this test says which link is missing.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TREE = ROOT / "_mypy"


def _package_dirs() -> dict[str, Path]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping = config["tool"]["setuptools"]["package-dir"]
    packages = config["tool"]["setuptools"]["packages"]
    out = {}
    for package in packages:  # a package without its own entry lies in its parent's folder
        parent, _, leaf = package.rpartition(".")
        out[package] = ROOT / mapping[package] if package in mapping else out[parent] / leaf
    return out


def test_every_package_resolves_in_the_tree_to_its_folder() -> None:
    for package, folder in _package_dirs().items():
        if package == "taskstream":
            continue  # its folder holds other packages' links: checked below, module by module
        linked = TREE.joinpath(*package.split("."))
        assert linked.resolve() == folder.resolve(), f"{linked} should lead to {folder} (pyproject.toml)"


def test_every_module_of_the_top_package_is_linked() -> None:
    top = _package_dirs()["taskstream"]
    for module in top.glob("*.py"):
        linked = TREE / "taskstream" / module.name
        assert linked.resolve() == module.resolve(), f"{linked} should lead to {module}"


def test_the_tree_holds_nothing_the_package_has_not() -> None:
    dirs = _package_dirs()
    top_level = {p.split(".")[1] for p in dirs if p.count(".") >= 1}
    modules = {m.name for m in dirs["taskstream"].glob("*.py")}
    assert {p.name for p in (TREE / "taskstream").iterdir()} == top_level | modules
