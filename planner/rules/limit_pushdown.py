"""Limit pushdown: ``head(n)`` runs before the row-by-row nodes above its input, so only n
rows reach the LLM.

Fires on ``Head`` directly above a node that keeps every input row, in order, each
from its own input row alone (trait ``row_effect() == "keep"`` and ``row_by_row()``: an
LLM node, a drop, a rename, an elementwise ``with_columns`` or ``select``): the first n
outputs come from the first n inputs. Two stacked heads merge into the smaller one.
Blocked above anything that can drop or reorder rows, or that reads other rows
(a filter, a sort, a join, ``with_columns(m=pl.col("x").mean())``).

When the head sits above row-by-row nodes that drop rows (polars or LLM filters) over
LLM work, it cannot move, but it switches to *waves*: the rows are processed in order,
a wave at a time, until n rows pass ("generate until n rows pass"), instead of for
every row. Waves run only when every node between the limit and the LLM work is
row-by-row (:func:`lazyllm.planner.nodes.wave_chain`): a predicate that needs other
rows (``x >= x.median()``) would see only a wave.

>>> import lazyllm
>>> from lazyllm.planner.optimizer import optimize
>>> f = lazyllm.from_dicts([{"x": i} for i in range(9)]).generate("y", lazyllm.TestModel(), prompt="{{ x }}")
>>> f.head(3).plan.kind, f.head(3).plan.child.kind
('Head', 'Generate')
>>> optimize(f.head(3).plan).plan.kind, optimize(f.head(3).plan).plan.child.kind
('Generate', 'Head')
"""

from __future__ import annotations

from typing import Any

from ..nodes import Head, LLMNode, PlanNode, wave_chain

__all__ = ["rule", "wave_chain"]


def rule(node: PlanNode, ctx: Any) -> PlanNode | None:
    if not isinstance(node, Head):
        return None
    below = node.child
    if isinstance(below, Head):
        ctx.note(f"head {node.n} merged with head {below.n}")
        return Head(children=(below.child,), n=min(node.n, below.n))
    if below.row_effect() != "keep" or not below.row_by_row():
        if not node.waves and wave_chain(below) is not None:
            ctx.note(f"head {node.n} above filtered LLM output: generate in waves until {node.n} rows pass")
            return Head(children=(below,), n=node.n, waves=True)
        return None
    what = f"{below.kind.lower()} {below.column!r}" if isinstance(below, LLMNode) else below.kind.lower()
    ctx.note(f"head {node.n} moved below {what}")
    return below.with_children(Head(children=(below.child,), n=node.n, waves=node.waves))
