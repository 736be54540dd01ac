"""Limit pushdown: ``head(n)`` runs before row-local LLM nodes, so only n rows are generated.

Fires on ``Head`` directly above a row-local node (an LLM node, drop, rename, a
select of bare columns): that
node keeps one output row per input row in order, so the first n outputs come from
the first n inputs. Two stacked heads merge into the smaller one. Blocked above
anything that can drop or reorder rows (a filter, a sort, a join).

When the head sits above filters (polars or LLM) over LLM nodes, it cannot move, but
it switches to *waves*: the rows are processed in order, a wave at a time, until n
rows pass ("generate until n rows pass"), instead of generating for every row.

>>> import lazyllm
>>> from lazyllm.planner.optimizer import optimize
>>> f = lazyllm.from_dicts([{"x": i} for i in range(9)]).generate("y", lazyllm.TestModel(), prompt="{{ x }}")
>>> optimize(f.head(3).plan).plan.kind, optimize(f.head(3).plan).plan.child.kind
('Generate', 'Head')
"""

from __future__ import annotations

from typing import Any

from ..nodes import Drop, Filter, Head, LLMNode, PlanNode, Rename, Select

#: Nodes a wave may run through: they keep input order and decide each row alone.
WAVE_NODES = (Filter, LLMNode, Drop, Rename)


def wave_chain(node: PlanNode) -> list[PlanNode] | None:
    """The nodes between a head and the input its waves slice (top first), if waves help."""
    chain: list[PlanNode] = []
    below = node
    while isinstance(below, WAVE_NODES) or (isinstance(below, Select) and below.is_projection()):
        chain.append(below)
        below = below.children[0]
    has_llm = any(isinstance(n, LLMNode) for n in chain)
    has_filter = any(isinstance(n, Filter) or (isinstance(n, LLMNode) and n.filters_rows) for n in chain)
    return chain if has_llm and has_filter else None


def rule(node: PlanNode, ctx: Any) -> PlanNode | None:
    if not isinstance(node, Head):
        return None
    below = node.child
    if isinstance(below, Head):
        ctx.note(f"head {node.n} merged with head {below.n}")
        return Head(children=(below.child,), n=min(node.n, below.n))
    projection = isinstance(below, Select) and below.is_projection()
    if not projection and (not isinstance(below, (LLMNode, Drop, Rename)) or not below.row_local):
        if not node.waves and wave_chain(below) is not None:
            ctx.note(f"head {node.n} above filtered LLM output: generate in waves until {node.n} rows pass")
            return Head(children=(below,), n=node.n, waves=True)
        return None
    what = f"{below.kind.lower()} {below.column!r}" if isinstance(below, LLMNode) else below.kind.lower()
    ctx.note(f"head {node.n} moved below {what}")
    return below.with_children(Head(children=(below.child,), n=node.n))
