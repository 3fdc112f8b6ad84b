"""The package's modules import each other without a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import kindlessh

PACKAGE = Path(kindlessh.__file__).parent


def _absolute(name: str) -> str:
    """The package module an absolute import names (or "" outside the package)."""
    parts = name.split(".")
    if parts[0] != "kindlessh":
        return ""
    return parts[1] if len(parts) > 1 else "__init__"


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports (``from ._x import``, ``from . import``),
    wherever the import stands, ``if TYPE_CHECKING:`` blocks and functions included."""
    modules = {p.stem for p in package.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in package.glob("*.py"):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:  # from . import _x, or a name the package itself defines
                    found |= {a.name if a.name in modules else "__init__" for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:  # from kindlessh._x import
                found.add(_absolute(node.module))
            elif isinstance(node, ast.Import):
                found |= {_absolute(a.name) for a in node.names}
        graph[path.stem] = (found & modules) - {path.stem}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts, or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        for after in sorted(graph.get(node, ())):
            cycle = visit(after, [*path, node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start, [])
        if cycle:
            return cycle
    return None


def test_the_finder_sees_a_cycle_through_type_checking_imports(tmp_path: Path) -> None:
    (tmp_path / "_a.py").write_text("from ._b import B\n")
    (tmp_path / "_b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ._c import C\n"
    )
    (tmp_path / "_c.py").write_text("from . import _a\n")
    assert find_cycle(import_graph(tmp_path)) == ["_a", "_b", "_c", "_a"]


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph(PACKAGE)
    assert "_server" in graph["_cli"]  # the graph is read at all
    assert find_cycle(graph) is None


def test_a_session_does_not_know_the_server() -> None:
    graph = import_graph(PACKAGE)
    for module in ("_session", "_channel", "_screen"):
        assert not {"_server", "_connection"} & graph[module], module
