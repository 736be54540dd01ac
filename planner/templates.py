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
import polars as pl
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lazyllm.core.errors import ColumnNotFoundError, TemplateError

__all__ = ["PromptTemplate", "check_columns", "render_column"]

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


def _concat_parts(ast: nodes.Template) -> tuple[tuple[bool, str], ...] | None:
    """The template as literal text and variable lookups (``(is_variable, text or name)``), or
    None when it does anything else (filters, tests, conditionals, attribute lookups, constants)."""
    parts: list[tuple[bool, str]] = []
    for out in ast.body:
        if not isinstance(out, nodes.Output):
            return None
        for node in out.nodes:
            if type(node) is nodes.TemplateData:
                parts.append((False, node.data))  # the lexer already applied the whitespace settings
            elif type(node) is nodes.Name and node.ctx == "load":
                parts.append((True, node.name))
            else:
                return None
    return tuple(parts)


@functools.lru_cache(maxsize=1024)
def _concat(source: str) -> tuple[tuple[bool, str], ...] | None:
    return _concat_parts(_ENV.parse(source))


#: Column types whose Jinja rendering (``str(value)``) is polars' cast to String.
_EXACT_STRING_CASTS = (pl.String, pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64)


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


def render_column(template: PromptTemplate, df: pl.DataFrame, columns: Mapping[str, str]) -> pl.Series | None:
    """Render ``template`` for every row of ``df`` at once with polars, or None when it cannot.

    Only a template that is a plain concatenation of literal text and variables (no
    filters, tests, conditionals or attribute lookups: decided from its Jinja2 AST), over
    columns whose Jinja rendering ``str(value)`` is polars' cast to String (String and
    integer columns), is rendered here; the output is then identical to
    :meth:`PromptTemplate.render` row by row. A row with a null input renders to null
    (such a row sends no request: the null-input rule).

    Parameters
    ----------
    template : PromptTemplate
    df : polars.DataFrame
        The rows; one output value per row.
    columns : mapping of str to str
        Template variable -> column of ``df`` (aliases included).

    Cost: one polars ``concat_str`` over the columns (no Python per row).

    >>> df = pl.DataFrame({"q": ["Why?", None], "n": [1, 2]})
    >>> render_column(PromptTemplate.parse("Q{{ n }}: {{ q }}"), df, {"q": "q", "n": "n"}).to_list()
    ['Q1: Why?', None]
    >>> render_column(PromptTemplate.parse("{{ q | upper }}"), df, {"q": "q"}) is None
    True
    """
    parts = _concat(template.source)
    if parts is None:
        return None
    exprs: list[pl.Expr] = []
    for is_var, text in parts:
        if not is_var:
            exprs.append(pl.lit(text, dtype=pl.String))
            continue
        col = columns.get(text)
        if col is None or col not in df.columns or not isinstance(df.schema[col], _EXACT_STRING_CASTS):
            return None
        exprs.append(pl.col(col).cast(pl.String))
    if not any(is_var for is_var, _ in parts):  # literal text only: the same prompt on every row
        return pl.Series("rendered", ["".join(text for _, text in parts)], dtype=pl.String).new_from_index(0, df.height)
    return df.select(pl.concat_str(exprs, ignore_nulls=False).alias("rendered")).to_series()


def check_columns(columns: Iterable[str], existing: Iterable[str], *, where: str) -> None:
    """Raise ColumnNotFoundError when ``columns`` are not all in ``existing``."""
    existing = list(existing)
    missing = set(columns) - set(existing)
    if missing:
        raise ColumnNotFoundError(missing, existing, where=where)
