"""The API's two protocols share one read path, one write path and one context (issue 23, item 6), by their imports.

Parsed with ``ast``: the gRPC servicers import no HTTP route module and no private name of another module; no
module of the API reads a part off ``app.state`` (the routes take the ``ApiContext`` as a dependency); the read
and write paths import no protocol (FastAPI, Starlette, grpc).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

API = Path(__file__).resolve().parents[2] / "api"
MODULES = sorted(p for p in API.rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _imports(tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(module as written, relative dots kept; names imported) of every import, in functions too."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            out.append(("." * node.level + (node.module or ""), [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names)
    return out


@pytest.mark.parametrize("name", ["grpc_services.py", "grpc_server.py"])
def test_grpc_imports_no_http_route_and_no_private_name(name: str) -> None:
    for module, names in _imports(_tree(API / name)):
        assert not module.lstrip(".").startswith("routes"), (name, module)
        private = [n for n in names if n.startswith("_")]
        assert not private, (name, module, private)


def _is_app_state(node: ast.AST) -> bool:
    """``app.state``, ``request.app.state``, ``self.app.state`` (not ``request.state``: one request's own)."""
    if not (isinstance(node, ast.Attribute) and node.attr == "state"):
        return False
    owner = node.value
    return (isinstance(owner, ast.Name) and owner.id == "app") or (isinstance(owner, ast.Attribute)
                                                                   and owner.attr == "app")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(API)))
def test_no_module_reads_a_part_off_app_state(path: Path) -> None:
    """``app.state.<part>`` and ``getattr(app.state, ...)`` are gone; ``app.state.context`` is where the context is."""
    allowed = {"context", "ui_throughput"}  # the context itself; the dashboard's own history
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Attribute) and _is_app_state(node.value):
            assert node.attr in allowed, f"{path.name}:{node.lineno}: app.state.{node.attr}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr"):
            target, name = node.args[0], node.args[1] if len(node.args) > 1 else None
            if _is_app_state(target) or (isinstance(target, ast.Name) and target.id == "app_state"):
                assert isinstance(name, ast.Constant) and name.value in allowed, f"{path.name}:{node.lineno}"


@pytest.mark.parametrize("name", ["reads.py", "service.py", "context.py"])
def test_the_read_and_write_paths_speak_no_protocol(name: str) -> None:
    protocols = ("grpc", "starlette", "fastapi")
    for module, _ in _imports(_tree(API / name)):
        if name == "context.py" and module == "fastapi":
            continue  # the one FastAPI dependency that hands the context to routes
        assert not module.startswith(protocols), (name, module)
