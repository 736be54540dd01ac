"""Plan printing (kept out of the nodes: one ``functools.singledispatch`` per node type).

``render_plan`` draws the tree, root first; each LLM node shows its model, prompt,
sampling parameters and, when stats from a dry run are given, rows in, requests,
predicted cache hits and LLM calls to make.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import polars as pl

from .nodes import (
    Concat,
    DataFrameSource,
    Drop,
    Explode,
    FileSource,
    Filter,
    Generate,
    Head,
    Join,
    Judge,
    LLMFilter,
    LLMNode,
    PairwiseJudge,
    PlanNode,
    Reward,
    Rename,
    SQL,
    Sample,
    Select,
    Sort,
    SplitPart,
    Unique,
    WithColumns,
)
from .stats import NodeStats
from .train import TrainedModel

__all__ = ["render_plan", "describe", "savings", "rule_lines"]


def _expr(e: pl.Expr) -> str:
    text = str(e)
    return text if len(text) <= 80 else text[:77] + "..."


def _short(text: str, limit: int = 70) -> str:
    one = " ".join(text.split())
    return repr(one if len(one) <= limit else one[: limit - 1] + "…")


@functools.singledispatch
def describe(node: PlanNode) -> tuple[str, list[str]]:
    """(headline, detail lines) of a node."""
    return node.kind.upper(), []


@describe.register
def _(node: DataFrameSource) -> tuple[str, list[str]]:
    return f"SOURCE {node.label} · {node.data.height} rows × {node.data.width} columns", []


@describe.register
def _(node: FileSource) -> tuple[str, list[str]]:
    first = node.paths[0].rsplit("/", 1)[-1]
    more = f" (+{len(node.paths) - 1} files)" if len(node.paths) > 1 else ""
    return f"SOURCE read_{node.format} {first}{more}", []


@describe.register
def _(node: Select) -> tuple[str, list[str]]:
    return "SELECT " + ", ".join(_expr(e) for e in node.exprs), []


@describe.register
def _(node: WithColumns) -> tuple[str, list[str]]:
    return "WITH_COLUMNS " + ", ".join(_expr(e) for e in node.exprs), []


@describe.register
def _(node: Filter) -> tuple[str, list[str]]:
    return f"FILTER {_expr(node.predicate)}", []


@describe.register
def _(node: Head) -> tuple[str, list[str]]:
    return f"HEAD {node.n}" + (" (in waves: LLM work below stops once enough rows pass)" if node.waves else ""), []


@describe.register
def _(node: Sort) -> tuple[str, list[str]]:
    keys = [f"{_expr(e)}{' desc' if d else ''}" for e, d in zip(node.by, node.descending)]
    return "SORT " + ", ".join(keys), []


@describe.register
def _(node: Unique) -> tuple[str, list[str]]:
    on = ", ".join(node.subset) if node.subset else "all columns"
    return f"UNIQUE on {on} keep={node.keep}", []


@describe.register
def _(node: Join) -> tuple[str, list[str]]:
    if node.on is not None:
        keys = ", ".join(_expr(e) for e in node.on)
    elif node.how == "cross":
        keys = "-"
    else:
        keys = f"{', '.join(map(_expr, node.left_on or ()))} = {', '.join(map(_expr, node.right_on or ()))}"
    return f"JOIN {node.how} on {keys}", []


@describe.register
def _(node: Concat) -> tuple[str, list[str]]:
    return f"CONCAT {node.how} ({len(node.children)} inputs)", []


@describe.register
def _(node: Explode) -> tuple[str, list[str]]:
    return "EXPLODE " + ", ".join(node.names), []


@describe.register
def _(node: Rename) -> tuple[str, list[str]]:
    return "RENAME " + ", ".join(f"{a} → {b}" for a, b in node.mapping), []


@describe.register
def _(node: Drop) -> tuple[str, list[str]]:
    return "DROP " + ", ".join(node.names), []


@describe.register
def _(node: Sample) -> tuple[str, list[str]]:
    size = f"n={node.n}" if node.n is not None else f"fraction={node.fraction}"
    return f"SAMPLE {size} seed={node.seed}", []


@describe.register
def _(node: SQL) -> tuple[str, list[str]]:
    return f"SQL (duckdb) over {', '.join(node.names)}", [f"query: {_short(node.query, 100)}"]


@describe.register
def _(node: SplitPart) -> tuple[str, list[str]]:
    parts = ", ".join(f"{n}={f:g}" for n, f in node.fractions)
    return f"SPLIT part {node.part!r} of ({parts}) seed={node.seed}", []


def _llm_lines(node: LLMNode, extra: str = "") -> list[str]:
    p = node.sampling
    lines = [f"prompt: {_short(node.prompt)} reads {sorted(node.columns_read())}"]
    model = node.model
    while isinstance(model, TrainedModel):
        spec = model.spec
        lines.append(f"model: {spec.method.upper()} of {spec.base.display_name} on data #{model.data.fingerprint[:10]}"
                     f" ({'LoRA r=' + str(spec.lora.r) if spec.lora else 'full fine-tuning'}, epochs={spec.epochs:g}, "
                     f"lr={spec.learning_rate:g}) · trained on first use, cached by fingerprint")
        model = spec.base
    if node.system is not None:
        lines.append(f"system: {_short(node.system)}")
    if node.aliases:
        lines.append("variables: " + ", ".join(f"{v} = {c}" for v, c in node.aliases))
    sampling = f"temperature={p.temperature:g} · top_p={p.top_p:g} · max_tokens={p.max_tokens} · seed={p.seed}"
    if p.stop:
        sampling += f" · stop={list(p.stop)}"
    lines.append((extra + " · " if extra else "") + sampling)
    return lines


@describe.register
def _(node: Generate) -> tuple[str, list[str]]:
    extra = f"n={node.n}"
    if node.choices is not None:
        extra += f" · choices={list(node.choices)}"
    if node.json_schema is not None:
        extra += f" · json_schema={_short(node.json_schema, 60)}"
    if node.conversation is not None:
        extra += f" · messages={node.conversation}"
    if node.append_to is not None:
        extra += f" · append_to={node.append_to}"
    if node.reasoning != "drop":
        extra += f" · reasoning={node.reasoning}"
    return f"GENERATE {node.column} ← {node.model.display_name}", _llm_lines(node, extra)


@describe.register
def _(node: Judge) -> tuple[str, list[str]]:
    extra = f"scale={node.scale[0]}..{node.scale[1]}" + (" · with rationale" if node.rationale else "")
    if node.method == "expected":
        extra += " · expected score (G-Eval)"
    return f"JUDGE {node.column} ← {node.model.display_name}", _llm_lines(node, extra)


@describe.register
def _(node: PairwiseJudge) -> tuple[str, list[str]]:
    extra = f"{node.a} vs {node.b} · " + ("both orders" if node.swap else "one order")
    extra += (f" · calibrated (tie within ±{node.tie_margin:g})" if node.method == "calibrated"
              else " · strict (position-bias check)")
    return f"JUDGE_PAIRWISE {node.column} ← {node.model.display_name}", _llm_lines(node, extra)


@describe.register
def _(node: Reward) -> tuple[str, list[str]]:
    return f"REWARD {node.column} ← {node.model.display_name}", _llm_lines(node, f"scores response {node.response!r}")


@describe.register
def _(node: LLMFilter) -> tuple[str, list[str]]:
    return f"LLM_FILTER yes/no ← {node.model.display_name}", _llm_lines(node)


def _stats_line(stats: NodeStats) -> str:
    line = (
        f"rows in: {stats.rows_in} · LLM calls to make: {stats.calls} · "
        f"predicted cache hits: {stats.cache_hits}/{stats.unique_requests}"
    )
    if stats.unique_requests != stats.requests:
        line += f" · requests: {stats.requests} ({stats.requests - stats.unique_requests} duplicates)"
    if stats.uncertain_rows:
        line += f" · {stats.uncertain_rows} rows wait on upstream LLM output (estimate)"
    if stats.sample_rows and stats.calls_interval is not None:
        lo, hi = stats.calls_interval
        line += (f"\nestimated from a uniform sample of {stats.sample_rows:,} of {stats.rows_total:,} input rows "
                 f"(counts scaled; duplicates between unsampled rows are not seen) · LLM calls 95% interval "
                 f"{lo:,}–{hi:,}")
    if stats.calls:
        bound = "≤ " if stats.output_basis == "max_tokens" else "≈ "
        line += (f"\nest. tokens: {stats.est_input_tokens:,} in ({stats.input_basis}) · "
                 f"{bound}{stats.est_output_tokens:,} out ({stats.output_basis})")
        if stats.est_cost is not None:
            line += f" · est. cost ${stats.est_cost:,.4f}"
    return line


def render_plan(root: PlanNode, stats: Mapping[str, NodeStats] | None = None, *, fingerprints: bool = True) -> str:
    """The plan as an indented tree, root first."""
    lines: list[str] = []
    seen: set[str] = set()

    def visit(node: PlanNode, prefix: str, child_prefix: str) -> None:
        head, details = describe(node)
        fp = f"  #{node.fingerprint[:10]}" if fingerprints else ""
        if node.fingerprint in seen:
            lines.append(f"{prefix}{head}{fp}  (shared: computed once, shown above)")
            return
        seen.add(node.fingerprint)
        lines.append(f"{prefix}{head}{fp}")
        body = child_prefix + ("│  " if node.children else "   ")
        for d in details:
            lines.append(f"{body}{d}")
        if stats is not None and node.fingerprint in stats:
            lines.extend(f"{body}{part}" for part in _stats_line(stats[node.fingerprint]).split("\n"))
        for i, c in enumerate(node.children):
            last = i == len(node.children) - 1
            visit(c, child_prefix + ("└─ " if last else "├─ "), child_prefix + ("   " if last else "│  "))

    visit(root, "", "")
    return "\n".join(lines)


def savings(logical: Mapping[str, NodeStats], optimized: Mapping[str, NodeStats]) -> str:
    """One line: LLM calls (and estimated tokens) the optimized plan makes against the plan
    as written, both from dry runs over the same cache.

    >>> from lazyllm.planner.stats import NodeStats
    >>> a = {"x": NodeStats("x", "Generate", "q", "m", calls=200, est_input_tokens=900)}
    >>> b = {"y": NodeStats("y", "Generate", "q", "m", calls=20, est_input_tokens=90)}
    >>> savings(a, b)
    'LLM calls to make: 20 optimized vs 200 as written (180 saved) · est. input tokens: 90 vs 900'
    """
    calls = [sum(s.calls for s in st.values()) for st in (optimized, logical)]
    tokens = [sum(s.est_input_tokens for s in st.values()) for st in (optimized, logical)]
    return (f"LLM calls to make: {calls[0]:,} optimized vs {calls[1]:,} as written ({calls[1] - calls[0]:,} saved)"
            f" · est. input tokens: {tokens[0]:,} vs {tokens[1]:,}")


def rule_lines(fired: Sequence[tuple[str, str]], saved: Mapping[str, int]) -> list[str]:
    """The lines of ``explain()`` for the rules that fired: one per rule, with the LLM
    calls it saves, then its rewrites, one per line.

    Parameters
    ----------
    fired : sequence of (rule name, note)
        ``Optimized.fired``, in firing order.
    saved : mapping of str to int
        Calls saved per rule (:func:`lazyllm.planner.optimizer.rule_savings`).

    Returns
    -------
    list of str
        Indented lines, the rules in the order they first fired.

    >>> for line in rule_lines([("predicate_pushdown", "filter a moved below generate 'q'")],
    ...                        {"predicate_pushdown": 180}):
    ...     print(line)
      rule predicate_pushdown · saves 180 LLM calls
        - filter a moved below generate 'q'
    """
    notes: dict[str, list[str]] = {}
    for name, note in fired:
        notes.setdefault(name, []).append(note)
    lines: list[str] = []
    for name, items in notes.items():
        n = saved.get(name)
        gain = "" if n is None else f" · saves {n:,} LLM call{'s' if n != 1 else ''}"
        lines.append(f"  rule {name}{gain}")
        lines.extend(f"    - {note}" for note in items)
    return lines
