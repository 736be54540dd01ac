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
import os
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl

from lazyllm.backends.errors import EngineError, TemplateError
from lazyllm.backends.protocols import Engine, Message, ModelSpec, Request, Response
from lazyllm.backends.registry import engine_factory

from .cache import request_key
from .fingerprint import hash_canonical
from .nodes import DataFrameSource, FileSource, Generate, PlanNode
from .templates import PromptTemplate
from .workspace import Workspace, resolve_workspace

__all__ = ["collect", "collect_all", "dry_run", "NodeStats", "RunResult", "model_fingerprint"]

log = logging.getLogger("lazyllm")

#: Stands for an LLM value that a dry run has not computed.
UNCOMPUTED = "\u2047uncomputed\u2047"


def model_fingerprint(spec: ModelSpec) -> str:
    """Fingerprint of a model spec (its identity, without performance-only options)."""
    return hash_canonical({"model": spec})


@dataclass
class NodeStats:
    """What one LLM node did (or, in a dry run, would do)."""

    fingerprint: str
    kind: str
    column: str
    model: str
    rows_in: int = 0
    requests: int = 0
    unique_requests: int = 0
    cache_hits: int = 0
    calls: int = 0
    failures: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    uncertain_rows: int = 0  # dry run: rows whose inputs are not computed yet

    @property
    def tokens_per_second(self) -> float:
        return self.output_tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class RunResult:
    frames: list[pl.DataFrame]
    stats: dict[str, NodeStats] = field(default_factory=dict)
    seconds: float = 0.0


class _Context:
    def __init__(self, workspace: Workspace, *, dry_run: bool, progress: bool) -> None:
        self.workspace = workspace
        self.dry_run = dry_run
        self.progress = progress
        self.memo: dict[str, pl.LazyFrame] = {}
        self.stats: dict[str, NodeStats] = {}
        self.engines: dict[str, Engine] = {}
        self._console: Any = None

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False)
        return self._console

    def say(self, text: str) -> None:
        log.info(text)
        if self.progress:
            self.console.print(f"[dim]lazyllm[/dim] {text}")

    def engine(self, spec: ModelSpec) -> Engine:
        key = model_fingerprint(spec)
        if key not in self.engines:
            factory = engine_factory(spec.provider)
            self.engines[key] = factory(spec, workspace=self.workspace.path)
        return self.engines[key]

    def close(self) -> None:
        for engine in self.engines.values():
            try:
                engine.close()
            except Exception as exc:  # noqa: BLE001 - closing must not hide the real error
                log.warning("closing engine %s failed: %s", engine.spec.display_name, exc)
        self.engines.clear()


