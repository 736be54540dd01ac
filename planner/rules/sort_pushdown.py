"""Sort pushdown: a sort on columns no LLM node writes runs before the row-by-row nodes above it.

A node that keeps every input row, each from its own row (trait ``row_effect() ==
"keep"`` and ``row_by_row()``), commutes with a stable sort by keys it does not write:
sorting its input gives the same rows in the same order. Moved below the LLM work, a
``sort(...).head(n)`` becomes a top-k under the LLM nodes (limit pushdown then moves
the head below them), so only n rows are generated.

Fires on ``Sort`` with elementwise keys above such a node when every key column comes
unchanged from its input (a rename is undone in the keys). Blocked by keys that read
what the node writes (sorting by the generated text), by selectors, and above nodes
that drop rows or read other rows.

>>> import lazyllm
>>> from lazyllm.planner.optimizer import optimize
>>> f = lazyllm.from_dicts([{"x": 1}]).generate("y", lazyllm.TestModel(), prompt="{{ x }}")
>>> [n.kind for n in spine(optimize(f.sort("x").head(1).plan).plan)]
['Generate', 'Head', 'Sort', 'DataFrameSource']
>>> [n.kind for n in spine(optimize(f.sort("y").head(1).plan).plan)]
['Head', 'Sort', 'Generate', 'DataFrameSource']
"""

from __future__ import annotations

from typing import Any

from ..nodes import LLMNode, PlanNode, Sort, expr_columns, spine
from ._exprs import rename_columns

__all__ = ["rule"]


def rule(node: PlanNode, ctx: Any) -> PlanNode | None:
    if not isinstance(node, Sort) or not node.elementwise():
        return None
    below = node.child
    if below.row_effect() != "keep" or not below.row_by_row():
        return None
    reads = expr_columns(node.by)
    if reads is None:
        return None
    names = {c: below.source_column(c, 0) for c in reads}
    if any(v is None for v in names.values()):
        return None
    renames = {c: v for c, v in names.items() if v != c}
    by = tuple(rename_columns(e, renames) for e in node.by) if renames else node.by
    sort = Sort(children=(below.children[0],), by=by, descending=node.descending, nulls_last=node.nulls_last)
    what = f"{below.kind.lower()} {below.column!r}" if isinstance(below, LLMNode) else below.kind.lower()
    ctx.note(f"sort by {', '.join(str(e) for e in node.by)} moved below {what}")
    return below.with_children(sort)
