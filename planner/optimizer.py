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

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from lazyllm.core.errors import LazyLLMError, OptimizerError

from .nodes import PlanNode, walk
from .rules import (
    derivation_pushdown,
    limit_pushdown,
    llm_filter_placement,
    predicate_pushdown,
    projection_merge,
    projection_pruning,
    selection_pushdown,
    sort_pushdown,
    sql_predicate_pushdown,
)

__all__ = ["RULES", "optimize", "Optimized", "RuleContext", "shared_subplans", "rule_savings"]

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
    llm_filter_placement.rule,
    selection_pushdown.rule,
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


def shared_subplans(roots: Sequence[PlanNode]) -> frozenset[str]:
    """Fingerprints of the subplans with LLM work that several parents read (across
    ``roots`` and within each): common subplans, which the executor runs once (it keys
    results by fingerprint) as long as the optimizer leaves them whole.

    >>> import lazyllm
    >>> q = lazyllm.from_dicts([{"x": 1}]).generate("y", lazyllm.TestModel(), prompt="{{ x }}")
    >>> shared_subplans([q.concat(q).plan]) == {q.plan.fingerprint}
    True
    """
    refs: dict[str, int] = {}
    llm: dict[str, bool] = {}
    for root in roots:
        refs[root.fingerprint] = refs.get(root.fingerprint, 0) + 1
    for node in walk_all(roots):
        llm[node.fingerprint] = node.is_llm or any(llm[c.fingerprint] for c in node.children)
        for c in node.children:
            refs[c.fingerprint] = refs.get(c.fingerprint, 0) + 1
    return frozenset(fp for fp, n in refs.items() if n > 1 and llm.get(fp))


def walk_all(roots: Sequence[PlanNode]) -> list[PlanNode]:
    """Every node under ``roots``, children before parents, each once."""
    seen: dict[str, PlanNode] = {}
    for root in roots:
        for node in walk(root):
            seen.setdefault(node.fingerprint, node)
    return list(seen.values())


def _shared_in(node: PlanNode, shared: frozenset[str]) -> Counter[str]:
    """How often each common subplan is read under ``node`` (down to the first common
    subplan on each path: the nodes above it have one parent each, so this is a tree walk)."""
    if not shared:
        return Counter()
    if node.fingerprint in shared:
        return Counter({node.fingerprint: 1})
    out: Counter[str] = Counter()
    for c in node.children:
        out.update(_shared_in(c, shared))
    return out


def _apply_once(node: PlanNode, rule: Rule, required: frozenset[str] | None, notes: list[str],
                shared: frozenset[str] = frozenset()) -> PlanNode:
    if node.fingerprint in shared:
        return node  # a common subplan stays whole, so it runs once for all its readers
    ctx = RuleContext(required=required)
    out = rule(node, ctx)
    if out is not None and out is not node and not (_shared_in(node, shared) - _shared_in(out, shared)):
        notes.extend(ctx.notes)
        return out  # the next pass visits the rewritten node's children
    children = tuple(
        _apply_once(c, rule, node.required_from_child(required, i), notes, shared)
        for i, c in enumerate(node.children)
    )
    if all(a is b for a, b in zip(children, node.children)):
        return node
    return node.with_children(*children)


def optimize(plan: PlanNode, rules: tuple[Rule, ...] = RULES, max_passes: int = MAX_PASSES,
             shared: frozenset[str] | None = None) -> Optimized:
    """Rewrite ``plan`` with ``rules`` until nothing changes (at most ``max_passes`` passes).

    ``shared``: fingerprints of common subplans to leave whole (default: those of
    ``plan`` itself, :func:`shared_subplans`); ``collect_all`` passes the ones its roots
    share. No rule rewrites inside them or moves work into them, so the executor runs
    each once for all its readers.

    Raises
    ------
    OptimizerError
        A rule changed the output schema or built an invalid plan (names the rule).
    """
    want = _schema_signature(plan)
    if shared is None:
        shared = shared_subplans([plan])
    fired: list[tuple[str, str]] = []
    for passes in range(1, max_passes + 1):
        changed = False
        for rule in rules:
            notes: list[str] = []
            try:
                new = _apply_once(plan, rule, frozenset(plan.columns), notes, shared)
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


def rule_savings(plan: PlanNode, result: Optimized, calls: Callable[[PlanNode], int],
                 rules: tuple[Rule, ...] = RULES) -> dict[str, int]:
    """LLM calls each rule that fired saves, by ablation: for every rule in
    ``result.fired``, the calls of ``plan`` optimized without that rule minus the calls
    of ``result.plan``.

    Parameters
    ----------
    plan : PlanNode
        The plan as written.
    result : Optimized
        ``optimize(plan, rules)``.
    calls : callable
        ``calls(node) -> int``: the LLM calls a plan makes (the executor's dry run,
        which reads the cache and calls no model).
    rules : tuple of rules
        The rules ``result`` was optimized with.

    Returns
    -------
    dict of str to int
        Rule name (module name, as in ``result.fired``) to calls saved, in the order the
        rules first fired. Rules that overlap (either would save the same calls) each
        show only what the others do not save, so the figures need not add up to the
        total saving.

    Notes
    -----
    Cost: one optimizer run per rule that fired, and one ``calls`` (dry run) per rule
    whose absence changes the optimized plan; rules whose absence leaves the plan the
    same save 0 without a dry run. Ablation, as in the rule-level evaluations of query
    optimizers (for example DataFusion's per-rule ``explain verbose``, which prints the
    plan after each rule).

    >>> import tempfile, lazyllm, polars as pl
    >>> from lazyllm.planner.executor import dry_run
    >>> f = lazyllm.from_dicts([{"x": i} for i in range(4)]).generate("y", lazyllm.TestModel(), prompt="{{ x }}")
    >>> plan = f.filter(pl.col("x") < 1).plan
    >>> ws = tempfile.mkdtemp()
    >>> rule_savings(plan, optimize(plan), lambda node: sum(s.calls for s in dry_run([node], ws).values()))
    {'predicate_pushdown': 3}
    """
    base = calls(result.plan)
    out: dict[str, int] = {}
    for name in dict.fromkeys(n for n, _ in result.fired):
        without = optimize(plan, tuple(r for r in rules if _rule_name(r) != name))
        out[name] = 0 if without.plan.fingerprint == result.plan.fingerprint else calls(without.plan) - base
    return out
