"""Jinja2 prompt templates: parsing, the columns a template reads, rendering.

Templates run in Jinja2's immutable sandbox with ``StrictUndefined``: a template that
names a missing column fails at plan time (the columns are found from the AST with
``jinja2.meta.find_undeclared_variables``), never by silently rendering an empty string.

>>> t = PromptTemplate.parse("Q: {{ question }} ({{ meta.source }})")
>>> sorted(t.columns)
['meta', 'question']
>>> t.render({"question": "Why?", "meta": {"source": "docs"}})
'Q: Why? (docs)'

A template that handles a missing value itself (Jinja's ``default`` filter, an ``if``, a
test such as ``is none``) says so in ``null_safe``; the executor sends no request for a
row whose other variables are null:

>>> sorted(PromptTemplate.parse("{{ a | default('?') }} {% if b %}{{ b }}{% endif %} {{ c }}").null_safe)
['a', 'b']
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
import jinja2.meta
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lazyllm.backends.errors import ColumnNotFoundError, TemplateError

__all__ = ["PromptTemplate", "check_columns"]

_ENV = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)


def _null_safe(ast: nodes.Template) -> frozenset[str]:
    """Variables the template tests or defaults itself (so a null value is intended input)."""
    guarded: list[nodes.Node] = []
    for f in ast.find_all(nodes.Filter):
        if f.name in ("default", "d") and f.node is not None:
            guarded.append(f.node)
    for t in ast.find_all(nodes.Test):
        guarded.append(t.node)
    for cond in ast.find_all((nodes.If, nodes.CondExpr)):
        guarded.append(cond.test)
    names: set[str] = set()
    for g in guarded:
        if isinstance(g, nodes.Name):
            names.add(g.name)
        names.update(n.name for n in g.find_all(nodes.Name))
    return frozenset(names)


@functools.lru_cache(maxsize=1024)
def _compile(source: str) -> tuple[jinja2.Template, frozenset[str], frozenset[str]]:
    try:
        ast = _ENV.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(
            f"Prompt template does not parse: {exc.message} (line {exc.lineno}). Template: {source!r}. "
            "Fix the Jinja2 syntax, for example '{{ column }}' to insert a column."
        ) from None
    columns = frozenset(jinja2.meta.find_undeclared_variables(ast))
    return _ENV.from_string(source), columns, _null_safe(ast) & columns


@dataclass(frozen=True, slots=True)
class PromptTemplate:
    """A parsed Jinja2 template over one row's columns."""

    source: str
    columns: frozenset[str]
    null_safe: frozenset[str] = frozenset()  # variables the template handles when null

    @classmethod
    def parse(cls, source: str) -> "PromptTemplate":
        if not isinstance(source, str):
            raise TemplateError(f"A prompt template must be a string, got {type(source).__name__}.")
        _, columns, null_safe = _compile(source)
        return cls(source, columns, null_safe)

    def render(self, row: Mapping[str, Any]) -> str:
        """Render with one row (a mapping column -> value). Raises TemplateError on failure."""
        template, _, _ = _compile(self.source)
        try:
            return template.render(**row)
        except jinja2.UndefinedError as exc:
            raise TemplateError(f"Rendering failed: {exc.message}.") from None
        except jinja2.TemplateError as exc:
            raise TemplateError(f"Rendering failed: {exc}.") from None


def check_columns(columns: Iterable[str], existing: Iterable[str], *, where: str) -> None:
    """Raise ColumnNotFoundError when ``columns`` are not all in ``existing``."""
    existing = list(existing)
    missing = set(columns) - set(existing)
    if missing:
        raise ColumnNotFoundError(missing, existing, where=where)
