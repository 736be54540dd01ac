"""Every install hint names something that exists: each ``MissingDependencyError`` raised in
the code names a pyproject extra that exists (or a script of this checkout), and every error
class lazyllm raises is in ``lazyllm.errors``."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import lazyllm.errors
from lazyllm.backends import registry

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("lazyllm", "planner", "backends") for p in (ROOT / d).rglob("*.py")]


def _extras() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def test_install_hints_name_extras_and_scripts_that_exist():
    extras = _extras()
    named = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "MissingDependencyError" \
                    and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
                named.append((path.name, node.args[1].value))
    assert len(named) >= 5  # the scan finds the hints (it would pass vacuously otherwise)
    for where, hint in named:
        if " " in hint or "/" in hint:  # a command: its script must exist in this checkout
            script = next(part for part in hint.split() if part.startswith("scripts/"))
            assert (ROOT / script).is_file(), (where, hint)
        else:
            assert hint in extras, (where, hint)
    for module, extra in registry._EXTRA_FOR_MODULE.items():
        assert extra in extras or (ROOT / extra.split()[-1]).is_file(), (module, extra)


def test_every_error_class_raised_is_in_lazyllm_errors():
    public = {name for name in lazyllm.errors.__all__}
    raised = set()
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                name = getattr(node.exc.func, "id", None) or getattr(node.exc.func, "attr", None)
                if name and name.endswith("Error") and name[0].isupper() and name not in (
                        "ValueError", "TypeError", "RuntimeError", "KeyError", "ImportError", "AssertionError",
                        "NotImplementedError", "FileNotFoundError", "OSError", "AttributeError"):
                    raised.add(name)
    assert {"PlanError", "ParameterError", "EngineError", "MissingDependencyError"} <= raised
    assert raised <= public, raised - public
