"""Projection merge: a ``drop`` or bare-column ``select`` above a bare-column ``select``
becomes one ``select`` of the columns that remain, so a column that stops being read
is no longer read by the lower select (and projection pruning can then remove the LLM
node that writes it).

Fires on ``Drop`` or ``Select`` of bare columns (``is_projection()``) directly above a
``Select`` of bare columns. Blocked when either computes or renames anything.

>>> import lazyllm
>>> from lazyllm.planner.optimizer import optimize
>>> f = lazyllm.from_dicts([{"x": 1}]).generate("y", lazyllm.TestModel(), prompt="{{ x }}")
>>> [n.kind for n in spine(optimize(f.select("x", "y").drop("y").plan).plan)]
['Select', 'DataFrameSource']
>>> [n.kind for n in spine(optimize(f.select("x", "y").drop("x").plan).plan)]
['Select', 'Generate', 'DataFrameSource']
"""

from __future__ import annotations

from typing import Any

import polars as pl

from ..nodes import Drop, PlanNode, Select, spine

__all__ = ["rule"]


def rule(node: PlanNode, ctx: Any) -> PlanNode | None:
    if not isinstance(node, (Drop, Select)) or (isinstance(node, Select) and not node.is_projection()):
        return None
    below = node.child
    if not isinstance(below, Select) or not below.is_projection():
        return None
    keep = node.columns
    ctx.note(f"{node.kind.lower()} merged into the select below: {len(below.columns) - len(keep)} column(s) "
             "no longer read")
    return Select(children=(below.child,), exprs=tuple(pl.col(c) for c in keep))
