"""The package's import graph: no module imports, directly or through others, a module that
imports it back. Lazy imports inside functions count too: they are the same dependency."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "idstitch"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The idstitch modules `path` imports, with the packages Python runs on the way (all but
    the top-level package, whose __init__ only re-exports the public API, and the module's
    own packages, which Python has run before it)."""
    own = {name.rsplit(".", n)[0] for n in range(1, name.count(".") + 1)}
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                for a in node.names
            ]
        else:
            continue
        for imported in names:
            parts = imported.split(".")
            for end in range(2, len(parts) + 1):
                if ".".join(parts[:end]) in known:
                    found.add(".".join(parts[:end]))
    return found - own - {name}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_import_graph_has_no_cycle() -> None:
    known = modules()
    graph = {name: imports(name, path, set(known)) for name, path in known.items()}
    assert "idstitch.config" in graph and "idstitch.storage.postgres" in graph
    found = cycle(graph)
    assert found is None, " -> ".join(found or [])


def test_a_cycle_is_found() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_the_http_layer_reads_through_the_engine_not_the_store() -> None:
    """Every read has one way in (`Engine.reads` and the engine's operations): no module of
    idstitch.http reaches for `.store`."""
    reached = [
        f"{path.name}:{node.lineno}"
        for path in sorted((PACKAGE / "http").glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr == "store"
    ]
    assert reached == []
