"""The package arrows of DESIGN §1, checked by parsing every module's imports (ast).

``schemas`` <- ``streams``, ``executors``, ``api``; none of those three imports
another, except ``api`` -> ``streams.domain`` (the pure decider); ``cli`` may
import every package. ``client`` (the HTTP client) imports none of ours, so
it works standalone, but for the retry policy value it re-exports, imported
when first used. Imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Folder -> the package it is installed as (pyproject's package-dir).
FOLDERS = {"api": "taskstream.api", "streams": "taskstream.streams", "executors": "taskstream.executors",
           "schemas": "taskstream.schemas", "cli": "taskstream.cli", "client": "taskstream.client"}
TOP = {"api", "streams", "executors", "schemas", "cli", "client"}
#: package -> top-level packages of ours it may import (besides itself).
ALLOWED = {
    "schemas": set(),
    "streams": {"schemas"},
    "executors": {"schemas"},
    "api": {"schemas"},
    "cli": {"schemas", "streams", "executors", "api", "client"},
    "client": set(),
}
#: Single modules allowed across an arrow that is otherwise closed.
EXCEPTIONS = {("api", "taskstream.streams.domain"),
              # the one retry policy value, re-exported by the client and imported only when first used
              ("client", "taskstream.schemas.retry")}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    base = FOLDERS[parts[0]].split(".")
    rest = parts[1:]
    if rest and rest[-1] == "__init__":
        rest = rest[:-1]
    return ".".join(base + rest)


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in ``source``; ``from x import y`` gives ``x.y`` as well as ``x``."""
    out: list[tuple[int, str]] = []
    package = module if is_package else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((node.lineno, target))
            out += [(node.lineno, f"{target}.{a.name}") for a in node.names if a.name != "*"]
    return out


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """Imports of ``module`` (in package ``taskstream.<top>``) that cross a closed arrow."""
    own = module.split(".")[1]
    bad = []
    for line, target in imported_modules(source, module, is_package):
        parts = target.split(".")
        if parts[0] != "taskstream" or len(parts) < 2 or parts[1] not in TOP or parts[1] == own:
            continue
        if parts[1] in ALLOWED[own]:
            continue
        if any(own == o and (target == m or target.startswith(m + ".")) for o, m in EXCEPTIONS):
            continue
        if ".".join(parts[:2]) == target and any(o == own and m.startswith(target + ".") for o, m in EXCEPTIONS):
            continue  # ``from taskstream.streams import domain``: the package itself, checked through its name
        bad.append((line, f"{module}:{line} imports {target}"))
    return list({line: text for line, text in bad}.values())  # one finding per import statement


def _modules():
    for folder in FOLDERS:
        yield from sorted((ROOT / folder).rglob("*.py"))


def test_every_module_keeps_to_the_package_arrows() -> None:
    found = []
    for path in _modules():
        module = _module_name(path)
        found += violations(path.read_text(), module, path.name == "__init__.py")
    assert found == []


@pytest.mark.parametrize("source, module, expected", [
    ("from taskstream.executors import handler", "taskstream.streams.processor", 1),
    ("import taskstream.api.models", "taskstream.executors.runtime", 1),
    ("from taskstream.streams.processor import Processor", "taskstream.api.app", 1),
    ("from taskstream.streams import processor", "taskstream.api.app", 1),
    ("def f():\n    from taskstream.cli import main", "taskstream.schemas.codec", 1),
    ("from ..streams import relay", "taskstream.api.routes.tasks", 0),  # relative: taskstream.api.streams, ours
    ("from taskstream.streams import domain", "taskstream.api.history", 0),
    ("from taskstream.streams.domain import evolve", "taskstream.api.history", 0),
    ("from taskstream.schemas import codec", "taskstream.executors.runtime", 0),
    ("from taskstream.streams.processor import Processor", "taskstream.cli.main", 0),
    ("from taskstream.schemas import codec", "taskstream.client._calls", 1),
    ("from taskstream.client import Client", "taskstream.cli.bench", 0),
])
def test_the_checker_finds_a_forbidden_import(source: str, module: str, expected: int) -> None:
    assert len(violations(source, module)) == expected, violations(source, module)
