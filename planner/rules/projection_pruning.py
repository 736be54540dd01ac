"""Projection pruning: an LLM column that nothing downstream reads is never computed.

Fires on an LLM node whose output column and error column are not in
``ctx.required`` (the columns the nodes above it and the final result read from it):
the node is removed. Blocked as soon as anything reads either column.

>>> import lazyllm
>>> from lazyllm.planner.optimizer import optimize
>>> f = lazyllm.from_dicts([{"x": 1}]).generate("y", lazyllm.TestModel(), prompt="{{ x }}")
>>> optimize(f.select("x").plan).plan.child.kind
'DataFrameSource'
>>> optimize(f.select("y").plan).plan.child.kind
'Generate'
"""

from __future__ import annotations

from typing import Any

from ..nodes import LLMNode, PlanNode


def rule(node: PlanNode, ctx: Any) -> PlanNode | None:
    if not isinstance(node, LLMNode) or node.filters_rows or ctx.required is None:
        return None  # an LLM filter changes the rows: never pruned
    if node.columns_written() & ctx.required:
        return None
    ctx.note(f"{node.kind.lower()} {node.column!r} pruned: its output is never read")
    return node.child
