"""Predicate pushdown: a polars filter that reads no LLM-produced column runs before the LLM.

Fires on ``Filter`` directly above a row-local node (an LLM node, a drop, a rename,
a select of bare columns),
an LLM filter (two filters commute) or a stable sort, when the predicate reads none
of the columns that node writes: filtering first gives the same rows in the same
order, and the LLM sees fewer rows.
Blocked when the predicate reads a column the node produces (for example a filter
on the generated answer), and when it is not elementwise (``x > x.mean()`` depends on
which rows are present, so it may not cross an LLM filter).

>>> import polars as pl, lazyllm
>>> from lazyllm.planner.optimizer import optimize
>>> f = lazyllm.from_dicts([{"x": 1}]).generate("y", lazyllm.TestModel(), prompt="{{ x }}")
>>> [type(n).__name__ for n in _chain(optimize(f.filter(pl.col("x") > 0).plan).plan)]
['Generate', 'Filter', 'DataFrameSource']
>>> [type(n).__name__ for n in _chain(optimize(f.filter(pl.col("y") != "").plan).plan)]
['Filter', 'Generate', 'DataFrameSource']
"""

from __future__ import annotations

from typing import Any

from ..nodes import Drop, Filter, LLMNode, PlanNode, Rename, Select, Sort, is_elementwise


def _chain(node: PlanNode) -> list[PlanNode]:
    out = [node]
    while node.children:
        node = node.children[0]
        out.append(node)
    return out


def rule(node: PlanNode, ctx: Any) -> PlanNode | None:
    if not isinstance(node, Filter):
        return None
    below = node.child
    reads = node.columns_read()
    if reads is None:
        return None  # a selector may read any column, including LLM output
    if not is_elementwise([node.predicate]):
        return None  # an aggregate or window (x > x.mean()) would see other rows below
    if isinstance(below, Rename):
        if reads & {new for _, new in below.mapping}:
            return None
    elif isinstance(below, (LLMNode, Drop)):
        if reads & below.columns_written():
            return None
    elif isinstance(below, Select):
        if not below.is_projection():
            return None  # computed columns: the predicate may read them
    elif not isinstance(below, Sort):
        return None
    pushed = Filter(children=(below.child,), predicate=node.predicate)
    ctx.note(f"filter {node.predicate} moved below {_label(below)}")
    return below.with_children(pushed)


def _label(node: PlanNode) -> str:
    if isinstance(node, LLMNode):
        return "llm filter" if node.filters_rows else f"{node.kind.lower()} {node.column!r}"
    return node.kind.lower()
