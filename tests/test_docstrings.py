"""Public names carry numpydoc docstrings: every name in ``lazyllm.__all__`` and every public
method or property of :class:`lazyllm.Frame` has a docstring; a callable that takes parameters
has a ``Parameters`` section (a class may document them on the class); a function or method
that returns a value has ``Returns`` (properties say it in their summary)."""

from __future__ import annotations

import inspect

import pytest

import lazyllm

SECTION = "{}\n{}"


def _sections(doc: str) -> set[str]:
    lines = inspect.cleandoc(doc).splitlines()
    return {lines[i].strip() for i in range(len(lines) - 1)
            if lines[i + 1].strip() and set(lines[i + 1].strip()) == {"-"} and lines[i].strip()}


def problems(name: str, obj: object) -> list[str]:
    """What the docstring of ``obj`` lacks (empty: nothing)."""
    doc = inspect.getdoc(obj)
    if not doc:
        return [f"{name}: no docstring"]
    if isinstance(obj, property) or inspect.ismodule(obj) or not callable(obj):
        return []
    sections = _sections(doc)
    out = []
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        params = [p for p in inspect.signature(target).parameters.values() if p.name not in ("self", "cls")]
    except (TypeError, ValueError):
        params = []
    if params and not ({"Parameters", "Attributes"} & sections):
        out.append(f"{name}: takes parameters but has no Parameters section")
    if not inspect.isclass(obj):
        ret = inspect.signature(obj).return_annotation
        if ret not in (inspect.Signature.empty, None, "None") and "Returns" not in sections \
                and "Yields" not in sections:
            out.append(f"{name}: returns a value but has no Returns section")
    return out


def public_names() -> list[tuple[str, object]]:
    names = [(f"lazyllm.{n}", getattr(lazyllm, n)) for n in lazyllm.__all__ if not isinstance(getattr(lazyllm, n), str)]
    for attr, value in vars(lazyllm.Frame).items():
        if not attr.startswith("_"):
            names.append((f"Frame.{attr}", value))
    return names


@pytest.mark.parametrize("name,obj", public_names(), ids=lambda v: v if isinstance(v, str) else "")
def test_public_docstrings_are_numpydoc(name, obj):
    assert problems(name, obj) == []


def test_the_check_catches_a_bare_docstring():
    def bare(x: int) -> int:
        """Double x."""
        return 2 * x

    def undocumented(x):
        return x

    assert problems("bare", bare) == ["bare: takes parameters but has no Parameters section",
                                      "bare: returns a value but has no Returns section"]
    assert problems("undocumented", undocumented) == ["undocumented: no docstring"]