def _progress_enabled(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    return os.environ.get("LAZYLLM_QUIET", "") in ("", "0")


def collect_all(
    roots: Sequence[PlanNode],
    *,
    workspace: "str | os.PathLike[str] | Workspace | None" = None,
    progress: bool | None = None,
) -> RunResult:
    """Execute plans together: a subplan shared by several roots runs once."""
    ws = resolve_workspace(workspace)
    ctx = _Context(ws, dry_run=False, progress=_progress_enabled(progress))
    start = time.perf_counter()
    try:
        frames = [_evaluate(root, ctx).collect() for root in roots]
    finally:
        ctx.close()
    result = RunResult(frames, ctx.stats, time.perf_counter() - start)
    _write_run_log(ws, roots, result)
    return result


def collect(node: PlanNode, **kwargs: Any) -> RunResult:
    """Execute one plan. See :func:`collect_all`."""
    return collect_all([node], **kwargs)


def dry_run(roots: Sequence[PlanNode], workspace: "str | os.PathLike[str] | Workspace | None" = None) -> dict[str, NodeStats]:
    """Predict the LLM work of ``roots`` from the cache, without calling any model."""
    ws = resolve_workspace(workspace)
    ctx = _Context(ws, dry_run=True, progress=False)
    for root in roots:
        _evaluate(root, ctx).collect()
    return ctx.stats


def _evaluate(node: PlanNode, ctx: _Context) -> pl.LazyFrame:
    fp = node.fingerprint
    if fp in ctx.memo:
        return ctx.memo[fp]
    if isinstance(node, Generate):
        df = _evaluate(node.child, ctx).collect()
        out = _run_generate(node, df, ctx).lazy()
    elif isinstance(node, (DataFrameSource, FileSource)):
        out = node.apply()
    else:
        inputs = [_evaluate(c, ctx) for c in node.children]
        out = node.apply(*inputs)
    ctx.memo[fp] = out
    return out


# ------------------------------------------------------------------------------------
# LLM nodes
# ------------------------------------------------------------------------------------


def _render_requests(node: Generate, df: pl.DataFrame) -> tuple[list[list[Request | None]], dict[int, str]]:
    """One list of ``n`` requests per row (None where rendering failed) and row errors."""
    templates = node.templates()
    prompt_t = templates[0]
    system_t: PromptTemplate | None = templates[1] if len(templates) > 1 else None
    cols = sorted(node.columns_read())
    rows = df.select(cols).to_dicts() if cols else [{} for _ in range(df.height)]
    per_row: list[list[Request | None]] = []
    errors: dict[int, str] = {}
    for i, row in enumerate(rows):
        try:
            messages = []
            if system_t is not None:
                messages.append(Message("system", system_t.render(row)))
            messages.append(Message("user", prompt_t.render(row)))
        except TemplateError as exc:
            errors[i] = str(exc)
            per_row.append([None] * node.n)
            continue
        per_row.append(
            [Request(messages=tuple(messages), params=node.sampling, sample_index=s) for s in range(node.n)]
        )
    return per_row, errors


def _run_generate(node: Generate, df: pl.DataFrame, ctx: _Context) -> pl.DataFrame:
    spec = node.model
    model_fp = model_fingerprint(spec)
    stats = NodeStats(node.fingerprint, node.kind, node.column, spec.display_name, rows_in=df.height)
    ctx.stats[node.fingerprint] = stats
    start = time.perf_counter()

    per_row, row_errors = _render_requests(node, df)
    keys: list[list[bytes | None]] = []
    unique: dict[bytes, Request] = {}
    uncertain: set[bytes] = set()
    for row_requests in per_row:
        row_keys: list[bytes | None] = []
        for req in row_requests:
            if req is None:
                row_keys.append(None)
                continue
            key = request_key(model_fp, req)
            row_keys.append(key)
            unique.setdefault(key, req)
            if ctx.dry_run and any(UNCOMPUTED in m.content for m in req.messages):
                uncertain.add(key)
        keys.append(row_keys)
    stats.requests = sum(k is not None for row in keys for k in row)
    stats.unique_requests = len(unique)
    stats.uncertain_rows = sum(any(k in uncertain for k in row if k is not None) for row in keys)

    cache = ctx.workspace.cache
    lookup = [k for k in unique if k not in uncertain]
    results: dict[bytes, Response] = cache.get_many(lookup)
    stats.cache_hits = len(results)
    misses = [k for k in unique if k not in results]
    stats.calls = len(misses)

    if ctx.dry_run:
        for k in misses:
            results[k] = Response(text=UNCOMPUTED)
    elif misses:
        ctx.say(
            f"generate {node.column!r} · {spec.display_name} · {df.height} rows · "
            f"{stats.cache_hits} cached · {len(misses)} to call"
        )
        _call_engine(node, [unique[k] for k in misses], misses, results, stats, ctx)
    elif stats.requests:
        ctx.say(f"generate {node.column!r} · {spec.display_name} · {df.height} rows · served from cache")

    for k in results:
        r = results[k]
        if r.error is None and k in unique:
            stats.input_tokens += r.input_tokens
            stats.output_tokens += r.output_tokens
    stats.seconds = time.perf_counter() - start
    if misses and not ctx.dry_run:
        ctx.say(
            f"generate {node.column!r} done in {stats.seconds:.1f} s · {stats.output_tokens} output tokens "
            f"({stats.tokens_per_second:.0f} tok/s) · {stats.failures} failed"
        )
    return _assemble(node, df, keys, row_errors, results)


def _call_engine(
    node: Generate,
    requests: list[Request],
    keys: list[bytes],
    results: dict[bytes, Response],
    stats: NodeStats,
    ctx: _Context,
) -> None:
    engine = ctx.engine(node.model)
    cache = ctx.workspace.cache
    model_fp = model_fingerprint(node.model)
    with _progress(ctx, f"{node.column} ← {node.model.display_name}", len(requests)) as advance:
        try:
            for batch in engine.generate(requests):
                done = [(keys[i], r) for i, r in batch]
                cache.put_many(done, model=model_fp)  # committed before anything else happens
                out_tokens = 0
                for k, r in done:
                    results[k] = r
                    if r.error is not None:
                        stats.failures += 1
                    out_tokens += r.output_tokens
                advance(len(done), out_tokens)
        except EngineError:
            raise
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # an engine that raises mid-stream: keep what was committed
            raise EngineError(
                f"The {node.model.display_name} engine failed while generating {node.column!r}: {exc}. "
                "Completed batches are in the cache; rerun to resume."
            ) from exc
    for k in keys:
        if k not in results:
            results[k] = Response(text=None, finish_reason="error", error="the engine returned no response")
            stats.failures += 1


@contextmanager
def _progress(ctx: _Context, label: str, total: int) -> Iterator[Any]:
    if not ctx.progress:
        yield lambda n, tokens: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=ctx.console,
        transient=True,
    )
    task = bar.add_task(label, total=total, rate="")
    start = time.perf_counter()
    tokens = 0

    def advance(n: int, out_tokens: int) -> None:
        nonlocal tokens
        tokens += out_tokens
        rate = tokens / max(time.perf_counter() - start, 1e-9)
        bar.update(task, advance=n, rate=f"{rate:.0f} tok/s")

    with bar:
        yield advance


