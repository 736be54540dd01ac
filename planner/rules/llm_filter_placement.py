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

An LLM predicate is either an LLM node that drops rows (``llm_predicate``: ``is_llm``,
``row_effect() == "drop"``) or a *judge filter*: an elementwise filter directly above an
LLM node that keeps every row (``judge``, ``generate``, ``reward``) whose predicate reads
that node's output (``judge(...).filter(pl.col("score") >= 7)``); the two move as one.

Fires on an LLM predicate directly above (a) an LLM node that keeps every row and writes
nothing the predicate reads — the predicate moves below it; (b) another LLM predicate of
lower rank that writes nothing it reads — they swap. When the columns come out in
another order, a projection restores the order. Blocked when the predicate reads a
column the node below writes, or when ranks are equal (nothing moves on a tie, so the
rule reaches a fixed point).

>>> import lazyllm
>>> import polars as pl
>>> from lazyllm.planner.optimizer import optimize
>>> m = lazyllm.TestModel()
>>> f = lazyllm.from_dicts([{"x": "a"}]).generate("y", m, prompt="{{ x }}")
>>> [n.kind for n in spine(optimize(f.filter(lazyllm.llm_predicate(m, "{{ x }}?")).plan).plan)]
['Generate', 'LLMFilter', 'DataFrameSource']
>>> [n.kind for n in spine(optimize(f.filter(lazyllm.llm_predicate(m, "{{ y }}?")).plan).plan)]
['LLMFilter', 'Generate', 'DataFrameSource']
>>> judged = f.judge("s", m, prompt="Rate {{ x }}", scale=(1, 10)).filter(pl.col("s") >= 7)
>>> [n.kind for n in spine(optimize(judged.plan).plan)]
['Select', 'Generate', 'Filter', 'Judge', 'DataFrameSource']
"""

from __future__ import annotations

from typing import Any

import polars as pl

from ..nodes import Filter, LLMNode, PlanNode, Select, spine

__all__ = ["rule", "rank"]


def rank(node: LLMNode) -> float:
    """(1 - pass rate) / cost per row: LLM predicates run highest rank first."""
    return (1.0 - node.prior_pass_rate) / max(node.cost_per_row(), 1e-12)


def _predicate(node: PlanNode) -> tuple[PlanNode, LLMNode, PlanNode] | None:
    """``(top, llm, below)`` when ``node`` is an LLM predicate: an LLM node that drops rows
    (top is llm), or an elementwise filter that reads the output of the row-keeping LLM
    node under it (a judge filter)."""
    if isinstance(node, LLMNode):
        if node.row_effect() == "drop" and node.row_by_row():
            return node, node, node.children[0]
        return None
    if not isinstance(node, Filter) or not node.row_by_row():
        return None
    llm = node.children[0]
    read = node.columns_read()
    if (isinstance(llm, LLMNode) and len(llm.children) == 1 and llm.row_effect() == "keep"
            and llm.row_by_row() and read is not None and read & llm.columns_written()):
        return node, llm, llm.children[0]
    return None


def _reads(top: PlanNode, llm: LLMNode) -> frozenset[str] | None:
    read = top.columns_read() if top is not llm else frozenset()
    if read is None:
        return None
    return llm.columns_read() | (read - llm.columns_written())


def _stack(top: PlanNode, llm: LLMNode, child: PlanNode) -> PlanNode:
    return top.with_children(child) if top is llm else top.with_children(llm.with_children(child))


def _what(top: PlanNode, llm: LLMNode) -> str:
    return "llm filter" if top is llm else f"filter on {llm.kind.lower()} {llm.column!r}"


def rule(node: PlanNode, ctx: Any) -> PlanNode | None:
    unit = _predicate(node)
    if unit is None:
        return None
    top, llm, below = unit
    reads = _reads(top, llm)
    if reads is None:
        return None
    other = _predicate(below)
    if other is None:
        if not (isinstance(below, LLMNode) and below.row_effect() == "keep" and below.row_by_row()
                and len(below.children) == 1) or reads & below.columns_written():
            return None
        ctx.note(f"{_what(top, llm)} moved below {below.kind.lower()} {below.column!r}")
        out = below.with_children(_stack(top, llm, below.children[0]))
    else:
        btop, bllm, bchild = other
        if reads & bllm.columns_written() or not rank(llm) > rank(bllm):
            return None
        ctx.note(f"llm filters ordered by rank (1 - pass rate) / cost: {_what(top, llm)} {rank(llm):.3g} "
                 f"before {_what(btop, bllm)} {rank(bllm):.3g}")
        out = _stack(btop, bllm, _stack(top, llm, bchild))
    order = node.columns
    return out if out.columns == order else Select(children=(out,), exprs=tuple(pl.col(c) for c in order))
