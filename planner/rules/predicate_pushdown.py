"""Predicate pushdown: each conjunct of a polars filter runs as far down as its columns allow.

The placement of predicates below expensive row-local work (Hellerstein & Stonebraker,
"Predicate Migration: Optimizing Queries with Expensive Predicates", SIGMOD 1993): an
LLM node is an expensive row-local map, and a cheap predicate that reads none of the
columns it adds gives the same rows when it runs first, on fewer rows.

Fires on a ``Filter`` whose predicate is elementwise (trait ``elementwise()``). The
predicate is split into its conjuncts (``a & b``; stacked filters are conjunctions
too), and each conjunct moves on its own into the children the node below offers
(trait ``filter_routes()``: one input of a row-by-row node or a sort, every input of a
vertical concat, the matching side of a join, a unique on its key columns, an explode
of other columns) when every column it reads comes unchanged from there (trait
``source_column()``; a rename is undone in the moved predicate). A filter merges with
the filter below it only when one of its conjuncts can then move further (filters
never just swap).

Blocked when the predicate is not elementwise (``x >= x.median()`` depends on which
rows are present: it never moves), when a conjunct reads a column the node below
writes (a filter on the generated answer), and below nodes that pick rows by position
(head, sample) or read other rows.

>>> import polars as pl, lazyllm
>>> from lazyllm.planner.optimizer import optimize
>>> f = lazyllm.from_dicts([{"x": 1}]).generate("y", lazyllm.TestModel(), prompt="{{ x }}")
>>> [n.kind for n in spine(f.filter((pl.col("x") > 0) & (pl.col("y") != "")).plan)]
['Filter', 'Generate', 'DataFrameSource']
>>> [n.kind for n in spine(optimize(f.filter((pl.col("x") > 0) & (pl.col("y") != "")).plan).plan)]
['Filter', 'Generate', 'Filter', 'DataFrameSource']
>>> [n.kind for n in spine(optimize(f.filter(pl.col("x") >= pl.col("x").median()).plan).plan)]
['Filter', 'Generate', 'DataFrameSource']
"""

from __future__ import annotations

from typing import Any

import polars as pl

from ..nodes import Filter, LLMNode, PlanNode, expr_columns, spine
from ._exprs import conjoin, conjuncts, rename_columns

__all__ = ["rule"]


def _route(conjunct: pl.Expr, below: PlanNode) -> dict[int, pl.Expr] | None:
    """Child index -> the conjunct rewritten for that child, for the first route it can take."""
    reads = expr_columns([conjunct])
    if reads is None:
        return None
    for route in below.filter_routes():
        moved: dict[int, pl.Expr] = {}
        for i in route:
            names = {c: below.source_column(c, i) for c in reads}
            if any(v is None for v in names.values()):
                break
            renames = {c: v for c, v in names.items() if v != c}
            moved[i] = rename_columns(conjunct, renames) if renames else conjunct
        else:
            return moved
    return None


def rule(node: PlanNode, ctx: Any) -> PlanNode | None:
    if not isinstance(node, Filter) or not node.elementwise() or node.columns_read() is None:
        return None
    below = node.child
    if isinstance(below, Filter):
        # stacked filters are one conjunction: merged when a conjunct of the upper one can go
        # further down than the lower one (then it splits again below); never just swapped
        if not below.elementwise() or below.columns_read() is None:
            return None
        under = below.child
        while isinstance(under, Filter) and under.elementwise() and under.columns_read() is not None:
            under = under.child  # the whole stack of filters is one conjunction
        if not any(_route(part, under) for part in conjuncts(node.predicate)):
            return None
        ctx.note(f"filter {node.predicate} merged with the filter below into one conjunction")
        return Filter(children=(below.child,), predicate=conjoin(conjuncts(below.predicate) + conjuncts(node.predicate)))
    stay: list[pl.Expr] = []
    moving: list[pl.Expr] = []
    moved: dict[int, list[pl.Expr]] = {}
    for part in conjuncts(node.predicate):
        target = _route(part, below)
        if target is None:
            stay.append(part)
            continue
        moving.append(part)
        for i, expr in target.items():
            moved.setdefault(i, []).append(expr)
    if not moved:
        return None
    children = list(below.children)
    for i, exprs in moved.items():
        children[i] = Filter(children=(children[i],), predicate=conjoin(exprs))
    out = below.with_children(*children)
    ctx.note(f"filter {_text(moving)} moved below {_label(below)}" + (f" (kept above: {_text(stay)})" if stay else ""))
    return Filter(children=(out,), predicate=conjoin(stay)) if stay else out


def _text(exprs: list[pl.Expr]) -> str:
    return " & ".join(str(e) for e in exprs)


def _label(node: PlanNode) -> str:
    if isinstance(node, LLMNode):
        return "llm filter" if node.filters_rows else f"{node.kind.lower()} {node.column!r}"
    return node.kind.lower()
