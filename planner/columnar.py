"""The scheduler's columnar path: LLM nodes whose rows are all ready at the start, served
from the cache a whole column at a time.

A node of a chain is *columnar* when its rows need nothing the run has still to compute:
it reads input columns only, or columns of lower nodes of the chain that this path has
already served for every row; it filters no rows (no LLM filter below it either: those
are lower nodes it depends on) and its requests depend on a row only through messages
that render in bulk (:meth:`~lazyllm.planner.nodes.LLMNode.messages_column`). For such a
node the run does, for the whole column at once:

- render the messages (polars), key the requests (:func:`~lazyllm.planner.cache.message_keys`)
  and read them in one LMDB read transaction (:meth:`~lazyllm.planner.cache.PromptCache.get_records`);
- a row whose template reads a null fails without a request, naming the input (the
  null-input rule of the per-row path);
- a row whose every request is cached gets its output values straight from the decoded
  records: no ``Request``, ``Response`` or delivery per row for plain generations (text
  values, ``n`` samples as lists) and for judges (an integer score, or the expected score
  and its distribution); other nodes (choices, JSON schemas, rationales) and any answer
  the fast rules do not take go through the node's own ``combine``, so the values and
  errors are the per-row path's by construction;
- the rows with a request that is not cached are queued the column at once
  (``queue_rows`` of the run): a request is built only per distinct missing key, the
  model's queue is rebuilt once, and only the misses go to the engines (leased, batched,
  committed as every request is). An answer of a plain generation (:func:`plain_text`)
  becomes the row's value as it is delivered (no ``combine`` per row, as for cached
  texts); other answers go through ``combine`` as before.

Everything else (nodes below which a value is still to be computed, LLM filters,
pairwise judges, rewards, dry runs for ``explain()``) takes the per-row path unchanged.
The statistics (rows, requests, distinct requests, cache hits, failures, token
histograms) are those the per-row path records; ``tests/planner/test_columnar.py`` runs
both paths on the same plans and compares frames, run logs and engine calls.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import polars as pl

from lazyllm.backends.logprobs import normalize
from lazyllm.core.protocols import Message, Request, Response

from .cache import message_keys
from .collector import gc_paused
from .nodes import Generate, Judge, LLMNode

__all__ = ["serve_columns", "enabled", "plain_text", "plain_answer"]

#: The fields of a request other than its messages (copied from a node's request shape).
_REQUEST_FIELDS = tuple(f.name for f in dataclasses.fields(Request) if f.init and f.name != "messages")


def enabled() -> bool:
    """Whether the columnar path is on (``LAZYLLM_COLUMNAR=0`` turns it off, to compare).

    Returns
    -------
    bool
        False when the environment variable ``LAZYLLM_COLUMNAR`` is ``0``.
    """
    return os.environ.get("LAZYLLM_COLUMNAR", "1") != "0"


def serve_columns(run: Any) -> list[tuple[int, int]]:
    """Serve the columnar nodes of a chain run; return the (node, row) pairs left to the per-row path.

    Parameters
    ----------
    run : scheduler chain run
        The run of one chain (``_ChainRun`` of :mod:`lazyllm.planner.scheduler`): its
        node states, input frame, cache, and ``queue_rows`` for cache misses.

    Returns
    -------
    list of (int, int)
        (node index, row) pairs for the run's ``make_ready``: every row of the nodes not
        served here, and the rows of served nodes that the columnar rules leave alone.

    Cost: per columnar node, one bulk render, one SHA-256 per request, one LMDB read
    transaction and one msgpack decode per hit; no LLM call (misses are queued).
    """
    rows = run.df.height
    served: set[int] = set()  # every row done
    handled: set[int] = set()  # served here, hits and misses
    left: list[tuple[int, int]] = []
    if enabled() and not run.ctx.dry_run and rows:
        with gc_paused():
            _serve_chain(run, served, handled, left)
    for i, st in enumerate(run.states):
        if i not in handled and (not st.deps or handled & set(st.deps)):
            left.extend((i, r) for r in range(rows))
    return left


def _serve_chain(run: Any, served: set[int], handled: set[int], left: list[tuple[int, int]]) -> None:
    """Serve every columnar node of the chain, bottom up (fills ``served``, ``handled``, ``left``)."""
    for i, st in enumerate(run.states):
        node = st.node
        if node.filters_rows or not node.requests_from_messages or not set(st.deps) <= served:
            continue
        messages = st.bulk if not st.deps else _render(run, i)
        if messages is None:
            continue
        rest, complete, ready = _serve_node(run, i, messages)
        # rendered once: let the memory go; rows left here are rendered row by row (Jinja)
        st.bulk = st.shapes = None
        handled.add(i)
        left.extend((i, r) for r in rest)
        left.extend(ready)
        if complete:
            served.add(i)


def _render(run: Any, i: int) -> list[tuple[Message, ...] | None] | None:
    """The bulk-rendered messages of node ``i`` over the served lower nodes' outputs, or None
    (the per-row path renders it) when its columns do not make a frame or do not render in bulk."""
    try:
        frame = _frame(run, i)
    except (pl.exceptions.PolarsError, TypeError, ValueError, OverflowError):
        return None  # values polars does not take as the node's dtype: Jinja renders them row by row
    return run.states[i].node.messages_column(frame)


def _frame(run: Any, i: int) -> pl.DataFrame:
    """The columns node ``i`` reads, from the input and the (served) lower nodes, as the
    per-row path sees them: the nearest lower node writing a column wins."""
    node = run.states[i].node
    cols: dict[str, pl.Series] = {}
    for col in sorted(node.columns_read()):
        for j in range(i - 1, -1, -1):
            low = run.states[j]
            if col in low.values:
                cols[col] = pl.Series(col, low.values[col], dtype=low.node.output_schema()[col])
                break
            if col == low.node.error_column:
                cols[col] = pl.Series(col, low.errors, dtype=pl.String)
                break
        else:
            if col in run.df.columns:
                cols[col] = run.df.get_column(col)
    # a node with a dependency reads a column of it, so the frame is never empty
    return pl.DataFrame(list(cols.values()))


def _serve_node(run: Any, i: int, messages: list[tuple[Message, ...] | None]
                ) -> tuple[list[int], bool, list[tuple[int, int]]]:
    """Serve node ``i`` from its bulk-rendered ``messages``; return the rows left to the
    per-row path, whether every row is done, and the (node, row) pairs made ready."""
    st = run.states[i]
    node: LLMNode = st.node
    shapes = st.shapes or node.requests_for({}, (Message("user", ""),))
    n = len(shapes)
    rendered = [r for r, m in enumerate(messages) if m is not None]
    column = [messages[r] for r in rendered]
    keys = [message_keys(st.model_fp, shape, column) for shape in shapes]  # type: ignore[arg-type]
    flat = [key for per_sample in keys for key in per_sample]
    records = run.cache.get_records(flat)
    m = len(rendered)
    left: list[int] = []
    ready: list[tuple[int, int]] = []
    # rows with a null input: fail without a request, as the per-row path does
    for r, msg in enumerate(messages):
        if msg is not None:
            continue
        nulls = node.null_inputs(run.row_context(i, r))
        if not nulls:  # not the null-input rule: the per-row path decides
            left.append(r)
            continue
        st.rendered[r] = True
        st.stats.rows_in += 1
        ready.extend(run.fail_row(i, r, node.null_error(nulls)))
    st.stats.rows_in += m
    st.stats.requests += m * n
    st.keys.update(flat)
    hits = {key: rec for key, rec in zip(flat, records) if rec is not None}  # distinct keys
    run.from_cache.update(hits)
    st.counted.update(hits)  # no Response is kept for these: their tokens are counted now
    st.stats.count_tokens([int(rec.get("input_tokens", 0)) for rec in hits.values()],
                          [int(rec.get("output_tokens", 0)) for rec in hits.values()])
    if n == 1:
        hit_pos = [pos for pos, rec in enumerate(records) if rec is not None]
    else:
        hit_pos = [pos for pos in range(m) if all(records[k * m + pos] is not None for k in range(n))]
    misses = _misses(rendered, hit_pos)  # (row, position in the column)
    for r in rendered:
        st.rendered[r] = True
    if not _plain_texts(st, node, n, records, m, [rendered[pos] for pos in hit_pos], hit_pos):
        values = _values(node, n)
        for pos in hit_pos:
            r = rendered[pos]
            out, error = values([records[k * m + pos] for k in range(n)])
            st.store(r, out, error, lambda r=r: run.row_context(i, r))  # type: ignore[misc]
    # a miss's request: its shape with the row's messages (``dataclasses.replace`` without its per-call cost)
    fields = [dict((name, getattr(shape, name)) for name in _REQUEST_FIELDS) for shape in shapes]
    if n == 1:
        rows = [(r, (keys[0][pos],)) for r, pos in misses]
    else:
        rows = [(r, tuple(keys[k][pos] for k in range(n))) for r, pos in misses]
        for r, pos in misses:
            for k in range(n):
                rec, key = records[k * m + pos], keys[k][pos]
                if rec is not None and key not in run.known:  # a partial hit: its cached samples are served
                    run.known[key] = Response.from_record(rec)
    # only the misses go to the engines, their requests built once per distinct key
    ready.extend(run.queue_rows(i, rows, lambda r, k: Request(messages=messages[r], **fields[k])))  # type: ignore[arg-type]
    return left, not misses and not left, ready


def _misses(rendered: list[int], hit_pos: list[int]) -> list[tuple[int, int]]:
    """(row, position) of the rendered rows that are not all hits."""
    if len(hit_pos) == len(rendered):
        return []
    hits = set(hit_pos)
    return [(r, pos) for pos, r in enumerate(rendered) if pos not in hits]


def plain_text(node: LLMNode) -> bool:
    """Whether ``node`` is a plain generation of one sample: no choices, no JSON schema,
    reasoning traces dropped, no conversation to append to, ``n == 1``. Its ``combine`` on
    one response with a text, no error, no reasoning trace and no ``think>`` in the text
    gives that text as the value and no error (what both paths take without ``combine``).

    Parameters
    ----------
    node : LLMNode

    Returns
    -------
    bool
    """
    return _plain_generation(node) and getattr(node, "n", 1) == 1


def plain_answer(text: str | None, reasoning: str | None) -> bool:
    """Whether a response of a :func:`plain_text` node is its value as it stands: a text, no
    reasoning trace, and no inline ``think>`` tag for ``combine`` to split off.

    Parameters
    ----------
    text : str or None
    reasoning : str or None

    Returns
    -------
    bool
    """
    return text is not None and reasoning is None and "think>" not in text


def _plain_generation(node: LLMNode) -> bool:
    """A generation without constraints, kept traces or appended conversation (any ``n``)."""
    return (isinstance(node, Generate) and node.choices is None and node.json_schema is None
            and getattr(node, "reasoning", "drop") == "drop" and getattr(node, "append_to", None) is None)


def _plain_texts(st: Any, node: LLMNode, n: int, records: list[Any], m: int, rows: list[int],
                 hit_pos: list[int]) -> bool:
    """A plain generation (no choices, no JSON schema): its values are the cached texts (a
    list of the ``n`` samples when ``n > 1``) and its errors null, the column at once.
    False, doing nothing, for any other node or when a cached text is null (``combine`` decides)."""
    if not _plain_generation(node):
        return False
    texts = [[records[k * m + pos]["text"] for pos in hit_pos] for k in range(n)]
    if not all(plain_answer(t, records[k * m + pos].get("reasoning"))
               for k, sample in enumerate(texts) for pos, t in zip(hit_pos, sample)):
        return False  # combine decides (a null text; a reasoning trace, inline ones split off there)
    values = texts[0] if n == 1 else [list(row) for row in zip(*texts)]
    column = st.values[node.column]
    if len(rows) == len(column):  # every row, in order
        column[:] = values
        st.done[:] = [True] * len(rows)
        return True
    for r, value in zip(rows, values):
        column[r] = value
        st.done[r] = True
    return True


def _values(node: LLMNode, n: int) -> Any:
    """``row_records -> (values, error)`` for a row whose every request is cached: the
    node's ``combine`` on the records, with fast rules that give the same result without a
    ``Response`` for plain generations and judges."""

    def combined(records: list[dict[str, Any]]) -> tuple[dict[str, Any], str | None]:
        return node.combine([Response.from_record(rec) for rec in records])

    if isinstance(node, Generate):
        return combined  # a plain generation's fast rule is _plain_texts (a column at a time)
    if isinstance(node, Judge) and node.method == "argmax" and not node.rationale:
        lo, hi = node.scale
        score_col = node.column

        def scored(records: list[dict[str, Any]]) -> tuple[dict[str, Any], str | None]:
            text = records[0]["text"]
            if isinstance(text, str) and text.isascii() and text.isdigit() and lo <= int(text) <= hi:
                return {score_col: int(text)}, None
            return combined(records)  # the judge's own message for anything else

        return scored
    if isinstance(node, Judge) and node.method == "expected":
        lo, hi = node.scale
        scores = node.scores()
        score_col, probs_col = node.column, node.probs_column

        def expected(records: list[dict[str, Any]]) -> tuple[dict[str, Any], str | None]:
            rec = records[0]
            lps = rec.get("choice_logprobs")
            if rec["text"] is None or lps is None or len(lps) != hi - lo + 1:
                return combined(records)
            probs = normalize([float(v) for v in lps])
            if probs is None:
                return combined(records)
            return {score_col: float(sum(s * p for s, p in zip(scores, probs))), probs_col: probs}, None

        return expected
    return combined
