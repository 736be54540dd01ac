"""The LLM scheduler: runs a chain of stacked LLM nodes over the same rows.

A *chain* is a maximal run of LLM nodes stacked directly on one another (after the
optimizer has moved cheap filters and limits below them). Each is row-local, so row
*i* of an upper node needs only row *i* of the nodes below it. The scheduler:

- renders each node's request for a row as soon as the columns it reads are known
  for that row (from the input or from a lower node's output: per-row pipelining);
- looks every request up in the LMDB cache and de-duplicates identical requests
  (same model fingerprint, messages, sampling parameters, seed and sample index):
  one engine call fans out to every row that needs it;
- keeps one ready queue per model; requests from different nodes that target the
  same model go to the engine together, in batches of the engine's batch size
  (cross-operator batching), upstream nodes' requests first, then longest prompts;
- commits each returned batch to the cache before anything else happens;
- finishes one model's queue before it switches to another, and keeps each engine
  loaded until the end of the collect, so a model is loaded at most once.

In a dry run (``explain()``) nothing is sent: misses are counted, and requests that
depend on a value not computed yet are counted as calls of their own.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl

from lazyllm.backends.errors import EngineError, TemplateError
from lazyllm.backends.protocols import Message, Request, Response

from .cache import request_key
from .nodes import Generate
from .templates import PromptTemplate

if TYPE_CHECKING:
    from .executor import NodeStats, _Context

__all__ = ["run_chain", "UNCOMPUTED"]

#: Stands for an LLM value that a dry run has not computed.
UNCOMPUTED = "\u2047uncomputed\u2047"


@dataclass
class _NodeState:
    node: Generate
    stats: "NodeStats"
    model_fp: str
    deps: list[int]  # chain indices of the lower nodes this node reads from
    prompt: PromptTemplate
    system: PromptTemplate | None
    rows: int
    values: list[Any] = field(default_factory=list)  # per row: str, list of str, or None
    errors: list[str | None] = field(default_factory=list)
    done: list[bool] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)  # per row: samples not delivered yet
    rendered: list[bool] = field(default_factory=list)
    keys: set[bytes] = field(default_factory=set)  # distinct requests of this node
    uncertain_rows: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.values = [None] * self.rows
        self.errors = [None] * self.rows
        self.done = [False] * self.rows
        self.pending = [self.node.n] * self.rows
        self.rendered = [False] * self.rows


@dataclass
class _Work:
    """One distinct request and the (node, row, sample) slots waiting for it."""

    key: bytes
    request: Request
    node_index: int  # the node that queued it (its model runs it; its stats count the call)
    size: int
    slots: list[tuple[int, int, int]] = field(default_factory=list)


def _deps(chain: Sequence[Generate], i: int) -> list[int]:
    """Nearest lower writer of each column node ``i`` reads (chain is bottom -> top)."""
    out: set[int] = set()
    for col in chain[i].columns_read():
        for j in range(i - 1, -1, -1):
            if col in chain[j].columns_written():
                out.add(j)
                break
    return sorted(out)


class _ChainRun:
    def __init__(self, chain: Sequence[Generate], df: pl.DataFrame, ctx: "_Context") -> None:
        from .executor import NodeStats, model_fingerprint

        self.chain, self.df, self.ctx = chain, df, ctx
        self.cache = ctx.workspace.cache
        rows = df.height
        self.states: list[_NodeState] = []
        for i, node in enumerate(chain):
            templates = node.templates()
            st = _NodeState(
                node=node,
                stats=NodeStats(node.fingerprint, node.kind, node.column, node.model.display_name, rows_in=rows),
                model_fp=model_fingerprint(node.model),
                deps=_deps(chain, i),
                prompt=templates[0],
                system=templates[1] if len(templates) > 1 else None,
                rows=rows,
            )
            ctx.stats[node.fingerprint] = st.stats
            self.states.append(st)
        self.dependents = [[j for j, st in enumerate(self.states) if i in st.deps] for i in range(len(chain))]
        cols = sorted(set().union(*(n.columns_read() for n in chain)) & set(df.columns))
        self.input_rows = df.select(cols).to_dicts() if cols else [{} for _ in range(rows)]
        self.samples: dict[tuple[int, int], list[str | None]] = {}
        self.sample_errors: dict[tuple[int, int], list[str]] = defaultdict(list)
        self.queues: dict[str, dict[bytes, _Work]] = defaultdict(dict)  # model fp -> key -> work
        self.queued: dict[bytes, _Work] = {}
        self.known: dict[bytes, Response] = {}  # responses seen in this run (cache hits or computed)
        self.from_cache: set[bytes] = set()

    # -- per-row bookkeeping -------------------------------------------------------------
    def row_context(self, i: int, r: int) -> dict[str, Any]:
        row = dict(self.input_rows[r])
        for st in self.states[:i]:
            row[st.node.column] = st.values[r]
            row[st.node.error_column] = st.errors[r]
        return row

    def finish_row(self, i: int, r: int) -> list[tuple[int, int]]:
        st = self.states[i]
        texts = self.samples.pop((i, r), [None] * st.node.n)
        errs = self.sample_errors.pop((i, r), [])
        st.values[r] = texts[0] if st.node.n == 1 else texts
        st.errors[r] = "; ".join(errs) if errs else None
        st.done[r] = True
        return [(j, r) for j in self.dependents[i]]

    def deliver(self, i: int, r: int, s: int, response: Response) -> list[tuple[int, int]]:
        st = self.states[i]
        texts = self.samples.setdefault((i, r), [None] * st.node.n)
        if response.error is None:
            texts[s] = response.text
        else:
            self.sample_errors[(i, r)].append(response.error if st.node.n == 1 else f"sample {s}: {response.error}")
        st.pending[r] -= 1
        return self.finish_row(i, r) if st.pending[r] == 0 else []

    def make_ready(self, items: list[tuple[int, int]]) -> None:
        """Render the requests of (node, row) pairs whose inputs are known; serve known ones."""
        todo = items
        while todo:
            slots_by_key: dict[bytes, list[tuple[int, int, int]]] = defaultdict(list)
            first: dict[bytes, tuple[Request, int, bool]] = {}
            next_todo: list[tuple[int, int]] = []
            for i, r in todo:
                st = self.states[i]
                if st.rendered[r] or any(not self.states[d].done[r] for d in st.deps):
                    continue
                st.rendered[r] = True
                row = self.row_context(i, r)
                try:
                    messages = ([Message("system", st.system.render(row))] if st.system else []) + [
                        Message("user", st.prompt.render(row))
                    ]
                except TemplateError as exc:
                    self.sample_errors[(i, r)].append(str(exc))
                    st.pending[r] = 0
                    st.stats.failures += 1
                    next_todo.extend(self.finish_row(i, r))
                    continue
                uncertain = self.ctx.dry_run and any(UNCOMPUTED in m.content for m in messages)
                if uncertain:
                    st.uncertain_rows.add(r)
                for s in range(st.node.n):
                    req = Request(messages=tuple(messages), params=st.node.sampling, sample_index=s)
                    key = request_key(st.model_fp, req)
                    if uncertain:  # depends on a value not computed yet: a call of its own
                        key = hashlib.sha256(key + f"{i}:{r}:{s}".encode()).digest()
                    st.stats.requests += 1
                    st.keys.add(key)
                    slots_by_key[key].append((i, r, s))
                    first.setdefault(key, (req, i, uncertain))
            lookup = [k for k, (_, _, unc) in first.items() if not unc and k not in self.known and k not in self.queued]
            for key, response in self.cache.get_many(lookup).items():
                self.known[key] = response
                self.from_cache.add(key)
            for key, slots in slots_by_key.items():
                if key in self.known:
                    for i, r, s in slots:
                        next_todo.extend(self.deliver(i, r, s, self.known[key]))
                    continue
                work = self.queued.get(key)
                if work is None:
                    req, i, _ = first[key]
                    work = _Work(key, req, i, size=sum(len(m.content) for m in req.messages))
                    self.queues[self.states[i].model_fp][key] = work
                    self.queued[key] = work
                work.slots.extend(slots)
            todo = next_todo

    # -- running -------------------------------------------------------------------------
    def run(self) -> list[pl.DataFrame]:
        start = time.perf_counter()
        self.make_ready([(i, r) for i, st in enumerate(self.states) if not st.deps for r in range(self.df.height)])
        if self.ctx.dry_run:
            self._dry_drain()
        else:
            self._drain()
        elapsed = time.perf_counter() - start
        outputs, current = [], self.df
        for st in self.states:
            st.stats.unique_requests = len(st.keys)
            st.stats.cache_hits = len(st.keys & self.from_cache)
            st.stats.uncertain_rows = len(st.uncertain_rows)
            st.stats.seconds = elapsed
            current = current.with_columns(
                pl.Series(st.node.column, st.values, dtype=st.node.output_dtype()),
                pl.Series(st.node.error_column, st.errors, dtype=pl.String),
            )
            outputs.append(current)
        return outputs

    def _take(self, model_fp: str, n: int) -> list[_Work]:
        q = self.queues[model_fp]
        # upstream nodes first (their results unlock downstream requests), then longest prompts
        keys = sorted(q, key=lambda k: (q[k].node_index, -q[k].size))[:n]
        works = [q.pop(k) for k in keys]
        for w in works:
            del self.queued[w.key]
            self.states[w.node_index].stats.calls += 1
        return works

    def _complete(self, works: list[_Work], responses: dict[int, Response]) -> int:
        ready: list[tuple[int, int]] = []
        tokens = 0
        for j, work in enumerate(works):
            response = responses.get(j) or Response(text=None, finish_reason="error",
                                                    error="the engine returned no response")
            owner = self.states[work.node_index].stats
            if response.error is not None:
                owner.failures += 1
            else:
                self.known[work.key] = response
            owner.input_tokens += response.input_tokens
            owner.output_tokens += response.output_tokens
            tokens += response.output_tokens
            for i, r, s in work.slots:
                ready.extend(self.deliver(i, r, s, response))
        self.make_ready(ready)
        return tokens

    def _dry_drain(self) -> None:
        while any(self.queues.values()):
            fp = next(fp for fp, q in self.queues.items() if q)
            works = self._take(fp, len(self.queues[fp]))
            self._complete(works, {j: Response(text=UNCOMPUTED) for j in range(len(works))})

    def _drain(self) -> None:
        """Send queued work to the engines, one model at a time, batch by batch."""
        ctx = self.ctx
        announced: set[int] = set()
        with ctx.progress_bar(self._label()) as bar:
            current: str | None = None
            while any(self.queues.values()):
                if not self.queues.get(current or ""):
                    current = next(fp for fp, q in self.queues.items() if q)  # finish a model before switching
                assert current is not None
                spec = self.chain[next(iter(self.queues[current].values())).node_index].model
                for i, st in enumerate(self.states):
                    if st.model_fp == current and i not in announced:
                        announced.add(i)
                        ctx.say(f"generate {st.node.column!r} · {spec.display_name} · {st.stats.rows_in} rows · "
                                f"{len(st.keys & self.from_cache)} served from cache so far")
                engine = ctx.engine(spec)
                works = self._take(current, int(getattr(spec, "batch_size", 32) or 32))
                bar.update(total=sum(len(q) for q in self.queues.values()) + len(works))
                responses: dict[int, Response] = {}
                try:
                    for part in engine.generate([w.request for w in works]):
                        part = list(part)
                        self.cache.put_many([(works[j].key, resp) for j, resp in part], model=current)
                        responses.update(part)
                except (KeyboardInterrupt, SystemExit, EngineError):
                    raise
                except Exception as exc:  # noqa: BLE001 - keep what was committed, name the engine
                    raise EngineError(
                        f"The {spec.display_name} engine failed: {exc}. Completed batches are in the cache; "
                        "rerun to resume."
                    ) from exc
                bar.advance(len(works), self._complete(works, responses))
        for st in self.states:
            if st.stats.calls:
                ctx.say(f"generate {st.node.column!r} done · {st.stats.calls} calls · "
                         f"{len(st.keys & self.from_cache)} cache hits · "
                        f"{st.stats.output_tokens} output tokens · {st.stats.failures} failed")

    def _label(self) -> str:
        names = ", ".join(st.node.column for st in self.states)
        return f"generate {names}"


def run_chain(chain: Sequence[Generate], df: pl.DataFrame, ctx: "_Context") -> list[pl.DataFrame]:
    """Run ``chain`` (bottom node first) over ``df``; return the output frame of each node."""
    return _ChainRun(chain, df, ctx).run()
