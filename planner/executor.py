"""The executor: runs a plan on ``collect()``; nothing runs before.

Relational nodes become one polars ``LazyFrame`` query (polars does the dataframe
work). An LLM node collects its input, renders one request per row and sample,
looks every request up in the LMDB cache, sends only the distinct misses to the
engine, and commits each engine batch to the cache as it returns. Every node is
evaluated once per collect, keyed by fingerprint, so a subplan reached twice runs
once.

Engines are created on the first cache miss for their model (a fully cached run
loads no model) and closed when the collect ends.

In *dry-run* mode (used by ``explain()``) LLM nodes read the cache only: misses are
counted, not computed, and downstream requests that depend on a value not computed
yet are counted as calls.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Container, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from lazyllm.backends.progress import progress_interval
from lazyllm.backends.registry import check_training_installed, engine_factory, resolve_executor
from lazyllm.core.errors import PlanError
from lazyllm.core.hashing import model_fingerprint
from lazyllm.core.layout import RUN_LOG_FORMAT
from lazyllm.core.system import NOT_INSTALLED, library_versions
from lazyllm.core.protocols import TOKEN_COUNTER_HOOK, Engine, Message, ModelSpec

from .budget import Budget, BudgetLedger, check_prices
from .nodes import DataFrameSource, FileSource, Head, LLMNode, PlanNode, wave_chain
from .optimizer import optimize as _optimize, shared_subplans
from .scheduler import run_chain
from .stats import NodeStats
from .train import TrainedModel, engine_spec, ensure_trained, untrained_models
from .workspace import Workspace, resolve_workspace

__all__ = ["collect", "collect_all", "dry_run", "fit", "sink_partitioned", "NodeStats", "RunResult", "model_fingerprint"]

log = logging.getLogger("lazyllm")

#: libraries whose versions a run log records
_RUN_LOG_LIBRARIES = ("lazyllm-frame", "polars", "torch", "transformers", "jinja2", "lmdb")


@dataclass
class RunResult:
    frames: list[pl.DataFrame]
    stats: dict[str, NodeStats] = field(default_factory=dict)
    seconds: float = 0.0
    log_path: Path | None = None
    #: Ray executor only: per-replica records (model, replica, pid, node, batches, requests,
    #: output_tokens, failures, busy_seconds, first_batch_seconds, deaths, steady_tokens, steady_seconds,
    #: tokens_per_second).
    replicas: list[dict[str, Any]] = field(default_factory=list)


class _Context:
    def __init__(self, workspace: Workspace, *, dry_run: bool, progress: bool, executor: Any = None,
                 budget: Budget | None = None) -> None:
        self.workspace = workspace
        #: the collect's cost/token budget: every engine submission passes it (:mod:`.budget`)
        self.budget = BudgetLedger(budget) if budget is not None and budget.active else None
        self.executor = executor  # None (this process) or a lazyllm.backends.distributed.RayExecutor
        self.replica_stats: list[dict[str, Any]] = []
        self.dry_run = dry_run
        self.progress = progress
        self.memo: dict[str, pl.LazyFrame] = {}
        #: dry run: node fingerprint -> the LLM nodes that read its output (:func:`_llm_above`)
        self.llm_above: dict[str, frozenset[str]] = {}
        self.stats: dict[str, NodeStats] = {}
        self.engines: dict[str, Engine] = {}
        self._counters: dict[str, tuple[Callable[[Sequence[Message]], int], str]] = {}
        self._console: Any = None

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False)
        return self._console

    def evaluate(self, node: PlanNode) -> pl.LazyFrame:
        """The rows of ``node`` in this run (memoised by fingerprint), as a LazyFrame."""
        return _evaluate(node, self)

    def say(self, text: str) -> None:
        log.info(text)
        if self.progress:
            self.console.print(f"[dim]lazyllm[/dim] {text}")

    def engine(self, spec: ModelSpec) -> Engine:
        key = model_fingerprint(spec)
        if key not in self.engines:
            plain = spec
            if isinstance(spec, TrainedModel):  # train first (cached), then serve its weights folder
                ensure_trained(spec, self)
                plain = engine_spec(spec, self.workspace.path)
            run_spec = plain.runtime_spec()  # the engine that runs it (a performance setting)
            factory = engine_factory(run_spec.provider)  # also checks the provider before a cluster starts
            if self.executor is not None:  # replicas get the plain spec: never a training plan
                self.engines[key] = self.executor.engine(run_spec, workspace=self.workspace.path)
                self.say(f"{spec.display_name} · {getattr(self.engines[key], 'parallelism', 1)} replicas on {self.executor.name}")
            else:
                self.engines[key] = factory(run_spec, workspace=self.workspace.path)
        if self.budget is not None:
            return self.budget.guard(self.engines[key], spec, self.token_counter(spec)[0])
        return self.engines[key]

    @contextmanager
    def progress_bars(self, labels: Sequence[str]) -> Iterator["_Bars"]:
        """One progress display per LLM node: rows done / rows, cache hits, output tokens
        per second, elapsed time and ETA (nothing when progress is off).

        On a terminal these are rich progress bars. When stderr is not a terminal (a log
        file, CI, ``nohup``), rich draws nothing, so a plain line per node is printed
        instead, at most every ``LAZYLLM_PROGRESS_INTERVAL`` seconds (default 10) and once
        when the node finishes.
        """
        if not self.progress:
            yield _Bars(None, [], list(labels))
            return
        if not self.console.is_terminal:
            yield _Bars(None, [], list(labels), plain=self.console, interval=progress_interval())
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                       TextColumn("{task.fields[hits]} cached"), TextColumn("{task.fields[rate]}"),
                       TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=True)
        with bar:
            yield _Bars(bar, [bar.add_task(label, total=None, hits=0, rate="") for label in labels], list(labels))

    def token_counter(self, spec: ModelSpec) -> tuple[Callable[[Sequence[Message]], int], str]:
        """A prompt-token counter for ``spec``: the engine's tokenizer when it offers one
        cheaply (no weights loaded), else about 4 characters per token plus 4 tokens of
        chat formatting per message (a rule of thumb for English text)."""
        key = model_fingerprint(spec)
        if key not in self._counters:
            counter = None
            try:
                run_spec = spec.runtime_spec()
                hook = getattr(engine_factory(run_spec.provider), TOKEN_COUNTER_HOOK, None)
                counter = hook(run_spec, workspace=self.workspace.path) if hook is not None else None
            except Exception as exc:  # noqa: BLE001 - an estimate must never fail explain()
                log.debug("no tokenizer for %s: %s", spec.display_name, exc)
            if counter is not None:
                self._counters[key] = (counter, "tokenizer")
            else:
                self._counters[key] = (lambda msgs: sum(len(m.content) // 4 + 4 for m in msgs), "chars/4")
        return self._counters[key]

    def close(self) -> None:
        if self.executor is not None:
            self.replica_stats.extend(self.executor.replica_stats(list(self.engines.values())))
            for rec in self.replica_stats:
                self.say(f"replica {rec['replica']} of {rec['model']}: {rec['requests']} requests in "
                         f"{rec['batches']} batches · {rec['output_tokens']} output tokens · "
                         f"{rec['tokens_per_second']} tok/s busy · {rec['failures']} failed · {rec['deaths']} deaths")
        for engine in self.engines.values():
            try:
                engine.close()
            except Exception as exc:  # noqa: BLE001 - closing must not hide the real error
                log.warning("closing engine %s failed: %s", engine.spec.display_name, exc)
        self.engines.clear()


class _Bars:
    """Progress of the LLM nodes of one scheduler run: rich bars, plain log lines, or nothing."""

    def __init__(self, progress: Any, tasks: list[Any], labels: list[str], *, plain: Any = None,
                 interval: float = 10.0) -> None:
        self.progress, self.tasks, self.labels = progress, tasks, labels
        self.start = time.perf_counter()
        self.plain, self.interval = plain, interval
        # per node: (time work started, rows done then, output tokens then), last line printed, finished
        self._began: dict[int, tuple[float, int, int]] = {}
        self._last: dict[int, float] = {}
        self._finished: set[int] = set()

    def refresh(self, i: int, *, done: int, total: int, hits: int, tokens: int) -> None:
        if self.progress is not None:
            rate = tokens / max(time.perf_counter() - self.start, 1e-9)
            self.progress.update(self.tasks[i], completed=done, total=total, hits=hits, rate=f"{rate:.0f} tok/s")
        if self.plain is None or i in self._finished or total == 0:
            return
        now = time.perf_counter()
        if i not in self._began or self._began[i][1:] == (done, tokens):
            # the node's clock starts at its last refresh without progress (not while it waits upstream)
            self._began[i] = (now, done, tokens)
            self._last[i] = now
            if done < total:
                return
        finished = done >= total
        if not finished and now - self._last[i] < self.interval:
            return
        self._last[i] = now
        began, done0, tokens0 = self._began[i]
        elapsed = max(now - began, 1e-9)
        line = (f"{self.labels[i]}: {done}/{total} rows · {hits} cached · "
                f"{(tokens - tokens0) / elapsed:.0f} output tok/s · {elapsed:.0f} s")
        if finished:
            self._finished.add(i)
            line += " · done"
        elif done > done0:
            line += f" · ETA {(total - done) * elapsed / (done - done0):.0f} s"
        self.plain.print(f"lazyllm {line}", highlight=False, markup=False, soft_wrap=True)


def _progress_enabled(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    return os.environ.get("LAZYLLM_QUIET", "") in ("", "0")


def collect_all(
    roots: Sequence[PlanNode],
    *,
    workspace: "str | os.PathLike[str] | Workspace | None" = None,
    progress: bool | None = None,
    optimize: bool = True,
    executor: Any = None,
    budget: Budget | None = None,
) -> RunResult:
    """Execute plans together: a subplan shared by several roots runs once.

    With ``optimize`` (default) each plan is first rewritten by the optimizer rules.
    ``executor``: ``"local"`` (this process), ``"ray"`` or a
    :class:`lazyllm.backends.distributed.RayExecutor`; None reads ``LAZYLLM_EXECUTOR``.
    ``budget``: a :class:`~lazyllm.planner.budget.Budget` the run's LLM calls must stay within.
    """
    chosen = resolve_executor(executor)
    ws = resolve_workspace(workspace)
    logical = list(roots)
    fired: list[list[tuple[str, str]]] = [[] for _ in roots]
    if optimize:
        shared = shared_subplans(roots)  # run once for every root that reads them
        results = [_optimize(r, shared=shared) for r in roots]
        roots = [r.plan for r in results]
        fired = [r.fired for r in results]
    pending = untrained_models(roots, ws.path)
    if pending:  # a missing trainer fails now, not after the LLM work that feeds the training
        check_training_installed(f"Training {pending[0].display_name} (Frame.train)")
    if budget is not None:
        check_prices(roots, budget)  # before anything runs
    ctx = _Context(ws, dry_run=False, progress=_progress_enabled(progress), executor=chosen, budget=budget)
    start = time.perf_counter()
    try:
        frames = [_evaluate(root, ctx).collect() for root in roots]
    finally:
        ctx.close()
    if ctx.budget is not None and ctx.budget.refused:
        ctx.say(f"budget reached ({budget.describe()}): {ctx.budget.refused} requests not sent; "  # type: ignore[union-attr]
                "rerun with a larger budget to continue from the cache")
    result = RunResult(frames, ctx.stats, time.perf_counter() - start, replicas=ctx.replica_stats)
    result.log_path = _write_run_log(ws, logical, roots, fired, result)
    return result


def fit(model: TrainedModel, *, workspace: "str | os.PathLike[str] | Workspace | None" = None,
        progress: bool | None = None) -> dict[str, Any]:
    """Train ``model`` now (collecting its training data first) unless already trained;
    return the metrics. Cost: the LLM work of the data subplan (cached like any collect)
    plus the training."""
    ctx = _Context(resolve_workspace(workspace), dry_run=False, progress=_progress_enabled(progress))
    try:
        return ensure_trained(model, ctx)
    finally:
        ctx.close()


def collect(node: PlanNode, **kwargs: Any) -> RunResult:
    """Execute one plan. See :func:`collect_all`."""
    return collect_all([node], **kwargs)


def dry_run(roots: Sequence[PlanNode], workspace: "str | os.PathLike[str] | Workspace | None" = None) -> dict[str, NodeStats]:
    """Predict the LLM work of ``roots`` (as given, not optimized) from the cache, calling no model."""
    ws = resolve_workspace(workspace)
    ctx = _Context(ws, dry_run=True, progress=False)
    ctx.llm_above = _llm_above(roots)
    for root in roots:
        _evaluate(root, ctx).collect()
    return ctx.stats


#: A dry run of an LLM chain over more input rows than this runs on a uniform sample of
#: :data:`EXPLAIN_SAMPLE_ROWS` rows (``LAZYLLM_EXPLAIN_SAMPLE``: sample size, 0 = never sample).
EXPLAIN_SAMPLE_ABOVE = 50_000
EXPLAIN_SAMPLE_ROWS = 20_000


def _sample_size() -> int:
    return int(os.environ.get("LAZYLLM_EXPLAIN_SAMPLE", EXPLAIN_SAMPLE_ROWS))


def _llm_above(roots: Sequence[PlanNode]) -> dict[str, frozenset[str]]:
    """For every node of the plans, the LLM nodes above it on any path to a root (the nodes
    that read its output, directly or through relational nodes)."""
    above: dict[str, frozenset[str]] = {}

    def walk(node: PlanNode, llm: frozenset[str]) -> None:
        seen = above.get(node.fingerprint)
        if seen is not None and llm <= seen:
            return
        above[node.fingerprint] = llm if seen is None else seen | llm
        below = llm | {node.fingerprint} if isinstance(node, LLMNode) else llm
        for child in node.children:
            walk(child, below)

    for root in roots:
        walk(root, frozenset())
    return above


def _may_sample(chain: Sequence[LLMNode], ctx: _Context) -> bool:
    """A dry run may evaluate ``chain`` on a sample of rows when no LLM node outside the
    chain reads its nodes' output: only LLM nodes' statistics are kept from a dry run, so
    a sample changes nothing but this chain's figures (which are scaled). A chain feeding
    another LLM node runs on every row, so the nodes above see the real rows."""
    mine = {n.fingerprint for n in chain}
    return all(ctx.llm_above.get(n.fingerprint, frozenset({""})) <= mine for n in chain)


def _sample_rows(df: pl.DataFrame, n: int) -> pl.DataFrame:
    """A uniform sample of ``n`` rows of ``df``, in input order, the same on every run (seeded)."""
    return df.with_row_index("__lazyllm_row").sample(n=n, seed=0).sort("__lazyllm_row").drop("__lazyllm_row")


def _scale_stats(stats: NodeStats, total: int, sampled: int) -> None:
    """Scale a sampled dry run's counts to ``total`` input rows; set the calls' 95% interval."""
    factor = total / sampled
    unique, calls = stats.unique_requests, stats.calls
    for name in ("rows_in", "requests", "unique_requests", "cache_hits", "calls", "failures", "uncertain_rows",
                 "est_input_tokens", "est_output_tokens"):
        setattr(stats, name, round(getattr(stats, name) * factor))
    if stats.est_cost is not None:
        stats.est_cost *= factor
    stats.sample_rows, stats.rows_total = sampled, total
    if unique:
        lo, hi = _wilson(min(calls, unique), unique)
        stats.calls_interval = (math.floor(lo * stats.unique_requests), math.ceil(hi * stats.unique_requests))
    else:
        stats.calls_interval = (0, 0)


def _wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (95% by default)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _evaluate(node: PlanNode, ctx: _Context) -> pl.LazyFrame:
    fp = node.fingerprint
    if fp in ctx.memo:
        return ctx.memo[fp]
    if isinstance(node, Head) and node.waves and wave_chain(node.child) is not None:
        out = _run_waves(node, ctx)
    elif isinstance(node, LLMNode):
        chain = [node]  # stacked LLM nodes run together (batched across nodes, pipelined per row)
        while isinstance(chain[-1].child, LLMNode) and chain[-1].child.fingerprint not in ctx.memo:
            chain.append(chain[-1].child)
        chain.reverse()
        df = _evaluate(chain[0].child, ctx).collect()
        total, size = df.height, _sample_size()
        sampled = (ctx.dry_run and size > 0 and total > max(EXPLAIN_SAMPLE_ABOVE, size)
                   and _may_sample(chain, ctx))
        outputs = run_chain(chain, _sample_rows(df, size) if sampled else df, ctx)
        if sampled:  # only LLM nodes' statistics are kept from a dry run: scale them to every row
            for n in chain:
                _scale_stats(ctx.stats[n.fingerprint], total, size)
        for n, frame in zip(chain, outputs):
            ctx.memo[n.fingerprint] = frame.lazy()
        return ctx.memo[fp]
    elif isinstance(node, (DataFrameSource, FileSource)):
        out = node.apply()
    else:
        inputs = [_evaluate(c, ctx) for c in node.children]
        out = node.apply(*inputs)
    ctx.memo[fp] = out
    return out


def _run_waves(head: Head, ctx: _Context) -> pl.LazyFrame:
    """Run the filters and LLM nodes under ``head`` on successive slices of their input
    until ``head.n`` rows pass. The nodes keep input order and decide each row alone,
    so the first n passing rows are the same as when every row is processed.

    Only row-by-row nodes run in waves (:func:`~lazyllm.planner.nodes.wave_chain`, from
    the nodes' traits): a node that reads other rows ends the chain and runs on every
    row, below the waves.

    The first wave has n rows; later waves are sized from the pass rate so far
    (remaining / rate x 1.2, at least 8 rows).
    """
    chain = wave_chain(head.child) or []
    base = chain[-1].children[0]
    base_df = _evaluate(base, ctx).collect()
    parts: list[pl.DataFrame] = []
    passed = start = 0
    size = max(head.n, 1)
    while True:
        wave = base_df.slice(start, size)
        parts.append(_evaluate_slice(chain, wave, f"rows {start}..{start + wave.height}", ctx))
        passed += parts[-1].height
        start += wave.height
        if passed >= head.n or start >= base_df.height:
            break
        rate = max(passed / start, 0.05)
        size = max(8, int((head.n - passed) / rate * 1.2) + 1)
    if len(parts) > 1:
        ctx.say(f"head {head.n}: {passed} rows passed after {start} of {base_df.height} input rows "
                f"({len(parts)} waves)")
    return pl.concat(parts).head(head.n).lazy()


def partition_chain(root: PlanNode) -> tuple[list[PlanNode], PlanNode]:
    """The nodes above the source (top first) and the source, when every node is
    row-by-row (trait :meth:`~lazyllm.planner.nodes.PlanNode.row_by_row`), so the plan
    can run partition by partition.

    Raises
    ------
    PlanError
        A node needs every row at once (a sort, join, aggregate, head, sample, a
        non-elementwise expression), named in the message.
    """

    chain: list[PlanNode] = []
    node = root
    while not isinstance(node, (DataFrameSource, FileSource)):
        if not node.row_by_row():
            raise PlanError(
                f"sink_parquet() runs the plan one partition at a time, but {node.kind} needs every row at once. "
                "Only LLM operators, elementwise filters, with_columns and selects, drops and renames "
                "can run by partition: use collect() or write_parquet() for this plan."
            )
        chain.append(node)
        node = node.children[0]
    return chain, node


def _local_partitions(source: PlanNode, rows: int) -> Iterator[pl.DataFrame]:
    """Slices of at most ``rows`` rows, file by file, reading one slice at a time."""
    if isinstance(source, FileSource) and source.format == "parquet":
        for path in source.paths:
            lf = pl.scan_parquet(path, **dict(source.options))
            total = lf.select(pl.len()).collect().item()
            for start in range(0, max(total, 1), rows):
                yield lf.slice(start, rows).collect()
        return
    df = source.apply().collect()
    yield from (df.iter_slices(rows) if df.height else [df])


def sink_partitioned(
    root: PlanNode,
    directory: "str | os.PathLike[str]",
    *,
    rows_per_shard: int = 100_000,
    workspace: "str | os.PathLike[str] | Workspace | None" = None,
    progress: bool | None = None,
    optimize: bool = True,
    executor: Any = None,
    skip: Container[int] = (),
    on_shard: "Callable[[int, int, pl.DataFrame, Path, dict[str, NodeStats]], None] | None" = None,
    budget: Budget | None = None,
) -> tuple[list[Path], RunResult]:
    """Run a row-by-row plan one input partition at a time and write each partition's
    result as ``part-00000.parquet``, ``part-00001.parquet``, ... in ``directory``.

    The driver holds one partition (at most ``rows_per_shard`` input rows) at a time;
    engines stay loaded across partitions and every LLM result is committed to the
    cache as usual, so a killed run resumes. With the Ray executor, parquet sources
    are read in partitions by Ray Data tasks on the cluster. Shards are written to a
    temporary name and renamed, so a shard file is always complete.

    ``skip`` holds partition indices not to run (their shards exist elsewhere, e.g. on the
    Hub): they are read but neither evaluated nor written. ``on_shard(index, rows_in, df,
    path, stats)`` is called after each shard is written, with the run's cumulative stats
    (keys: node fingerprints of the original plan). ``budget`` covers every partition together.

    Returns the shard paths and the run's stats (``frames`` is empty: nothing is
    gathered).

    Raises
    ------
    PlanError
        The plan has a node that needs every row at once (see :func:`partition_chain`),
        or ``rows_per_shard`` < 1; raised before anything is read or any model loaded.
    """

    if rows_per_shard < 1:
        raise PlanError(f"rows_per_shard must be at least 1, got {rows_per_shard}.")
    chosen = resolve_executor(executor)
    ws = resolve_workspace(workspace)
    plan, fired = root, []
    if optimize:
        res = _optimize(root)
        plan, fired = res.plan, res.fired
    chain, source = partition_chain(plan)
    if budget is not None:
        check_prices([plan], budget)
    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("part-*.parquet"):
        old.unlink()  # shards of an earlier run would mix with this one's
    ctx = _Context(ws, dry_run=False, progress=_progress_enabled(progress), executor=chosen, budget=budget)
    if chosen is not None and isinstance(source, FileSource) and source.format == "parquet":
        parts: Iterator[pl.DataFrame] = chosen.read_parquet(source.paths, rows_per_shard, dict(source.options))
    else:
        parts = _local_partitions(source, rows_per_shard)
    shards: list[Path] = []
    rows_out = 0
    start = time.perf_counter()
    try:
        for i, part in enumerate(parts):
            if i in skip:
                continue
            ctx.memo = {}  # nothing of an earlier partition is kept
            df = _evaluate_slice(chain, part, f"partition {i}", ctx)
            path = out_dir / f"part-{i:05d}.parquet"
            tmp = path.with_suffix(".parquet.tmp")
            df.write_parquet(tmp)
            os.replace(tmp, path)
            shards.append(path)
            rows_out += df.height
            ctx.say(f"shard {path.name}: {part.height} rows in, {df.height} rows out")
            if on_shard is not None:
                on_shard(i, part.height, df, path, ctx.stats)
    finally:
        ctx.close()
    result = RunResult([], ctx.stats, time.perf_counter() - start, replicas=ctx.replica_stats)
    result.log_path = _write_run_log(ws, [root], [plan], [fired], result, rows=[rows_out])
    return shards, result


def _evaluate_slice(chain: list[PlanNode], data: pl.DataFrame, label: str, ctx: _Context) -> pl.DataFrame:
    """Run ``chain`` (row-by-row nodes, top first) on ``data`` in place of its source, and
    add the LLM stats to those of the chain's own nodes."""
    plan: PlanNode = DataFrameSource(data=data, label=label)
    for node in reversed(chain):
        plan = node.with_children(plan)
    before = set(ctx.stats)
    out = _evaluate(plan, ctx).collect()
    _fold_wave_stats(ctx, before, chain, plan)
    return out


