"""SQL predicate pushdown: simple conjuncts of a ``sql()`` query's WHERE clause become a
polars filter under the query, so they move below LLM nodes like any filter.

``frame.sql("SELECT ... FROM self WHERE grp = 1")`` is then as cheap as
``frame.filter(pl.col("grp") == 1)``: predicate pushdown carries the filter below the
LLM work it does not read (Hellerstein & Stonebraker, "Predicate Migration", SIGMOD
1993). The query is parsed by sqlglot; a moved conjunct is removed from the query.

Fires on a one-input ``SQL`` node whose query is a single ``SELECT ... FROM <its
table>`` (no join, CTE or set operation) with a WHERE clause, for the conjuncts of the
forms whose meaning is the same in DuckDB and polars: ``column <op> literal`` (=, <>,
<, <=, >, >=; a number against a numeric column, a string against a String column),
``column IN (literals)``, ``column IS [NOT] NULL``, ``column LIKE 'prefix%'``,
``'%suffix'``, ``'%infix%'``. Blocked for anything else (functions, arithmetic,
subqueries, ORs, several tables), which stays in the query.

>>> import lazyllm
>>> from lazyllm.planner.optimizer import optimize
>>> f = lazyllm.from_dicts([{"x": 1, "t": "a"}]).generate("y", lazyllm.TestModel(), prompt="{{ t }}")
>>> plan = optimize(f.sql("SELECT x, y FROM self WHERE x > 0 AND length(y) > 2").plan).plan
>>> [n.kind for n in spine(plan)], plan.query
(['SQL', 'Generate', 'Filter', 'DataFrameSource'], 'SELECT x, y FROM self WHERE LENGTH(y) > 2')
"""

from __future__ import annotations

import re
from typing import Any

import polars as pl
from sqlglot import exp

from ..nodes import Filter, PlanNode, SQL, spine
from ._exprs import conjoin

__all__ = ["rule"]

_COMPARE = {exp.EQ: "eq", exp.NEQ: "ne", exp.GT: "gt", exp.GTE: "ge", exp.LT: "lt", exp.LTE: "le"}
_FLIP = {"gt": "lt", "ge": "le", "lt": "gt", "le": "ge", "eq": "eq", "ne": "ne"}


def _literal(node: exp.Expression, dtype: pl.DataType) -> Any:
    """The Python value of a literal that fits ``dtype`` (raises ValueError otherwise)."""
    if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal) and not node.this.is_string:
        return -_literal(node.this, dtype)
    if not isinstance(node, exp.Literal):
        raise ValueError("not a literal")
    if node.is_string:
        if dtype != pl.String:
            raise ValueError("a string against a non-string column")
        return node.this
    if not dtype.is_numeric():
        raise ValueError("a number against a non-numeric column")
    text = node.this
    return int(text) if re.fullmatch(r"\d+", text) else float(text)


def _translate(cond: exp.Expression, columns: dict[str, tuple[str, pl.DataType]], table: str) -> pl.Expr | None:
    """The polars expression of one WHERE conjunct, when its meaning is the same (else None)."""

    def column(node: exp.Expression) -> tuple[str, pl.DataType] | None:
        if not isinstance(node, exp.Column) or (node.table and node.table.lower() != table):
            return None
        return columns.get(node.name.lower())

    try:
        for kind, op in _COMPARE.items():
            if type(cond) is kind:
                left, right = column(cond.this), column(cond.expression)
                if left is not None and right is None:
                    return getattr(pl.col(left[0]), op)(_literal(cond.expression, left[1]))
                if right is not None and left is None:
                    return getattr(pl.col(right[0]), _FLIP[op])(_literal(cond.this, right[1]))
                return None
        if isinstance(cond, exp.In) and not cond.args.get("query") and not cond.args.get("unnest"):
            col = column(cond.this)
            if col is None or not cond.expressions:
                return None
            return pl.col(col[0]).is_in([_literal(v, col[1]) for v in cond.expressions])
        if isinstance(cond, exp.Is) and isinstance(cond.expression, exp.Null):
            col = column(cond.this)
            return None if col is None else pl.col(col[0]).is_null()
        if isinstance(cond, exp.Not) and isinstance(cond.this, exp.Is) and isinstance(cond.this.expression, exp.Null):
            col = column(cond.this.this)
            return None if col is None else pl.col(col[0]).is_not_null()
        if isinstance(cond, exp.Like) and not cond.args.get("escape"):
            col = column(cond.this)
            pattern = cond.expression
            if col is None or col[1] != pl.String or not isinstance(pattern, exp.Literal) or not pattern.is_string:
                return None
            text = pattern.this
            core = text.strip("%")
            if "%" in core or "_" in text or "\\" in text:
                return None
            c = pl.col(col[0])
            if text == core:
                return c == core
            if text == core + "%":
                return c.str.starts_with(core)
            if text == "%" + core:
                return c.str.ends_with(core)
            return c.str.contains(core, literal=True)
    except ValueError:
        return None
    return None


def rule(node: PlanNode, ctx: Any) -> PlanNode | None:
    if not isinstance(node, SQL) or len(node.children) != 1:
        return None
    tree = node.tree()
    if not isinstance(tree, exp.Select) or tree.args.get("with") or tree.args.get("joins"):
        return None
    source = tree.args.get("from") or tree.args.get("from_")
    table = node.names[0].lower()
    if source is None or not isinstance(source.this, exp.Table) or source.this.name.lower() != table:
        return None
    alias = source.this.alias_or_name.lower()
    where = tree.args.get("where")
    if where is None:
        return None
    child = node.child
    columns: dict[str, tuple[str, pl.DataType]] = {}
    for name, dtype in child.schema().items():
        if name.lower() in columns:
            return None  # names that differ only in case: DuckDB's match is ambiguous
        columns[name.lower()] = (name, dtype)
    parts = list(where.this.flatten()) if isinstance(where.this, exp.And) else [where.this]
    parts = [p.unnest() for p in parts]
    moved, kept = [], []
    for part in parts:
        expr = _translate(part, columns, alias)
        (kept if expr is None else moved).append((part, expr))
    if not moved:
        return None
    new = tree.copy()
    if kept:
        new.set("where", exp.Where(this=exp.and_(*[p.copy() for p, _ in kept])))
    else:
        new.set("where", None)
    query = new.sql(dialect="duckdb")
    pushed = Filter(children=(child,), predicate=conjoin([e for _, e in moved]))
    ctx.note(f"sql WHERE {' AND '.join(p.sql(dialect='duckdb') for p, _ in moved)} became a filter under the query")
    return SQL(children=(pushed,), query=query, names=node.names)