def _assemble(
    node: Generate,
    df: pl.DataFrame,
    keys: list[list[bytes | None]],
    row_errors: dict[int, str],
    results: dict[bytes, Response],
) -> pl.DataFrame:
    values: list[Any] = []
    errors: list[str | None] = []
    for i, row_keys in enumerate(keys):
        texts: list[str | None] = []
        errs: list[str] = []
        if i in row_errors:
            errs.append(row_errors[i])
        for s, k in enumerate(row_keys):
            if k is None:
                texts.append(None)
                continue
            r = results[k]
            texts.append(r.text if r.error is None else None)
            if r.error is not None:
                errs.append(r.error if node.n == 1 else f"sample {s}: {r.error}")
        values.append(texts[0] if node.n == 1 else texts)
        errors.append("; ".join(errs) if errs else None)
    return df.with_columns(
        pl.Series(node.column, values, dtype=node.output_dtype()),
        pl.Series(node.error_column, errors, dtype=pl.String),
    )


# ------------------------------------------------------------------------------------
# Run log
# ------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("lazyllm-frame", "polars", "torch", "transformers", "jinja2", "lmdb"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _write_run_log(ws: Workspace, roots: Sequence[PlanNode], result: RunResult) -> None:
    record = {
        "roots": [r.fingerprint for r in roots],
        "rows": [f.height for f in result.frames],
        "seconds": result.seconds,
        "nodes": [asdict(s) for s in result.stats.values()],
        "versions": _versions(),
        "argv": sys.argv[:1],
    }
    try:
        ws.write_run_log(roots[0].fingerprint if roots else "empty", record)
    except OSError as exc:  # a read-only workspace must not fail a finished collect
        log.warning("could not write the run log: %s", exc)