def _fold_wave_stats(ctx: _Context, before: set[str], chain: list[PlanNode], wave_root: PlanNode) -> None:
    """Add a wave's LLM stats to the stats of the nodes of the original plan."""
    wave_nodes: list[PlanNode] = []
    node = wave_root
    while node.children:
        wave_nodes.append(node)
        node = node.children[0]
    for original, wave_node in zip(chain, wave_nodes):
        fp = wave_node.fingerprint
        if fp not in ctx.stats or fp in before:
            continue
        got = ctx.stats.pop(fp)
        total = ctx.stats.setdefault(original.fingerprint, NodeStats(original.fingerprint, got.kind, got.column,
                                                                       got.model))
        for f in ("rows_in", "requests", "unique_requests", "cache_hits", "calls", "failures", "input_tokens",
                  "output_tokens", "reasoning_tokens", "uncertain_rows", "est_input_tokens", "est_output_tokens"):
            setattr(total, f, getattr(total, f) + getattr(got, f))
        total.seconds += got.seconds
        # a dry run's estimates under waves: the bases and the cost add up too
        total.input_basis = total.input_basis or got.input_basis
        total.output_basis = total.output_basis or got.output_basis
        if got.est_cost is not None:
            total.est_cost = (total.est_cost or 0.0) + got.est_cost

        for f in ("input_tokens_histogram", "output_tokens_histogram"):
            hist = getattr(total, f)
            for tokens, n in getattr(got, f).items():
                hist[tokens] = hist.get(tokens, 0) + n


