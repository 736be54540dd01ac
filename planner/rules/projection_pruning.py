"""Projection pruning: an LLM column that nothing downstream reads is never computed.

Fires on an LLM node that keeps every row (trait ``row_effect() == "keep"``) none of
whose written columns (value and error columns) is in ``ctx.required``: the columns
that the nodes above it and the final result read from it (each node says what it
needs from its children: trait ``required_from_child``; a ``drop`` or ``select`` at the
root or anywhere, a ``rename``, a SQL query whose columns are parsed by sqlglot). The
node is removed. Blocked as soon as anything reads one of its columns, or may read any
column (a selector such as ``pl.all()``, ``SELECT *``).

>>> import lazyllm
>>> from lazyllm.planner.optimizer import optimize
>>> f = lazyllm.from_dicts([{"x": 1}]).generate("y", lazyllm.TestModel(), prompt="{{ x }}")
>>> optimize(f.drop("y", "y_error").plan).plan.child.kind
'DataFrameSource'
>>> optimize(f.select("y").plan).plan.child.kind
'Generate'
"""

from __future__ import annotations

from typing import Any

from ..nodes import LLMNode, PlanNode

__all__ = ["rule"]


def rule(node: PlanNode, ctx: Any) -> PlanNode | None:
    if not node.is_llm or node.row_effect() != "keep" or not node.row_by_row() or ctx.required is None:
        return None  # an LLM filter changes the rows: never pruned
    if node.columns_written() & ctx.required:
        return None
    what = f"{node.kind.lower()} {node.column!r}" if isinstance(node, LLMNode) else node.kind.lower()
    ctx.note(f"{what} pruned: its output is never read")
    return node.children[0]
