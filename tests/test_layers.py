"""The package's import graph: no cycle between any two of kdsweep's modules, counting the
imports inside functions and under TYPE_CHECKING (grimp reads them all). The layers
themselves are import-linter's contract in pyproject.toml (``lint-imports`` in CI)."""

from __future__ import annotations

import grimp


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph[module]:
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def _kdsweep_graph() -> dict[str, set[str]]:
    built = grimp.build_graph("kdsweep", cache_dir=None)
    return {
        module: {m for m in built.find_modules_directly_imported_by(module)}
        for module in built.modules
    }


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_kdsweep_modules() -> None:
    graph = _kdsweep_graph()
    assert len(graph) > 50  # the whole package was read
    assert _cycles(graph) == []