# ------------------------------------------------------------------------------------
# Run log
# ------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    return {k: v for k, v in library_versions(_RUN_LOG_LIBRARIES).items() if v != NOT_INSTALLED}


def _write_run_log(ws: Workspace, logical: Sequence[PlanNode], roots: Sequence[PlanNode],
                   fired: Sequence[Sequence[tuple[str, str]]], result: RunResult,
                   rows: Sequence[int] | None = None) -> Path | None:
    """One JSON file per collect in ``<workspace>/runs/``: what ran, with which stats.

    ``frames[i]`` holds the logical fingerprint of the i-th collected frame (as
    ``Frame.fingerprint`` shows it), the fingerprint of its optimized plan (the keys
    of ``nodes``' stats), the rules that fired and the row count.
    """
    record = {
        "format": RUN_LOG_FORMAT,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "frames": [
            {"fingerprint": lg.fingerprint, "optimized": r.fingerprint, "rows": f,
             "rules_fired": [f"{name}: {note}" for name, note in fr]}
            for lg, r, f, fr in zip(logical, roots, rows if rows is not None else [f.height for f in result.frames],
                                    fired)
        ],
        "seconds": result.seconds,
        "nodes": [asdict(s) for s in result.stats.values()],
        "replicas": result.replicas,
        "versions": _versions(),
    }
    try:
        return ws.write_run_log(logical[0].fingerprint if logical else "empty", record)
    except OSError as exc:  # a read-only workspace must not fail a finished collect
        log.warning("could not write the run log: %s", exc)
        return None
