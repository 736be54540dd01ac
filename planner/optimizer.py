"""The optimizer driver: apply the rules to a fixed point and record what fired.

After sqlglot's optimizer (an ordered tuple of rules, one module each) and
DataFusion's driver (passes until nothing changes, with a pass limit; the output
schema is checked after every rule, and an error names the rule).

A rule is a pure function ``rule(node, ctx) -> PlanNode | None`` (None: no change).
The driver visits the plan top-down; ``ctx.required`` holds the columns that the
nodes above the visited one (and the final result) read from it, found from each
node's ``required_from_child`` trait, so rules such as projection pruning can see what
is used. Each rewrite leaves a one-line note for
``explain()``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from lazyllm.backends.errors import LazyLLMError, OptimizerError

from .nodes import PlanNode
from .rules import (
    derivation_pushdown,
    limit_pushdown,
    predicate_pushdown,
    projection_merge,
    projection_pruning,
    sort_pushdown,
    sql_predicate_pushdown,
)

__all__ = ["RULES", "optimize", "Optimized", "RuleContext"]

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
    projection_merge.rule,
    projection_pruning.rule,
    derivation_pushdown.rule,
    sql_predicate_pushdown.rule,
    predicate_pushdown.rule,
    sort_pushdown.rule,
    limit_pushdown.rule,
)


@dataclass
class Optimized:
    plan: PlanNode
    fired: list[tuple[str, str]]  # (rule name, note)
    passes: int


def _rule_name(rule: Rule) -> str:
    return rule.__module__.rsplit(".", 1)[-1]


def _schema_signature(node: PlanNode) -> list[tuple[str, str]]:
    return [(name, str(dtype)) for name, dtype in node.schema().items()]


def _apply_once(node: PlanNode, rule: Rule, required: frozenset[str] | None, notes: list[str]) -> PlanNode:
    ctx = RuleContext(required=required)
    out = rule(node, ctx)
    notes.extend(ctx.notes)
    if out is not None and out is not node:
        return out  # the next pass visits the rewritten node's children
    children = tuple(
        _apply_once(c, rule, node.required_from_child(required, i), notes) for i, c in enumerate(node.children)
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
                new = _apply_once(plan, rule, frozenset(plan.columns), notes)
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
