"""The optimizer driver: apply the rules to a fixed point and record what fired.

After sqlglot's optimizer (an ordered tuple of rules, one module each) and
DataFusion's driver (passes until nothing changes, with a pass limit; the output
schema is checked after every rule, and an error names the rule).

A rule is a pure function ``rule(node, ctx) -> PlanNode | None`` (None: no change).
The driver visits the plan top-down; ``ctx.required`` holds the columns that the
nodes above the visited one (and the final result) read from it, so rules such as
projection pruning can see what is used. Each rewrite leaves a one-line note for
``explain()``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from lazyllm.backends.errors import LazyLLMError, OptimizerError

from .nodes import (
    Drop,
    Filter,
    Head,
    LLMNode,
    PlanNode,
    Rename,
    Sample,
    Select,
    Sort,
    SplitPart,
    WithColumns,
)
from .rules import limit_pushdown, predicate_pushdown, projection_pruning

__all__ = ["RULES", "optimize", "Optimized", "RuleContext", "required_by_child"]

MAX_PASSES = 50


@dataclass
class RuleContext:
    """What a rule may know besides the node: columns needed above it, and a notebook."""

    required: frozenset[str] | None = None  # None: every column is needed
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.notes.append(text)


Rule = Callable[[PlanNode, RuleContext], "PlanNode | None"]

RULES: tuple[Rule, ...] = (
    projection_pruning.rule,
    predicate_pushdown.rule,
    limit_pushdown.rule,
)


@dataclass
class Optimized:
    plan: PlanNode
    fired: list[tuple[str, str]]  # (rule name, note)
    passes: int


def _rule_name(rule: Rule) -> str:
    return rule.__module__.rsplit(".", 1)[-1]


def required_by_child(node: PlanNode, required: frozenset[str] | None, index: int) -> frozenset[str] | None:
    """Columns that ``node`` (whose own output is read for ``required``) reads from child ``index``."""
    if isinstance(node, Select):
        return node.columns_read()  # None when a selector may read any column
    if required is None:
        return None
    if isinstance(node, LLMNode) and node.filters_rows:
        return required | node.columns_read()
    if isinstance(node, (LLMNode, WithColumns)):
        read, written = node.columns_read(), node.columns_written()
        if read is None or written is None:
            return None
        return (required - written) | read
    if isinstance(node, Drop):
        return required
    if isinstance(node, Rename):
        back = {new: old for old, new in node.mapping}
        renamed_away = {old for old, new in node.mapping} - set(back)
        return frozenset(back.get(c, c) for c in required if c not in renamed_away or c in back)
    if isinstance(node, (Filter, Head, Sort, Sample, SplitPart)):
        read = node.columns_read()
        return None if read is None else required | read
    return None  # joins, concat, unique, explode...: keep everything (safe default)


def _schema_signature(node: PlanNode) -> list[tuple[str, str]]:
    return [(name, str(dtype)) for name, dtype in node.schema().items()]


def _apply_once(node: PlanNode, rule: Rule, required: frozenset[str] | None, notes: list[str]) -> PlanNode:
    ctx = RuleContext(required=required)
    out = rule(node, ctx)
    notes.extend(ctx.notes)
    if out is not None and out is not node:
        return out  # the next pass visits the rewritten node's children
    children = tuple(
        _apply_once(c, rule, required_by_child(node, required, i), notes) for i, c in enumerate(node.children)
    )
    if all(a is b for a, b in zip(children, node.children)):
        return node
    return node.with_children(*children)


def optimize(plan: PlanNode, rules: tuple[Rule, ...] = RULES, max_passes: int = MAX_PASSES) -> Optimized:
    """Rewrite ``plan`` with ``rules`` until nothing changes (at most ``max_passes`` passes).

    Raises
    ------
    OptimizerError
        A rule changed the output schema or built an invalid plan (names the rule).
    """
    want = _schema_signature(plan)
    fired: list[tuple[str, str]] = []
    for passes in range(1, max_passes + 1):
        changed = False
        for rule in rules:
            notes: list[str] = []
            try:
                new = _apply_once(plan, rule, None, notes)
            except LazyLLMError as exc:
                raise OptimizerError(f"optimizer rule {_rule_name(rule)!r} built an invalid plan: {exc}") from exc
            if new is plan:
                continue
            if _schema_signature(new) != want:
                raise OptimizerError(
                    f"optimizer rule {_rule_name(rule)!r} changed the output schema from {want} to "
                    f"{_schema_signature(new)}; run collect(optimize=False) and report this plan."
                )
            fired.extend((_rule_name(rule), n) for n in notes)
            plan, changed = new, True
        if not changed:
            return Optimized(plan, fired, passes)
    return Optimized(plan, fired, max_passes)
