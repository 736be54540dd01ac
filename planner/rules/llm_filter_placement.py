"""LLM filter placement: an LLM predicate runs before other LLM work it does not read, and
several LLM predicates on the same rows run in the order of their rank.

Predicate migration (Hellerstein & Stonebraker, "Predicate Migration: Optimizing
Queries with Expensive Predicates", SIGMOD 1993; Hellerstein, TODS 1998): a predicate
that reads none of the columns an expensive map adds filters the rows before the map,
and a chain of expensive predicates is ordered by rank = (1 - pass rate) / cost per
row, highest first (the most selective cheap one). The cost per row comes from the
node's token estimate and the model's prices (trait ``cost_per_row()``); the pass rate
is the node's documented prior (``prior_pass_rate``, 0.5), so with no better
knowledge the cheaper predicate runs first.

Fires on an LLM node that drops rows (``is_llm``, ``row_effect() == "drop"``) directly
above (a) an LLM node that keeps every row and writes nothing the predicate reads —
the predicate moves below it; (b) another LLM predicate of lower rank — they swap.
Blocked when the predicate reads a column the node below writes, or when ranks are
equal (nothing moves on a tie, so the rule reaches a fixed point).

>>> import lazyllm
>>> from lazyllm.planner.optimizer import optimize
>>> m = lazyllm.TestModel()
>>> f = lazyllm.from_dicts([{"x": "a"}]).generate("y", m, prompt="{{ x }}")
>>> [n.kind for n in spine(optimize(f.filter(lazyllm.llm_predicate(m, "{{ x }}?")).plan).plan)]
['Generate', 'LLMFilter', 'DataFrameSource']
>>> [n.kind for n in spine(optimize(f.filter(lazyllm.llm_predicate(m, "{{ y }}?")).plan).plan)]
['LLMFilter', 'Generate', 'DataFrameSource']
"""

from __future__ import annotations

from typing import Any

from ..nodes import LLMNode, PlanNode, spine

__all__ = ["rule", "rank"]


def rank(node: LLMNode) -> float:
    """(1 - pass rate) / cost per row: LLM predicates run highest rank first."""
    return (1.0 - node.prior_pass_rate) / max(node.cost_per_row(), 1e-12)


def rule(node: PlanNode, ctx: Any) -> PlanNode | None:
    if not isinstance(node, LLMNode) or node.row_effect() != "drop" or not node.row_by_row():
        return None
    below = node.children[0]
    if not isinstance(below, LLMNode) or not below.row_by_row():
        return None
    if node.columns_read() & below.columns_written():
        return None
    if below.row_effect() == "keep":
        ctx.note(f"llm filter moved below {below.kind.lower()} {below.column!r}")
    elif below.row_effect() == "drop" and rank(node) > rank(below):
        ctx.note(f"llm filters ordered by rank (1 - pass rate) / cost: {rank(node):.3g} before {rank(below):.3g}")
    else:
        return None
    return below.with_children(node.with_children(below.children[0]))
