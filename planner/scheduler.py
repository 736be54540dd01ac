"""The LLM scheduler: runs a chain of stacked LLM nodes over the same rows.

A *chain* is a maximal run of LLM nodes stacked directly on one another (after the
optimizer has moved cheap filters and limits below them). Each is row-local, so row
*i* of an upper node needs only row *i* of the nodes below it. The scheduler:

- renders each node's requests for a row as soon as the columns it reads are known
  for that row (from the input or from a lower node's output: per-row pipelining);
  a row dropped by an LLM filter below a node is never sent for that node;
- looks every request up in the LMDB cache and de-duplicates identical requests
  (same model fingerprint, messages, sampling parameters, seed and sample index):
  one engine call fans out to every row that needs it;
- keeps one ready queue per model; requests from different nodes that target the
  same model go to the engine together (cross-operator batching), upstream nodes'
  requests first, then longest prompts;
- keeps the engine full: through the engine's streaming session
  (:func:`~lazyllm.core.protocols.open_session`) every ready request is submitted as
  soon as the engine has room, so a row's next request joins the running batch the
  moment its input is answered (engines with only ``generate`` get batches of their
  batch size, one at a time);
- commits responses to the cache as they arrive, before anything is computed from
  them, so a crash loses at most what is in flight; an engine that answers faster than
  :data:`COMMIT_WINDOW` has its answers grouped into one write transaction per window,
  longer when commits are slow (a commit's flush costs milliseconds, and more the more
  pages it writes: the window grows until commits take at most :data:`COMMIT_SHARE` of
  the time, up to :data:`COMMIT_HOLD_MAX` and :data:`COMMIT_MAX_ANSWERS`), so a
  ``kill -9`` loses at most the batch in flight plus the answers of the last window (at
  most a second of them);
- shares work with other processes collecting on the same workspace: a batch's
  requests are leased first (:meth:`PromptCache.lease`); requests another live
  process has leased are not sent but awaited, and read from the cache when they
  land (or sent here once that lease lapses);
- finishes one model's queue before it switches to another, and keeps each engine
  loaded until the end of the collect, so a model is loaded at most once.

In a dry run (``explain()``) nothing is sent: misses are counted, and requests that
depend on a value not computed yet are counted as calls of their own.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import heapq
import itertools
import json
import math
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import polars as pl

from lazyllm.core.errors import EngineError, TemplateError
from lazyllm.core.hashing import model_fingerprint
from lazyllm.core.protocols import Message, Request, Response, open_session
from lazyllm.core.redact import redact

from .budget import is_refusal
from .cache import lease_owner, lease_seconds, message_key, request_key
from .collector import FullCollections, collect_deferred, gc_paused, paced_collections
from .columnar import plain_answer, plain_text, serve_columns
from .nodes import Generate, Judge, LLMNode, PairwiseJudge, Reward
from .stats import NodeStats
from .train import TrainedModel, content_fingerprint, ensure_trained

__all__ = ["run_chain", "UNCOMPUTED"]

#: Seconds between two looks at the cache while waiting for requests other processes lease.
_AWAIT_POLL = 0.2

#: Engine batches leased in one LMDB write transaction: the batch about to be sent and the
#: next ones of its model's queue (leased ahead: sent without another lease transaction while
#: their lease is fresh, see :meth:`_ChainRun._lease`).
LEASE_AHEAD = 8
#: Seconds of answers that may wait for one write transaction (see :meth:`_ChainRun._stream`):
#: answers that arrive less than this after the last commit are committed with the next ones,
#: so an engine whose batches take longer than this commits each batch on its own, and a fast
#: engine pays one flush per window instead of one per batch. Never for answers other nodes wait
#: for (their rows go on at once), nor with a continuous engine session.
COMMIT_WINDOW = 0.1
#: Largest share of wall time a fast engine's commits may take: after a commit that took ``t``
#: seconds, answers wait up to ``t / COMMIT_SHARE`` seconds (at least :data:`COMMIT_WINDOW`, at most
#: :data:`COMMIT_HOLD_MAX`) for the next one. A commit's cost grows with the random B-tree pages it
#: rewrites and flushes, far less than with its size (measured: 300k answers in commits of 2,000
#: took 11.9 µs per answer, in commits of 32,000 4.7; ``benchmarks/RESULTS.md``).
COMMIT_SHARE = 0.05
#: Longest a fast engine's answers wait for their commit, in seconds: what a ``kill -9`` may lose
#: beyond the batch in flight.
COMMIT_HOLD_MAX = 1.0
#: Most answers one commit of held answers takes. With random keys each answer dirties about one
#: 4 KiB B-tree page, which LMDB keeps in memory until the commit and cannot reuse in the file
#: within it: 8,192 answers hold about 32 MiB (a streamed 1M-row job with 100k-row partitions
#: peaked at 1,182 MiB with 40,000-answer commits, 796 MiB with 0.1 s windows).
COMMIT_MAX_ANSWERS = 8192
#: Seconds between two progress refreshes while responses stream in.
_REFRESH = 0.2
#: Largest share of wall time the progress refreshes may take: a refresh walks every row and every
#: key (a million rows: about 5 ms with no cache hit, about 170 ms when all are hits, as in a run
#: resumed near its end), so on large inputs they come less often than every :data:`_REFRESH`.
REFRESH_SHARE = 0.02

#: Stands for an LLM value that a dry run has not computed.
UNCOMPUTED = "\u2047uncomputed\u2047"


@dataclass
class _NodeState:
    node: LLMNode
    stats: "NodeStats"
    model_fp: str
    deps: list[int]  # chain indices of the lower nodes this node waits for
    rows: int
    values: dict[str, list[Any]] = field(default_factory=dict)  # output column -> per-row values
    errors: list[str | None] = field(default_factory=list)
    done: list[bool] = field(default_factory=list)
    rendered: list[bool] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)  # per row: responses not delivered yet
    keys: set[bytes] = field(default_factory=set)  # distinct requests of this node
    #: keys whose tokens are in the histograms already (cache hits the columnar path served)
    counted: set[bytes] = field(default_factory=set)
    uncertain_rows: set[int] = field(default_factory=set)
    #: per row, the messages rendered in bulk (polars) when the node reads only input columns
    #: through plain templates (:meth:`LLMNode.messages_column`); None: rendered row by row
    bulk: list[Any] | None = None
    #: with ``bulk``, when the node's requests depend on a row only through its messages: the
    #: requests of one row (messages aside); a row's keys are computed from these and its
    #: messages, and its requests are built only when sent (cache misses)
    shapes: list[Request] | None = None

    def __post_init__(self) -> None:
        self.values = {c: [None] * self.rows for c in self.node.output_schema()}
        self.errors = [None] * self.rows
        self.done = [False] * self.rows
        self.rendered = [False] * self.rows
        self.pending = [0] * self.rows

    def store(self, r: int, values: dict[str, Any], error: str | None, row: Callable[[], dict[str, Any]]) -> None:
        """Store row ``r``'s output: ``values`` from the node's ``combine`` (through its
        ``row_values``, which may call ``row()`` for the row's columns) and ``error``
        (counted as a failure); the row is done. The one place both the per-row path and
        the columnar path (:mod:`lazyllm.planner.columnar`) write a computed row."""
        for col, value in self.node.row_values(values, row).items():
            self.values[col][r] = value
        self.errors[r] = error
        if error is not None:
            self.stats.failures += 1
        self.done[r] = True

    def plain_row(self, r: int, text: str, dependents: list[int]) -> list[tuple[int, int]]:
        """Row ``r`` of a plain generation (:func:`plain_text`) answered with ``text``, with
        neither error nor reasoning trace: ``combine``'s value (the text) without a
        ``Response`` list; returns the (node, row) pairs made ready."""
        self.pending[r] = 0
        self.values[self.node.column][r] = text
        self.done[r] = True
        return [(j, r) for j in dependents]


@dataclass(slots=True)
class _Work:
    """One distinct request and the (node, row, request index) slots waiting for it."""

    key: bytes
    request: Request
    node_index: int  # the node that queued it (its model runs it; its stats count the call)
    size: int
    slots: list[tuple[int, int, int]] = field(default_factory=list)


def _deps(chain: Sequence[LLMNode], i: int) -> list[int]:
    """Nearest lower writer of each column node ``i`` reads, and every LLM filter below it."""
    out: set[int] = {j for j in range(i) if chain[j].filters_rows}
    for col in chain[i].columns_read():
        for j in range(i - 1, -1, -1):
            if col in chain[j].output_schema() or col == chain[j].error_column:
                out.add(j)
                break
    return sorted(out)


class _ChainRun:
    def __init__(self, chain: Sequence[LLMNode], df: pl.DataFrame, ctx: Any) -> None:
        self.chain, self.df, self.ctx = chain, df, ctx
        self.cache = ctx.workspace.cache
        rows = df.height
        self.states: list[_NodeState] = []
        for node in chain:
            node.check_input(df)  # bad input values fail here, before any request is sent
        for i, node in enumerate(chain):
            st = _NodeState(
                node=node,
                stats=NodeStats(node.fingerprint, node.kind, node.column, node.model.display_name, rows_in=0),
                model_fp=_cache_model_fingerprint(node.model, ctx),
                deps=_deps(chain, i),
                rows=rows,
            )
            if not st.deps:  # reads input columns only: render every row at once when the templates allow
                with gc_paused():  # a whole column of messages: millions of acyclic objects
                    st.bulk = node.messages_column(df)
                if st.bulk is not None and node.requests_from_messages:
                    st.shapes = node.requests_for({}, (Message("user", ""),))
            ctx.stats[node.fingerprint] = st.stats
            self.states.append(st)
        #: per node: a plain generation of one sample, whose value is the answer's text (:func:`plain_text`)
        self._plain = [plain_text(node) and not ctx.dry_run for node in chain]
        self.filters = [i for i, n in enumerate(chain) if n.filters_rows]
        # per node: the kept-row lists of the LLM filters below it
        self._filters_below = [[self.states[f].values[chain[f].column] for f in self.filters if f < i]
                               for i in range(len(chain))]
        self.dependents = [[j for j, st in enumerate(self.states) if i in st.deps] for i in range(len(chain))]
        self._input_rows: list[dict[str, Any]] | None = None  # built when a row's context is first needed
        self.responses: dict[tuple[int, int], list[Response | None]] = {}
        self.queues: dict[str, dict[bytes, _Work]] = defaultdict(dict)  # model fp -> key -> work
        self.queued: dict[bytes, _Work] = {}
        # per model: a heap of (node index, -prompt size, arrival, key) over the queue, so taking a
        # batch costs O(batch log n) (stale entries, already taken, are skipped when popped)
        self._order: dict[str, list[tuple[int, int, int, bytes]]] = defaultdict(list)
        # per model: a sorted run of entries out of the heap: those :meth:`_peek` popped to look ahead
        # and those queued a column at once (:meth:`_enqueue_run`); :meth:`_take` takes from it and the
        # heap, smallest first, so the order is that of one heap of every entry
        self._peeked: dict[str, deque[tuple[int, int, int, bytes]]] = defaultdict(deque)
        self._arrivals = itertools.count()
        self.known: dict[bytes, Response] = {}  # responses seen in this run (cache hits or computed)
        self._full = FullCollections()  # replaced by run()'s, which paces full collections while it runs
        self._hold = COMMIT_WINDOW  # seconds a fast engine's answers may wait for their commit (see _commit)
        self.from_cache: set[bytes] = set()
        self.unknown: set[tuple[int, int]] = set()  # dry run: (node, row) outputs not computed yet
        self.owner = lease_owner()  # leases of this run's requests in flight
        self.awaited: dict[bytes, _Work] = {}  # leased by another process: awaited from the cache
        self.ahead: set[bytes] = set()  # queued requests leased ahead by this run, not sent yet
        self._ahead_at = 0.0  # time.monotonic() of the lease transaction that took ``ahead``
        self._refreshed = 0.0  # when the progress bars were last refreshed
        self._refresh_cost = 0.0  # seconds the last refresh took

    # -- per-row bookkeeping -------------------------------------------------------------
    def alive(self, i: int, r: int) -> bool:
        """Row ``r`` passed every LLM filter below node ``i``."""
        below = self._filters_below[i]
        return not below or all(keep[r] for keep in below)

    @property
    def input_rows(self) -> list[dict[str, Any]]:
        """The input columns the chain reads, one dict per row (built on first use: rows the
        columnar path serves from the cache never need them)."""
        if self._input_rows is None:
            cols = sorted(set().union(*(n.columns_read() for n in self.chain)) & set(self.df.columns))
            self._input_rows = (self.df.select(cols).to_dicts() if cols
                                else [{} for _ in range(self.df.height)])
        return self._input_rows

    def row_context(self, i: int, r: int) -> dict[str, Any]:
        row = dict(self.input_rows[r])
        for st in self.states[:i]:
            for col, vals in st.values.items():
                row[col] = vals[r]
            row[st.node.error_column] = st.errors[r]
        return row

    def finish_row(self, i: int, r: int, responses: list[Response] | None) -> list[tuple[int, int]]:
        st = self.states[i]
        if responses is not None and any(resp.finish_reason == "dry-run" for resp in responses):
            self.unknown.add((i, r))  # a dry run did not compute this output
        if responses is not None:
            values, error = st.node.combine(responses)
            st.store(r, values, error, lambda: self.row_context(i, r))
        st.done[r] = True
        return [(j, r) for j in self.dependents[i]]

    def fail_row(self, i: int, r: int, error: str) -> list[tuple[int, int]]:
        st = self.states[i]
        for col, value in st.node.failed_values().items():
            st.values[col][r] = value
        st.errors[r] = error
        st.stats.failures += 1
        st.done[r] = True
        return [(j, r) for j in self.dependents[i]]

    def deliver(self, i: int, r: int, k: int, response: Response) -> list[tuple[int, int]]:
        st = self.states[i]
        st.pending[r] -= 1
        got = self.responses.get((i, r))
        if got is None:  # a row of one request queued by :meth:`queue_rows`: nothing to gather
            return self.finish_row(i, r, [response])
        got[k] = response
        if st.pending[r] == 0:
            return self.finish_row(i, r, self.responses.pop((i, r)))  # type: ignore[arg-type]
        return []

    def make_ready(self, items: list[tuple[int, int]]) -> None:
        """Render the requests of (node, row) pairs whose inputs are known; serve known ones."""
        todo = items
        while todo:
            slots_by_key: dict[bytes, list[tuple[int, int, int]]] = defaultdict(list)
            first: dict[bytes, tuple[Request, int, bool, tuple[Message, ...] | None]] = {}
            next_todo: list[tuple[int, int]] = []
            for i, r in todo:
                st = self.states[i]
                if st.rendered[r] or (st.deps and any(not self.states[d].done[r] for d in st.deps)):
                    continue
                st.rendered[r] = True
                if not self.alive(i, r):  # dropped by an LLM filter below: nothing to send
                    next_todo.extend(self.finish_row(i, r, None))
                    continue
                st.stats.rows_in += 1
                row = self.row_context(i, r)
                # rendered in bulk: a row renders to None exactly when a template input is null
                nulls = st.node.null_inputs(row) if st.bulk is None or st.bulk[r] is None else None
                if nulls:  # never render None into a prompt: the row fails, naming the input
                    next_todo.extend(self.fail_row(i, r, st.node.null_error(nulls)))
                    continue
                messages: tuple[Message, ...] | None = None  # with shapes: the row's messages
                try:
                    if st.shapes is not None:
                        requests, messages = st.shapes, st.bulk[r]  # type: ignore[index]
                        st.bulk[r] = None  # type: ignore[index]  # rendered once: let the memory go
                    elif st.bulk is None:
                        requests = st.node.requests_for(st.node.context(row))
                    else:
                        requests = st.node.requests_for(st.node.context(row), st.bulk[r])
                        st.bulk[r] = None  # rendered once (see ``rendered``): let the memory go
                except TemplateError as exc:
                    next_todo.extend(self.fail_row(i, r, str(exc)))
                    continue
                uncertain = self.ctx.dry_run and (
                    any((d, r) in self.unknown for d in st.deps)
                    or any(UNCOMPUTED in m.content for req in requests
                           for m in (req.messages if messages is None else messages))
                )
                if uncertain:
                    st.uncertain_rows.add(r)
                    self.unknown.add((i, r))
                self.responses[(i, r)] = [None] * len(requests)
                st.pending[r] = len(requests)
                for k, req in enumerate(requests):
                    if messages is None:
                        key = request_key(st.model_fp, req)
                    else:
                        key = message_key(st.model_fp, req, messages)
                    if uncertain:  # depends on a value not computed yet: a call of its own
                        key = hashlib.sha256(key + f"{i}:{r}:{k}".encode()).digest()
                    st.stats.requests += 1
                    st.keys.add(key)
                    slots_by_key[key].append((i, r, k))
                    if key not in first:
                        first[key] = (req, i, uncertain, messages)
            lookup = [k for k, (_, _, unc, _) in first.items()
                      if not unc and k not in self.known and k not in self.queued]
            for key, response in self.cache.get_many(lookup).items():
                self.known[key] = response
                self.from_cache.add(key)
            for key, slots in slots_by_key.items():
                if key in self.known:
                    for i, r, k in slots:
                        next_todo.extend(self.deliver(i, r, k, self.known[key]))
                    continue
                work = self.queued.get(key) or self.awaited.get(key)
                if work is None:
                    req, i, _, messages = first[key]
                    if messages is not None:  # a cache miss: build its request now
                        req = dataclasses.replace(req, messages=messages)
                    work = _Work(key, req, i, size=sum(len(m.content) for m in req.messages))
                    self._enqueue(work)
                work.slots.extend(slots)
            todo = next_todo

    def queue_rows(self, i: int, rows: Sequence[tuple[int, Sequence[bytes]]],
                   request: Callable[[int, int], Request]) -> list[tuple[int, int]]:
        """Queue the rows of node ``i`` that the columnar path rendered and keyed, the column at once.

        Parameters
        ----------
        i : int
            The node's index in the chain.
        rows : sequence of (int, sequence of bytes)
            Per row: its index and the keys of its requests (one per sample).
        request : callable (row, request index) -> Request
            Builds one request; called once per distinct key that is neither known nor
            queued (a cache miss sent by this run), so duplicates build nothing.

        Returns
        -------
        list of (int, int)
            The (node, row) pairs made ready by responses already known.

        Known responses are delivered; the other requests join the model's queue at once
        (:meth:`_enqueue_run`, in the order :meth:`_take` keeps); a row of one request keeps no
        gathering list (:meth:`deliver` finishes it with its response). As
        :meth:`make_ready` queues rows, without a ``Request`` per cached row.
        """
        st = self.states[i]
        known, queued, awaited, pending = self.known, self.queued, self.awaited, st.pending
        ready: list[tuple[int, int]] = []
        new: list[_Work] = []
        for r, keys in rows:
            pending[r] = len(keys)
            if len(keys) > 1:
                self.responses[(i, r)] = [None] * len(keys)
            for k, key in enumerate(keys):
                response = known.get(key)
                if response is not None:
                    ready.extend(self.deliver(i, r, k, response))
                    continue
                work = queued.get(key) or awaited.get(key)
                if work is None:
                    req = request(r, k)
                    messages = req.messages
                    size = len(messages[0].content) if len(messages) == 1 else sum(len(m.content) for m in messages)
                    work = queued[key] = _Work(key, req, i, size, [(i, r, k)])
                    new.append(work)
                    continue
                work.slots.append((i, r, k))
        if new:
            self._enqueue_run(st.model_fp, i, new)
        return ready

    # -- running -------------------------------------------------------------------------
    def run(self) -> list[pl.DataFrame]:
        start = time.perf_counter()
        # the run's per-row objects live until it ends: full collections paced, not one per quarter of growth
        with paced_collections() as self._full:
            self.make_ready(serve_columns(self))  # cached columns at once; the other rows row by row
            if self.ctx.dry_run:
                self._dry_drain()
            else:
                try:
                    self._drain()
                finally:  # leases taken ahead and not sent go back to the other processes at once
                    self.cache.release(self.ahead | set(self.queued), self.owner)
                    self.ahead.clear()
            elapsed = time.perf_counter() - start
            with gc_paused():  # whole columns again
                return self._outputs(elapsed)

    def _outputs(self, elapsed: float) -> list[pl.DataFrame]:
        """Each node's output frame, and its statistics finished (``elapsed``: seconds of the run)."""
        outputs: list[pl.DataFrame] = []
        current = self.df
        index = list(range(self.df.height))  # input rows still in the frame
        for st in self.states:
            st.stats.unique_requests = len(st.keys)
            st.stats.cache_hits = len(st.keys & self.from_cache)
            st.stats.uncertain_rows = len(st.uncertain_rows)
            st.stats.seconds = elapsed
            if not self.ctx.dry_run:  # the keys the columnar path counted are not looked at again
                known = self.known
                responses = [r for key in (st.keys - st.counted if st.counted else st.keys)
                             if (r := known.get(key)) is not None]
                st.stats.count_tokens([r.input_tokens for r in responses], [r.output_tokens for r in responses])
            schema = st.node.output_schema()
            if st.node.filters_rows:
                keep = st.values[st.node.column]
                mask = [bool(keep[r]) for r in index]
                index = [r for r, m in zip(index, mask) if m]
                current = current.filter(pl.Series(mask, dtype=pl.Boolean))
            else:
                current = current.with_columns(
                    *[pl.Series(col, _pick(st.values[col], index), dtype=dtype) for col, dtype in schema.items()],
                    pl.Series(st.node.error_column, _pick(st.errors, index), dtype=pl.String),
                )
            outputs.append(current)
        return outputs

    def _enqueue(self, work: _Work) -> None:
        fp = self.states[work.node_index].model_fp
        self.queues[fp][work.key] = work
        self.queued[work.key] = work
        heapq.heappush(self._order[fp], (work.node_index, -work.size, next(self._arrivals), work.key))

    def _enqueue_run(self, model_fp: str, i: int, works: list[_Work]) -> None:
        """Queue ``works`` of node ``i`` (model ``model_fp``, in arrival order, already in
        ``self.queued``) at once: their entries sorted once (a stable sort by prompt size, so
        equal sizes keep their arrival order, which is the entries' order) and merged into the
        model's look-ahead, a sorted run :meth:`_take` takes from its head, instead of a heap
        push and pop each (``O(log n)`` tuple comparisons per work)."""
        q, arrivals = self.queues[model_fp], self._arrivals
        entries = []
        for work in works:
            q[work.key] = work
            entries.append((i, -work.size, next(arrivals), work.key))
        entries.sort(key=itemgetter(1))  # by minus the prompt size
        peeked = self._peeked[model_fp]
        self._peeked[model_fp] = deque(sorted([*peeked, *entries]) if peeked else entries)

    def _take(self, model_fp: str, n: int) -> list[_Work]:
        """Up to ``n`` queued works of one model: upstream nodes first (their results unlock
        downstream requests), then the longest prompts, then in arrival order."""
        q, order, peeked = self.queues[model_fp], self._order[model_fp], self._peeked[model_fp]
        works: list[_Work] = []
        while (order or peeked) and len(works) < n:
            if peeked and (not order or peeked[0] < order[0]):
                key = peeked.popleft()[3]
            else:
                key = heapq.heappop(order)[3]
            work = q.pop(key, None)
            if work is not None:  # else a stale entry: taken already
                del self.queued[key]
                works.append(work)
        return works

    def _count_calls(self, works: list[_Work]) -> None:
        for w in works:
            self.states[w.node_index].stats.calls += 1

    def _complete(self, works: Sequence[_Work], responses: Sequence[Response | None]) -> int:
        """Deliver ``responses[j]`` to every slot of ``works[j]`` (an error response where it is
        None); responses without error become known. Returns the output tokens."""
        ready: list[tuple[int, int]] = []
        tokens = 0
        plain = self._plain
        for work, response in zip(works, responses, strict=True):
            if response is None:
                response = Response(text=None, finish_reason="error", error="the engine returned no response")
            owner = self.states[work.node_index].stats
            if response.error is None:
                self.known[work.key] = response
            elif is_refusal(response):
                owner.calls -= 1  # counted when taken; the budget did not send it
            owner.input_tokens += response.input_tokens
            owner.output_tokens += response.output_tokens
            owner.reasoning_tokens += response.reasoning_tokens
            tokens += response.output_tokens
            text = response.text if response.error is None and plain_answer(response.text, response.reasoning) else None
            for i, r, k in work.slots:
                if text is not None and plain[i] and k == 0 and (i, r) not in self.responses:
                    ready.extend(self.states[i].plain_row(r, text, self.dependents[i]))  # what combine gives
                    continue
                ready.extend(self.deliver(i, r, k, response))
        self.make_ready(ready)
        return tokens

    def _lease(self, works: list[_Work]) -> list[_Work]:
        """The works this run may send: leased here. Works cached meanwhile are served; works
        leased by another live process are awaited (:meth:`_await_others`).

        One write transaction leases the batch and the next ``LEASE_AHEAD - 1`` batches of its
        model's queue; a later batch whose every request was leased ahead, less than
        :func:`_ahead_fresh` seconds ago, is sent without a transaction. Requests leased ahead
        are never sent by another process; those not sent are released when the run ends
        (a killed process's leases lapse at once on this machine, as before)."""
        if not works:
            return works
        fresh = time.monotonic() - self._ahead_at < _ahead_fresh()
        if fresh and all(w.key in self.ahead for w in works):
            self.ahead.difference_update(w.key for w in works)
            return works
        ahead = self._peek(self.states[works[0].node_index].model_fp, (LEASE_AHEAD - 1) * len(works))
        got = self.cache.lease([w.key for w in works] + ahead, self.owner, misses=True)
        acquired = set(got.acquired)
        self.ahead = {k for k in ahead if k in acquired}
        self._ahead_at = time.monotonic()
        if all(w.key in acquired for w in works):
            return works
        by_key = {w.key: w for w in works}
        for key in got.elsewhere:
            if key in by_key:
                self.awaited[key] = by_key[key]
        self._serve_cached([by_key[k] for k in got.cached if k in by_key])
        return [w for w in works if w.key in acquired]

    def _peek(self, model_fp: str, n: int) -> list[bytes]:
        """The keys of the next ``n`` queued works of one model, in :meth:`_take`'s order,
        left in the queue (heap entries popped once into the model's look-ahead, where
        :meth:`_take` finds them)."""
        if n <= 0:
            return []
        q, order, peeked = self.queues[model_fp], self._order[model_fp], self._peeked[model_fp]
        head: list[tuple[int, int, int, bytes]] = []  # the look-ahead's first n live entries, in order
        while peeked and len(head) < n:
            entry = peeked.popleft()
            if entry[3] in q:  # else a stale entry: taken already
                head.append(entry)
        # heap entries before the n-th: into the head (all of it precedes what is left of the look-ahead)
        while order and (len(head) < n or order[0] < head[n - 1]):
            entry = heapq.heappop(order)
            if entry[3] in q:
                bisect.insort(head, entry)  # at the end, unless queued after the last look-ahead
        peeked.extendleft(reversed(head))
        return [entry[3] for entry in head[:n]]

    def _serve_cached(self, works: list[_Work]) -> bool:
        """Complete the works whose responses another process has stored; True if any was."""
        found = self.cache.get_many([w.key for w in works]) if works else {}
        done = [w for w in works if w.key in found]
        self.from_cache.update(found)
        if done:
            self._complete(done, [found[w.key] for w in done])
        return bool(done)

    def _await_others(self, sleep: bool = True) -> None:
        """Wait for requests leased by other processes: serve those now in the cache, take back
        those whose lease lapsed (expired, or its process is gone); sleeps a poll interval
        when neither happened and ``sleep``."""
        awaited = list(self.awaited.values())
        live = self.cache.leased_elsewhere([w.key for w in awaited], self.owner)
        found = self.cache.get_many([w.key for w in awaited])
        for w in awaited:
            if w.key in found or w.key not in live:
                del self.awaited[w.key]
        lapsed = [w for w in awaited if w.key not in found and w.key not in live]
        for w in lapsed:  # sent by this run after all
            self._enqueue(w)
        served = self._serve_cached([w for w in awaited if w.key in found])
        if sleep and not served and not lapsed:
            time.sleep(_AWAIT_POLL)

    def _dry_drain(self) -> None:
        while any(self.queues.values()):
            fp = next(fp for fp, q in self.queues.items() if q)
            works = self._take(fp, len(self.queues[fp]))
            self._count_calls(works)
            self._estimate(works)
            # an uncomputed value: LLM filters keep the row (an upper bound), other nodes see a placeholder
            self._complete(works, [_placeholder(self.states[w.node_index].node, w.key) for w in works])

    def _estimate(self, works: list[_Work]) -> None:
        """Dry run: estimated input/output tokens and cost of the calls to make."""
        for i, st in enumerate(self.states):
            mine = [w for w in works if w.node_index == i]
            if not mine:
                continue
            count, basis = self.ctx.token_counter(st.node.model)
            st.stats.est_input_tokens += sum(count(w.request.messages) for w in mine)
            st.stats.input_basis = basis
            cached = [self.known[k].output_tokens for k in st.keys & self.from_cache]
            if cached:
                mean = sum(cached) / len(cached)
                st.stats.est_output_tokens += round(mean * len(mine))
                st.stats.output_basis = "cached mean"
            else:
                st.stats.est_output_tokens += sum(w.request.params.max_tokens for w in mine)
                st.stats.output_basis = "max_tokens"
            prices = st.node.model.prices()
            if prices is not None:
                st.stats.est_cost = (st.stats.est_input_tokens * prices[0]
                                     + st.stats.est_output_tokens * prices[1]) / 1e6

    def _drain(self) -> None:
        """Stream queued work into the engines, one model at a time (see :meth:`_stream`)."""
        ctx = self.ctx
        announced: set[int] = set()
        with ctx.progress_bars([_what(st.node) for st in self.states]) as bars:
            self._refresh(bars, force=True)
            current: str | None = None
            while any(self.queues.values()) or self.awaited:
                if not any(self.queues.values()):  # what is left is in flight in other processes
                    self._await_others()
                    self._refresh(bars)
                    continue
                if not self.queues.get(current or ""):
                    current = next(fp for fp, q in self.queues.items() if q)  # finish a model before switching
                assert current is not None
                spec = self.chain[next(iter(self.queues[current].values())).node_index].model
                for i, st in enumerate(self.states):
                    if st.model_fp == current and i not in announced:
                        announced.add(i)
                        ctx.say(f"{_what(st.node)} · {spec.display_name} · starts")
                self._stream(current, spec, ctx.engine(spec), bars)
            self._refresh(bars, force=True)
        for st in self.states:
            hits = len(st.keys & self.from_cache)
            if st.stats.calls:
                ctx.say(f"{_what(st.node)} done · {st.stats.rows_in} rows · {st.stats.calls} LLM calls · "
                        f"{hits} cache hits · {st.stats.output_tokens} output tokens · {st.stats.failures} failed")
            elif st.stats.requests:
                ctx.say(f"{_what(st.node)} · {st.stats.rows_in} rows · served from cache")

    def _stream(self, model_fp: str, spec: Any, engine: Any, bars: Any) -> None:
        """Keep ``engine`` full with the queue of one model until that queue is empty and
        nothing of it is in flight.

        Every ready request is submitted as soon as there is room (the session's
        ``capacity``; a non-continuous session takes a batch only when the previous one
        has finished), leased first. Responses are committed to the cache as they
        arrive (each poll's group in one transaction, leases released with it), then
        delivered, which queues the requests that depended on them: with a continuous
        session they join the running batch at the next submission.

        With a non-continuous session, answers that no other node of the chain waits
        for and that arrive less than the hold after the last commit are delivered at
        once (their rows are done: nothing is computed from them) and committed with the
        next answers: one transaction, one flush, for every batch answered within the
        hold. The hold is :data:`COMMIT_WINDOW`, longer after a slow commit: long enough
        that commits take at most :data:`COMMIT_SHARE` of the time, never longer than
        :data:`COMMIT_HOLD_MAX` nor for more than :data:`COMMIT_MAX_ANSWERS` answers.
        Answers are held only while the engine's last two answers each came within the
        window (a steadily fast engine): a poll blocks until the next answers, so after a
        burst (replicas finishing together) the held answers would wait for a whole batch. Answers some node waits for are
        committed, with those waiting, before they are delivered. Whatever ends the
        loop (the queue done, an exception, Ctrl-C), answers still waiting are
        committed first.
        """
        session = open_session(engine)
        inflight: dict[int, _Work] = {}
        sending: list[_Work] = []
        waiting: list[tuple[_Work, Response]] = []  # answered and delivered, committed with the next window
        committed = arrived = time.monotonic()  # when the last answers were committed, and arrived
        gaps = (0.0, 0.0)  # the last two intervals between answers (the loop's start counts as one)
        looked = time.perf_counter()  # when the cache was last looked at for awaited work
        try:
            while True:
                queue = self.queues.get(model_fp)
                room = session.capacity - len(inflight)
                if queue and room > 0 and (session.continuous or not inflight):
                    works = self._lease(self._take(model_fp, room))
                    if works:
                        self._count_calls(works)
                        sending = works  # leased: released below if the submission fails
                        inflight.update(zip(session.submit([w.request for w in works]), works, strict=True))
                        sending = []
                        continue  # leasing may have served works and queued more: fill again
                if not inflight:
                    if waiting:  # nothing else runs: commit what was answered
                        got, waiting = waiting, []
                        self._commit(got, model_fp)
                        committed = time.monotonic()
                    if not self.queues.get(model_fp):
                        return
                    continue  # what was taken was served from the cache or leased elsewhere
                # with work awaited from other processes, look at the cache now and then
                part = session.poll(_AWAIT_POLL if self.awaited else None)
                if self.awaited and time.perf_counter() - looked >= _AWAIT_POLL:
                    looked = time.perf_counter()
                    self._await_others(sleep=False)
                if not part:
                    continue
                got = [(inflight.pop(t), resp) for t, resp in part if t in inflight]
                waiting.extend(got)
                now = time.monotonic()
                gaps, arrived = (gaps[1], now - arrived), now
                if (session.continuous or now - committed >= self._hold or max(gaps) >= COMMIT_WINDOW
                        or len(waiting) >= COMMIT_MAX_ANSWERS
                        or any(self.dependents[i] for w, _ in got for i, _, _ in w.slots)):
                    ours, waiting = waiting, []
                    self._commit(ours, model_fp)  # before anything is computed from these answers
                    committed = arrived = time.monotonic()  # the engine's next gap does not count the commit
                if got:
                    works, responses = zip(*got)
                    self._complete(works, responses)
                self._refresh(bars)
                self._full.tick()
        except (KeyboardInterrupt, SystemExit, EngineError):
            raise
        except Exception as exc:  # noqa: BLE001 - keep what was committed, name the engine
            # the chained cause is printed with the traceback: no credential in it either
            exc.args = tuple(redact(a) if isinstance(a, str) else a for a in exc.args)
            raise EngineError(
                f"The {spec.display_name} engine failed: {exc}. Completed requests are in the cache; "
                "rerun to resume."
            ) from exc
        finally:  # answers are kept; what was not answered goes back to the other processes at once
            if waiting:
                ours, waiting = waiting, []
                self._commit(ours, model_fp)
            if inflight or sending:
                self.cache.release([w.key for w in [*inflight.values(), *sending]], self.owner)
                session.close()

    def _commit(self, got: list[tuple[_Work, Response]], model_fp: str) -> None:
        """Commit answered works in one write transaction, then release their leases
        (:meth:`PromptCache.put_many`); the next answers of a fast engine wait for their commit
        as long as :data:`COMMIT_SHARE` allows."""
        start = time.monotonic()
        self.cache.put_many([(w.key, resp) for w, resp in got], model=model_fp, owner=self.owner)
        self._hold = max(COMMIT_WINDOW, min(COMMIT_HOLD_MAX, (time.monotonic() - start) / COMMIT_SHARE))

    def _refresh(self, bars: Any, force: bool = False) -> None:
        """Update the progress bars (at most every :data:`_REFRESH` seconds, or the plain lines'
        interval when shorter, and never more than :data:`REFRESH_SHARE` of the time, unless
        ``force``): each refresh counts the rows done and the cache hits, a walk over every row."""
        now = time.perf_counter()
        every = max(min(_REFRESH, getattr(bars, "interval", _REFRESH)), self._refresh_cost / REFRESH_SHARE)
        if not force and now - self._refreshed < every:
            return
        self._refreshed = now
        for i, st in enumerate(self.states):
            bars.refresh(i, done=sum(st.done), total=len(st.done), hits=len(st.keys & self.from_cache),
                         tokens=st.stats.output_tokens)
        self._refresh_cost = time.perf_counter() - now


def _ahead_fresh() -> float:
    """Seconds a lease taken ahead stays good for sending: a tenth of the lease duration, at
    most 30 s, so a request leased ahead keeps nearly all of its lease while in flight."""
    return min(30.0, lease_seconds() / 10)


def _cache_model_fingerprint(model: Any, ctx: Any) -> str:
    """The model part of the cache keys of a node's requests. A trained model is keyed by
    its content (plan, training rows, base content: :func:`~lazyllm.planner.train.content_fingerprint`),
    so its cached generations never outlive its weights: it is trained (or its cached training
    checked against the current rows) before the lookups. A dry run predicts with the training
    on disk, or the plan fingerprint when there is none."""
    if not isinstance(model, TrainedModel):
        return model_fingerprint(model)
    if not ctx.dry_run:
        ensure_trained(model, ctx)
    return content_fingerprint(model, ctx.workspace.path) or model_fingerprint(model)


def _pick(values: list[Any], index: list[int]) -> list[Any]:
    """``values`` at the rows in ``index``; the list itself when no row was dropped."""
    return values if len(index) == len(values) else [values[r] for r in index]


def _what(node: LLMNode) -> str:
    return "llm filter" if node.filters_rows else f"{node.kind.lower()} {node.column!r}"


def _placeholder(node: LLMNode, key: bytes) -> Response:
    """A dry run's stand-in for an answer not computed yet: optimistic, so that estimates
    downstream are upper bounds (an LLM filter keeps the row, a judge gives the top score)."""
    text = f"{UNCOMPUTED}{key.hex()[:12]}"  # distinct per request, like real answers
    logprobs: tuple[float, ...] | None = None
    if node.filters_rows:
        text = "yes"
    elif isinstance(node, Judge):
        text = json.dumps({"rationale": UNCOMPUTED, "score": node.scale[1]}) if node.rationale else str(node.scale[1])
        logprobs = tuple(0.0 if s == node.scale[1] else -math.inf for s in node.scores())
    elif isinstance(node, PairwiseJudge):
        text = "C"
        logprobs = (-math.inf, -math.inf, 0.0)
    elif isinstance(node, Generate) and node.choices:
        text = node.choices[0]
    elif isinstance(node, Reward):
        return Response(text="0.0", finish_reason="dry-run", score=0.0)
    return Response(text=text, finish_reason="dry-run", choice_logprobs=logprobs)


def run_chain(chain: Sequence[LLMNode], df: pl.DataFrame, ctx: Any) -> list[pl.DataFrame]:
    """Run ``chain`` (bottom node first) over ``df``; return the output frame of each node."""
    outputs = _ChainRun(chain, df, ctx).run()
    collect_deferred()  # the run's objects are freed: a full collection it held back walks little now
    return outputs
