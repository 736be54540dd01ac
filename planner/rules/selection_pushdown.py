"""Selection pushdown: row-selecting operations other than filters run before the LLM work.

A node that only selects rows of its input, in order, from the values of some columns
and the row count (trait ``selection_columns()``: ``unique(subset=...)`` with
``keep`` first/last/none, a semi or anti join on bare key columns, ``sample``, a
``split`` part) gives the same rows when it runs below an LLM node that keeps every
row, each from its own row, and writes none of those columns: the row count and the
key values are the same below it, and the LLM output of a kept row does not depend
on the other rows. The LLM then sees only the selected rows.

Fires on such a node directly above an LLM node (``is_llm``, ``row_effect() ==
"keep"``, ``row_by_row()``) that writes none of the selection columns. Blocked when a
key is LLM output (``unique(subset=["answer"])``), for ``unique()`` on every column or
``keep="any"``, for joins that add columns, and above LLM filters (they change the row
count a sample sees).

>>> import lazyllm
>>> from lazyllm.planner.optimizer import optimize
>>> f = lazyllm.from_dicts([{"x": 1}, {"x": 1}]).generate("y", lazyllm.TestModel(), prompt="{{ x }}")
>>> [n.kind for n in spine(optimize(f.unique(subset=["x"]).plan).plan)]
['Generate', 'Unique', 'DataFrameSource']
>>> [n.kind for n in spine(optimize(f.unique(subset=["y"]).plan).plan)]
['Unique', 'Generate', 'DataFrameSource']
"""

from __future__ import annotations

from typing import Any

from ..nodes import LLMNode, PlanNode, spine

__all__ = ["rule"]


def rule(node: PlanNode, ctx: Any) -> PlanNode | None:
    keys = node.selection_columns()
    if keys is None or not node.children:
        return None
    below = node.children[0]
    if not below.is_llm or below.row_effect() != "keep" or not below.row_by_row():
        return None
    if keys & below.columns_written() or not keys <= set(below.children[0].columns):
        return None
    what = f"{below.kind.lower()} {below.column!r}" if isinstance(below, LLMNode) else below.kind.lower()
    ctx.note(f"{node.kind.lower()} moved below {what}")
    return below.with_children(node.with_children(below.children[0], *node.children[1:]))
