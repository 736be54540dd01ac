"""Derivation pushdown: a cheap ``with_columns`` that reads no LLM output runs before the LLM node.

Columns derived from input columns (``big=pl.col("len") > 90``) do not depend on what
an LLM node adds, so they may be computed first; a filter on them can then move below
the LLM node too (predicate migration, Hellerstein & Stonebraker, SIGMOD 1993: the
cheap work goes below the expensive row-local map). A bare-column ``select`` above
the LLM node puts the columns back in their order.

Also fires above a select of bare columns (the select then keeps the new columns too),
so a chain of ``with_columns`` reaches the LLM node one after the other; and on a
``select`` whose computed, elementwise columns read only input columns and take new
names: they are computed below the LLM node and the select picks them by name.

Fires on ``with_columns`` directly above an LLM node with one input
(``is_llm``, ``row_by_row()``) when the expressions read none of the columns the LLM node
writes and write none it reads or writes; an expression that reads other rows
(``pl.col("x").mean()``) moves only below an LLM node that keeps every row. Blocked
otherwise (a derivation of the generated text stays above it).

>>> import polars as pl, lazyllm
>>> from lazyllm.planner.optimizer import optimize
>>> f = lazyllm.from_dicts([{"x": 1}]).generate("y", lazyllm.TestModel(), prompt="{{ x }}")
>>> [n.kind for n in spine(optimize(f.with_columns(big=pl.col("x") > 0).plan).plan)]
['Select', 'Generate', 'WithColumns', 'DataFrameSource']
>>> [n.kind for n in spine(optimize(f.with_columns(n=pl.col("y").str.len_chars()).plan).plan)]
['WithColumns', 'Generate', 'DataFrameSource']
"""

from __future__ import annotations

from typing import Any

import polars as pl

from ..nodes import LLMNode, PlanNode, Select, WithColumns, expr_columns, is_elementwise, spine

__all__ = ["rule"]


def _select_over_llm(node: Select, ctx: Any) -> PlanNode | None:
    """A select computing columns from input columns above an LLM node: the computation
    moves below it as a ``with_columns``, the select keeps picking the columns by name."""
    below = node.child
    computed = [e for e in node.exprs if not e.meta.is_column()]
    if not computed or not below.is_llm or not below.row_by_row() or not is_elementwise(list(node.exprs)):
        return None
    base = below.children[0]
    read = expr_columns(computed)
    names = [e.meta.output_name() for e in computed]
    taken = set(base.columns) | (below.columns_read() or frozenset()) | below.columns_written()
    if read is None or read & below.columns_written() or not read <= set(base.columns) or set(names) & taken:
        return None
    lowered = below.with_children(WithColumns(children=(base,), exprs=tuple(computed)))
    what = f"{below.kind.lower()} {below.column!r}" if isinstance(below, LLMNode) else below.kind.lower()
    ctx.note(f"select's computed columns {', '.join(names)} moved below {what}")
    return Select(children=(lowered,), exprs=tuple(pl.col(e.meta.output_name()) for e in node.exprs))


def rule(node: PlanNode, ctx: Any) -> PlanNode | None:
    if isinstance(node, Select):
        return _select_over_llm(node, ctx)
    if not isinstance(node, WithColumns):
        return None
    below = node.child
    if isinstance(below, Select) and below.is_projection() and node.columns_read() is not None:
        # through a bare-column select (one left by an earlier move): the select keeps the new columns
        moved = Select(children=(WithColumns(children=(below.child,), exprs=node.exprs),),
                       exprs=tuple(pl.col(c) for c in node.columns))
        ctx.note(f"with_columns {', '.join(sorted(node.columns_written() or ()))} moved below select")
        return moved
    if not below.is_llm or not below.row_by_row():
        return None
    read, written = node.columns_read(), node.columns_written()
    if read is None or written is None:
        return None  # a selector: the columns are known only at run time
    if not node.elementwise() and below.row_effect() != "keep":
        return None  # x.mean() over the rows an LLM filter keeps differs from all rows
    base = below.children[0]
    if read & below.columns_written() or not read <= set(base.columns):
        return None
    if written & (below.columns_read() or frozenset()) or written & below.columns_written():
        return None
    moved = below.with_children(WithColumns(children=(base,), exprs=node.exprs))
    order = node.columns
    out = moved if moved.columns == order else Select(children=(moved,), exprs=tuple(pl.col(c) for c in order))
    what = f"{below.kind.lower()} {below.column!r}" if isinstance(below, LLMNode) else below.kind.lower()
    ctx.note(f"with_columns {', '.join(sorted(written))} moved below {what}")
    return out
