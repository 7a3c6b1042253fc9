"""The house rules of the import graph, read from the source (ast), not by importing it.

Layers, bottom to top:

- the core of ``subswitch`` (contract, errors, settings, broker topology, embedded Redis,
  the simulator): imports neither role nor the top;
- the roles, ``worker`` (executes) and ``producers`` (enqueue): each imports the core,
  never the other; ``worker.upstream`` (the MasStack client) imports nothing else of the
  worker;
- the top: the CLI modules, the demo and the schema generator.

Nothing imports a CLI module but the ``subswitch`` CLI itself (and ``__main__``), no
first-party import hides inside a function, and the module graph has no cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parent.parent
PACKAGES: Final = ("subswitch", "worker", "producers")
TOP: Final = frozenset(
    {
        "subswitch.cli",
        "subswitch.demo",
        "subswitch.schemas",
        "subswitch.__main__",
        "subswitch.simulator.__main__",
    }
)
CLI_MODULES: Final = frozenset(
    {
        "subswitch.cli",
        "subswitch.simulator.cli",
        "producers.cli",
        "producers.batch_cli",
        "producers.dead_cli",
        "producers.retry_cli",
        "subswitch.status_cli",
        "subswitch.trust_cli",
        "producers.gateway_cli",
        "worker.cli",
        "worker.reconcile_cli",
        "subswitch.archive.cli",
    }
)
#: Who may import a CLI module: the ``subswitch`` CLI that assembles them, ``__main__``s.
CLI_IMPORTERS: Final = frozenset(
    {"subswitch.cli", "subswitch.__main__", "subswitch.simulator.__main__"}
)


@dataclass(frozen=True)
class Import:
    """One first-party import: where it stands and what it names."""

    importer: str
    imported: str
    line: int
    in_function: bool

    def __str__(self) -> str:
        return f"{self.importer}:{self.line} imports {self.imported}"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def all_modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The first-party module ``name`` refers to (a module, or the package of an attribute)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _is_package(module: str) -> bool:
    return all_modules()[module].name == "__init__.py"


def _targets(node: ast.Import | ast.ImportFrom, importer: str) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:
        package = importer if _is_package(importer) else importer.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    yield from (f"{base}.{alias.name}" for alias in node.names)


class _Collector(ast.NodeVisitor):
    def __init__(self, importer: str) -> None:
        self.importer = importer
        self.depth = 0
        self.found: set[Import] = set()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._nested(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._nested(node)

    def visit_If(self, node: ast.If) -> None:
        # ``if TYPE_CHECKING:`` imports never run, so they make no cycle.
        if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self._record(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self._record(node)

    def _nested(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    def _record(self, node: ast.Import | ast.ImportFrom) -> None:
        modules = all_modules()
        for target in _targets(node, self.importer):
            resolved = _resolve(target, modules)
            if resolved is not None and resolved != self.importer:
                self.found.add(Import(self.importer, resolved, node.lineno, self.depth > 0))


@cache
def all_imports() -> tuple[Import, ...]:
    found: list[Import] = []
    for name, path in all_modules().items():
        collector = _Collector(name)
        collector.visit(ast.parse(path.read_text(), filename=str(path)))
        found.extend(sorted(collector.found, key=lambda imp: (imp.line, imp.imported)))
    return tuple(found)


def _package(module: str) -> str:
    return module.split(".", 1)[0]


def _is_core(module: str) -> bool:
    return _package(module) == "subswitch" and module not in TOP | CLI_MODULES


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_source_is_found() -> None:
    # Given the three packages, when their modules are listed
    modules = all_modules()
    # Then the core, both roles and the top are all there (a broken walk finds nothing)
    assert {"subswitch.contract", "worker.executor", "producers.producer"} <= modules.keys()
    assert modules.keys() >= TOP
    assert len(all_imports()) > 50


def test_the_core_imports_neither_role_nor_the_top() -> None:
    # When the core's imports are read
    wrong = [
        str(imp) for imp in all_imports() if _is_core(imp.importer) and not _is_core(imp.imported)
    ]
    # Then they all stay inside the core
    assert wrong == []


def test_producers_and_worker_never_import_each_other() -> None:
    wrong = [
        str(imp)
        for imp in all_imports()
        if {_package(imp.importer), _package(imp.imported)} == {"worker", "producers"}
    ]
    assert wrong == []


def test_the_upstream_client_imports_nothing_else_of_the_worker() -> None:
    wrong = [
        str(imp)
        for imp in all_imports()
        if _within(imp.importer, "worker.upstream")
        and _package(imp.imported) == "worker"
        and not _within(imp.imported, "worker.upstream")
    ]
    assert wrong == []


def test_only_the_subswitch_cli_imports_cli_modules() -> None:
    wrong = [
        str(imp)
        for imp in all_imports()
        if imp.imported in CLI_MODULES and imp.importer not in CLI_IMPORTERS
    ]
    assert wrong == []


def test_no_first_party_import_hides_in_a_function() -> None:
    wrong = [str(imp) for imp in all_imports() if imp.in_function]
    assert wrong == []


def test_the_module_graph_has_no_cycle() -> None:
    # Given every module-level first-party import as an edge
    graph: dict[str, set[str]] = {name: set() for name in all_modules()}
    for imp in all_imports():
        if not imp.in_function:
            graph[imp.importer].add(imp.imported)
    # When the graph is searched for a cycle
    cycle = find_cycle(graph)
    # Then there is none
    assert cycle == [], " -> ".join(cycle)


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` as a path that ends where it starts, or ``[]``."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for succ in sorted(graph.get(node, ())):
            if state.get(succ) == 1:
                return [*path[path.index(succ) :], succ]
            if succ not in state and (found := visit(succ)):
                return found
        path.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return []


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),
    ],
)
def test_find_cycle_finds_cycles(graph: dict[str, set[str]], expected: list[str]) -> None:
    # Given a small graph, when a cycle is looked for, then exactly that one is found
    assert find_cycle(graph) == expected
