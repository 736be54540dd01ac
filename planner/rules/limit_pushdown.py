"""Limit pushdown: ``head(n)`` runs before row-local LLM nodes, so only n rows are generated.

Fires on ``Head`` directly above a row-local node (an LLM node, drop, rename): that
node keeps one output row per input row in order, so the first n outputs come from
the first n inputs. Two stacked heads merge into the smaller one. Blocked above
anything that can drop or reorder rows (a filter, a sort, a join).

>>> import lazyllm
>>> from lazyllm.planner.optimizer import optimize
>>> f = lazyllm.from_dicts([{"x": i} for i in range(9)]).generate("y", lazyllm.TestModel(), prompt="{{ x }}")
>>> optimize(f.head(3).plan).plan.kind, optimize(f.head(3).plan).plan.child.kind
('Generate', 'Head')
"""

from __future__ import annotations

from typing import Any

from ..nodes import Drop, Head, LLMNode, PlanNode, Rename


def rule(node: PlanNode, ctx: Any) -> PlanNode | None:
    if not isinstance(node, Head):
        return None
    below = node.child
    if isinstance(below, Head):
        ctx.note(f"head {node.n} merged with head {below.n}")
        return Head(children=(below.child,), n=min(node.n, below.n))
    if not isinstance(below, (LLMNode, Drop, Rename)) or not below.row_local:
        return None  # an LLM filter drops rows: the head must wait for its answers
    what = f"{below.kind.lower()} {below.column!r}" if isinstance(below, LLMNode) else below.kind.lower()
    ctx.note(f"head {node.n} moved below {what}")
    return below.with_children(Head(children=(below.child,), n=node.n))
