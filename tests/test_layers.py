"""The architecture holds: one direction of imports between the layers, no cycles.

lazyllm's layers, lowest first (``lazyllm/core/__init__.py`` says which owns what):

0. ``lazyllm.core``: the ground floor of contracts (errors, protocols, specs, hashing,
   model store, workspace layout);
1. ``lazyllm.backends``: engines, trainers, executors;
2. ``lazyllm.planner``: plan nodes, optimizer, executor, cache;
3. the rest of ``lazyllm``: Frame, io, cards, hub, cli, examples.

The test reads every module of the installed packages with :mod:`ast` (module-level
imports and imports inside functions alike; imports under ``if TYPE_CHECKING:`` never
run and are skipped) and fails on an import from a lower layer to a higher one, on an
import cycle between modules, on a lazyllm module imported inside a function (deferred
imports are kept for heavy optional packages only: torch, transformers, vllm, ray, trl),
and on the planner importing a concrete engine, trainer or executor (it finds them
through :mod:`lazyllm.backends.registry`).
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

LAYERS = ("lazyllm.core", "lazyllm.backends", "lazyllm.planner", "lazyllm")
#: concrete implementations the planner must not import (it asks the registry)
CONCRETE = ("lazyllm.backends.transformers", "lazyllm.backends.vllm_engine", "lazyllm.backends.vllm_worker",
            "lazyllm.backends.openai_api", "lazyllm.backends.testing", "lazyllm.backends.trainers",
            "lazyllm.backends.distributed", "lazyllm.backends.launch")


def layer(module: str) -> int:
    return next(i for i, prefix in enumerate(LAYERS) if module == prefix or module.startswith(prefix + "."))


def package_modules() -> dict[str, Path]:
    """Every module of the installed ``lazyllm`` packages (``lazyllm.planner`` and
    ``lazyllm.backends`` live in their own folders), name -> file."""
    found: dict[str, Path] = {}
    for package in ("lazyllm", "lazyllm.planner", "lazyllm.backends"):
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.submodule_search_locations, package
        root = Path(next(iter(spec.submodule_search_locations)))
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if parts and parts[0] in ("planner", "backends") and package == "lazyllm":
                continue  # a source checkout has them as siblings, not inside lazyllm/
            found[".".join([package, *parts])] = path
    return found


class _Imports(ast.NodeVisitor):
    """(target, deferred) for each import of a module, skipping ``if TYPE_CHECKING:``."""

    def __init__(self, name: str, is_package: bool) -> None:
        self.name, self.is_package = name, is_package
        self.depth = 0
        self.found: list[tuple[str, bool, int]] = []

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def _scope(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _scope

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append((alias.name, self.depth > 0, node.lineno))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.name.split(".") if self.is_package else self.name.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        self.found.append((module, self.depth > 0, node.lineno))
        for alias in node.names:  # "from package import module"
            self.found.append((f"{module}.{alias.name}", self.depth > 0, node.lineno))


def import_graph(modules: dict[str, Path]) -> dict[str, list[tuple[str, bool, int]]]:
    """module -> [(imported lazyllm module, deferred, line)], resolved to known modules."""
    graph: dict[str, list[tuple[str, bool, int]]] = {}
    for name, path in modules.items():
        visitor = _Imports(name, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(encoding="utf-8")))
        edges = []
        for target, deferred, line in visitor.found:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and target != "lazyllm":  # the package itself re-exports
                edges.append((target, deferred, line))
        graph[name] = edges
    return graph


def upward_imports(graph: dict[str, list[tuple[str, bool, int]]]) -> list[str]:
    return [f"{a}:{line} imports {b} (layer {layer(b)} above layer {layer(a)})"
            for a, edges in graph.items() for b, _, line in edges if layer(b) > layer(a)]


def cycles(graph: dict[str, list[tuple[str, bool, int]]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _, _ in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph():
    modules = package_modules()
    assert {"lazyllm.core.errors", "lazyllm.planner.executor", "lazyllm.backends.transformers",
            "lazyllm.frame"} <= set(modules)
    return import_graph(modules)


def test_no_import_from_a_lower_layer_to_a_higher_one(graph):
    assert upward_imports(graph) == []


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_no_deferred_imports_of_lazyllm_modules(graph):
    deferred = [f"{a}:{line} imports {b} inside a function" for a, edges in graph.items()
                for b, is_deferred, line in edges if is_deferred]
    assert deferred == []


def test_the_planner_imports_no_concrete_backend(graph):
    bad = [f"{a}:{line} imports {b}" for a, edges in graph.items() if layer(a) == 2
           for b, _, line in edges if b in CONCRETE]
    assert bad == []


def test_the_checks_catch_what_they_look_for():
    """The checkers themselves fail on a graph that breaks the rules (a test that could not fail
    would prove nothing)."""
    bad = {
        "lazyllm.backends.x": [("lazyllm.planner.y", True, 3)],
        "lazyllm.planner.y": [("lazyllm.backends.x", False, 1)],
        "lazyllm.core.z": [],
    }
    assert upward_imports(bad) == ["lazyllm.backends.x:3 imports lazyllm.planner.y (layer 2 above layer 1)"]
    assert cycles(bad) == [["lazyllm.backends.x", "lazyllm.planner.y"]]
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import A\ndef f():\n    from .b import B\n"
    visitor = _Imports("lazyllm.planner.m", False)
    visitor.visit(ast.parse(source))
    assert ("lazyllm.planner.a", False, 3) not in visitor.found
    assert ("lazyllm.planner.b", True, 5) in visitor.found
