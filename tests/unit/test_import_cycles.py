"""No two modules of a package import each other, directly or round a loop (parsed with ast, like test_layers).

An edge is "module A imports module B", in functions too; ``from pkg import
name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``
(its ``__init__``). A package's ``__init__`` re-exporting its modules is the
one allowed way in: edges into an ``__init__`` from its own submodules are
not counted, since Python has bound the package before any submodule runs.
Imports under ``if TYPE_CHECKING:`` never run, so they are not edges.
The executor's parts (intake, dispatcher, attempt runner) were once mixins
that imported each other; this keeps them, and every other package, a DAG.
"""

from __future__ import annotations

import ast

import pytest

from tests.unit.test_layers import FOLDERS, _module_name, _modules, imported_modules

#: Cycles known when this test was written, each as the set of its modules (a lazy import inside a function).
KNOWN = [{"taskstream.cli.bench", "taskstream.cli.bench_grpc"}]


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of ours it imports."""
    sources = {_module_name(path): (runtime_source(path.read_text()), path.name == "__init__.py")
               for path in _modules()}
    graph: dict[str, set[str]] = {}
    for module, (source, is_package) in sources.items():
        edges = set()
        for _, target in imported_modules(source, module, is_package):
            if target in sources and target != module:
                edges.add(target)
        # ``from pkg import mod`` lists both pkg and pkg.mod: keep pkg only when no submodule of it was named.
        for target in list(edges):
            if any(other.startswith(target + ".") for other in edges):
                edges.discard(target)
        graph[module] = {t for t in edges if not (is_init(t, sources) and module.startswith(t + "."))}
    return graph


class _DropTypeChecking(ast.NodeTransformer):
    def visit_If(self, node: ast.If) -> ast.AST | None:
        test = node.test
        name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
        return None if name == "TYPE_CHECKING" else self.generic_visit(node)


def runtime_source(source: str) -> str:
    """``source`` without its ``if TYPE_CHECKING:`` blocks (imports for annotations only)."""
    return ast.unparse(_DropTypeChecking().visit(ast.parse(source)))


def is_init(module: str, sources: dict[str, tuple[str, bool]]) -> bool:
    return sources[module][1]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected group of modules, by DFS."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


@pytest.mark.parametrize("package", sorted(FOLDERS.values()))
def test_no_import_cycle(package: str) -> None:
    graph = import_graph()
    ours = {m: {t for t in ts if t == package or t.startswith(package + ".")}
            for m, ts in graph.items() if m == package or m.startswith(package + ".")}
    assert ours, f"no modules found for {package}"
    assert [c for c in cycles(ours) if set(c) not in KNOWN] == []


def test_the_executor_parts_are_separate_modules() -> None:
    graph = import_graph()
    parts = ["taskstream.executors._intake", "taskstream.executors._dispatch", "taskstream.executors._attempt"]
    assert all(p in graph for p in parts)
    below = graph["taskstream.executors._intake"] | graph["taskstream.executors._attempt"]
    assert "taskstream.executors._dispatch" not in below and "taskstream.executors.runtime" not in below


def test_the_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"b"}}) == []
