"""The Ray executor: LLM work runs on a pool of engine replicas on a Ray cluster.

Nothing else about a run changes. The planner runs on the driver as usual: it
optimizes the plan, renders requests, looks them up in the LMDB cache, removes
duplicates and batches requests of several operators for the same model. Only then
are the distinct misses shipped, in batches of the model's ``batch_size``, to a pool
of :class:`EngineReplica` actors (one per GPU, or one per ``cpus_per_replica`` CPUs),
each of which loads its model once. Results stream back as each batch finishes and
the driver commits them to the workspace's LMDB cache before anything else happens,
so a run killed at any point (driver or workers) resumes without repeating a
committed request, on the cluster or on one machine. Cache writes stay on the driver
by design: one writer, no shard merging, and LMDB on the driver's disk.

Failures:

- a replica that dies (its process killed, the node lost) is replaced, and its
  unfinished batch is sent again to a live replica (``max_batch_retries`` times);
- a batch whose engine raises, or that keeps killing replicas, is split in halves
  until the request that fails is alone: that request ends as an error row
  (``finish_reason="error"``), never as a failed job (a *poison row*);
- requests of a multi-request batch that came back as errors are retried in halves
  until each is alone, so one bad row does not take its batch-mates down with it
  (errors are never cached, so a rerun would retry them anyway).

Replicas read the model from the workspace path, so on a multi-node cluster the
workspace must be on storage every node sees (NFS, a shared volume), or each node
must already have the model folder at the same path.

Examples
--------
Start a local cluster with two replicas (or join one with ``address="auto"`` or
``"ray://head:10001"``)::

    frame.collect(executor=lazyllm.RayExecutor(replicas=2))

or set ``LAZYLLM_EXECUTOR=ray`` (and ``LAZYLLM_RAY_ADDRESS``) and leave the script alone.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from lazyllm.core.errors import EngineError, LazyLLMError, MissingDependencyError, ParameterError
from lazyllm.core.protocols import ModelSpec, Request, Response

from .registry import engine_factory

__all__ = ["RayExecutor", "ReplicaPool", "ReplicaStats", "ray_available", "merge_stats",
           "read_partitions"]

log = logging.getLogger("lazyllm")


def ray_available() -> bool:
    """True if the ``ray`` package can be imported."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError(
            "The Ray executor needs Ray: install lazyllm with the 'ray' extra "
            "(scripts/install.sh ray, or pip install 'ray[data]')."
        ) from exc
    return ray


@dataclass(frozen=True, kw_only=True)
class RayExecutor:
    """Run a collect's LLM work on a Ray cluster.

    Parameters
    ----------
    address : str, optional
        An existing cluster (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``). None
        (default): ``LAZYLLM_RAY_ADDRESS`` if set, else a local cluster is started in
        this process (and reused by later collects in it).
    replicas : int, optional
        Engine replicas per model. Default: one per GPU of the cluster, else one per
        ``cpus_per_replica`` CPUs.
    cpus_per_replica : float
        CPUs reserved by each replica (default 1). Ray sets ``OMP_NUM_THREADS`` to it,
        which is the thread count torch uses there.
    gpus_per_replica : float, optional
        GPUs per replica. Default: 1 if the cluster has GPUs, else 0.
    max_batch_retries : int
        How often a batch is sent again after its replica died, before it is split to
        find a poison row (default 2).
    num_cpus : int, optional
        CPUs of a local cluster started here (default: all of this machine's).
    runtime_env : tuple of (key, value), optional
        Passed to ``ray.init`` (e.g. ``(("env_vars", {...}),)``).

    Raises
    ------
    ParameterError
        At construction: fewer than 1 replica, non-positive ``cpus_per_replica``,
        negative ``max_batch_retries``. Ray is started only when a collect needs it.

    Notes
    -----
    Performance-only: an executor changes how fast a plan runs, never its results or
    fingerprints, so a run started on Ray can be finished on one machine.
    """

    address: str | None = None
    replicas: int | None = None
    cpus_per_replica: float = 1.0
    gpus_per_replica: float | None = None
    max_batch_retries: int = 2
    num_cpus: int | None = None
    runtime_env: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.replicas is not None and self.replicas < 1:
            raise ParameterError(f"RayExecutor(replicas={self.replicas}): needs at least 1 replica.")
        if self.cpus_per_replica <= 0:
            raise ParameterError(f"RayExecutor(cpus_per_replica={self.cpus_per_replica}): must be positive.")
        if self.max_batch_retries < 0:
            raise ParameterError(f"RayExecutor(max_batch_retries={self.max_batch_retries}): must be >= 0.")

    # -- the Executor protocol (lazyllm.core.protocols.Executor) -------------------------
    name: ClassVar[str] = "ray"

    def check_available(self) -> None:
        """Raise :class:`MissingDependencyError` (extra ``ray``) when Ray is not installed."""
        _ray()

    def engine(self, spec: ModelSpec, *, workspace: Path) -> "ReplicaPool":
        """A pool of engine replicas for ``spec`` on the cluster (one batch per replica at a time)."""
        return ReplicaPool(spec, workspace=workspace, executor=self)

    def read_parquet(self, paths: Sequence[str], rows: int, options: dict[str, Any] | None = None
                     ) -> Iterator[Any]:
        """Parquet files as ``polars.DataFrame`` partitions read on the cluster (:func:`read_partitions`)."""
        return read_partitions(self, paths, rows, options)

    def replica_stats(self, engines: Sequence[Any]) -> list[dict[str, Any]]:
        """Per-replica records of the pools among ``engines`` (:func:`merge_stats`)."""
        return merge_stats([e for e in engines if isinstance(e, ReplicaPool)])

    # -- cluster -------------------------------------------------------------------------
    def connect(self) -> Any:
        """Join or start the cluster (once per process); returns the ``ray`` module."""
        ray = _ray()
        if not ray.is_initialized():
            address = self.address or os.environ.get("LAZYLLM_RAY_ADDRESS") or None
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "ignore_reinit_error": True}
            if self.runtime_env:
                kwargs["runtime_env"] = dict(self.runtime_env)
            if address is None:
                kwargs["num_cpus"] = self.num_cpus or os.cpu_count() or 1
            else:
                kwargs["address"] = address
            ray.init(**kwargs)
        return ray

    def plan_replicas(self) -> tuple[int, float, float]:
        """(replicas, cpus per replica, gpus per replica) for the connected cluster."""
        ray = self.connect()
        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0))
        per_gpu = self.gpus_per_replica if self.gpus_per_replica is not None else (1.0 if gpus >= 1 else 0.0)
        if self.replicas is not None:
            n = self.replicas
        elif per_gpu > 0:
            n = max(1, int(gpus // per_gpu))
        else:
            n = max(1, int(float(resources.get("CPU", 1)) // self.cpus_per_replica))
        return n, self.cpus_per_replica, per_gpu


@dataclass
class ReplicaStats:
    """What one replica did in a collect (aggregated on the driver)."""

    replica: int
    pid: int = 0
    node: str = ""
    batches: int = 0
    requests: int = 0
    output_tokens: int = 0
    failures: int = 0  # error responses it returned
    busy_seconds: float = 0.0  # running batches, the first one (with the model load) included
    first_batch_seconds: float = 0.0  # the first batch of each process: model load + generation
    deaths: int = 0  # times its process died and it was replaced
    steady_tokens: int = 0  # output tokens of the batches after each process's first
    steady_seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        """Output tokens per second while generating: batches after the first (which
        includes loading the model), or every batch when there was only one."""
        if self.steady_seconds > 0:
            return self.steady_tokens / self.steady_seconds
        return self.output_tokens / self.busy_seconds if self.busy_seconds > 0 else 0.0


class _Replica:
    """The actor body: one engine for one model spec, loaded once (on its first batch)."""

    def __init__(self, spec: ModelSpec, workspace: str) -> None:
        self.engine = engine_factory(spec.provider)(spec, workspace=Path(workspace))
        self.loaded = False

    def info(self) -> tuple[int, str]:
        import socket

        return os.getpid(), socket.gethostname()

    def run(self, requests: list[Request]) -> tuple[list[tuple[int, Response]], dict[str, Any]]:
        start = time.perf_counter()
        out: list[tuple[int, Response]] = []
        first = not self.loaded
        for part in self.engine.generate(requests):
            out.extend(part)
        self.loaded = True
        took = time.perf_counter() - start
        pid, node = self.info()
        return out, {"seconds": took, "first": first, "pid": pid, "node": node}

    def close(self) -> None:
        self.engine.close()


@dataclass
class _Chunk:
    indices: list[int]  # into the requests of the current generate() call
    deaths: int = 0
    split_on_errors: bool = True  # errors of a multi-request chunk are retried in halves, until alone


@dataclass
class _Slot:
    actor: Any
    stats: ReplicaStats
    busy: Any = None  # the in-flight object ref
    chunk: _Chunk | None = None
    started: float = 0.0


class ReplicaPool:
    """An engine (the :class:`~lazyllm.core.protocols.Engine` protocol) backed by
    Ray actors: ``generate`` spreads a submission over the replicas in batches of
    ``spec.batch_size`` and yields each batch's responses as soon as it is back.

    ``parallelism`` (the replica count) tells the scheduler how many batches to hand
    over at once so every replica is busy.
    """

    def __init__(self, spec: ModelSpec, *, workspace: Path, executor: RayExecutor) -> None:
        self.spec = spec
        self.workspace = Path(workspace)
        self.executor = executor
        self.ray = executor.connect()
        n, cpus, gpus = executor.plan_replicas()
        self.parallelism = n
        self._options = {"num_cpus": cpus, "num_gpus": gpus, "max_restarts": 0, "max_concurrency": 1}
        self._actor_class = self.ray.remote(_Replica)
        self.slots = [self._start(i) for i in range(n)]
        self.closed = False

    def _start(self, i: int, stats: ReplicaStats | None = None) -> _Slot:
        actor = self._actor_class.options(**self._options).remote(self.spec, str(self.workspace))
        return _Slot(actor=actor, stats=stats or ReplicaStats(replica=i))

    def stats(self) -> list[ReplicaStats]:
        return [s.stats for s in self.slots]

    # -- the engine protocol -------------------------------------------------------------
    def generate(self, requests: Sequence[Request]) -> Iterator[list[tuple[int, Response]]]:
        ray = self.ray
        size = max(1, int(getattr(self.spec, "batch_size", 8) or 8))
        pending: deque[_Chunk] = deque(_Chunk(list(range(s, min(s + size, len(requests)))))
                                       for s in range(0, len(requests), size))
        while pending or any(s.busy is not None for s in self.slots):
            for slot in self.slots:
                if slot.busy is None and pending:
                    chunk = pending.popleft()
                    slot.chunk, slot.started = chunk, time.perf_counter()
                    slot.busy = slot.actor.run.remote([requests[i] for i in chunk.indices])
            refs = [s.busy for s in self.slots if s.busy is not None]
            done, _ = ray.wait(refs, num_returns=1)
            slot = next(s for s in self.slots if s.busy is not None and s.busy == done[0])
            chunk = slot.chunk
            assert chunk is not None
            slot.busy, slot.chunk = None, None
            try:
                pairs, info = ray.get(done[0])
            except ray.exceptions.RayActorError as exc:  # the replica's process is gone
                yield from self._on_death(slot, chunk, pending, exc)
                continue
            except ray.exceptions.RayTaskError as exc:  # the engine raised
                yield from self._on_raise(chunk, pending, exc)
                continue
            st = slot.stats
            st.batches += 1
            st.requests += len(chunk.indices)
            st.pid, st.node = info["pid"], info["node"]
            st.busy_seconds += info["seconds"]
            if info.get("first"):
                st.first_batch_seconds += info["seconds"]
            else:
                st.steady_seconds += info["seconds"]
                st.steady_tokens += sum(r.output_tokens for _, r in pairs)
            out: list[tuple[int, Response]] = []
            retry: list[int] = []
            for j, response in pairs:
                st.output_tokens += response.output_tokens
                if response.error is not None:
                    st.failures += 1
                    if chunk.split_on_errors and len(chunk.indices) > 1:
                        retry.append(chunk.indices[j])
                        continue
                out.append((chunk.indices[j], response))
            if retry:  # a bad row may have taken its batch-mates down: retry them apart
                for half in _halves(retry):
                    pending.append(_Chunk(half, split_on_errors=len(half) > 1))
            if out:
                yield out

    def _on_death(self, slot: _Slot, chunk: _Chunk, pending: deque[_Chunk],
                  exc: BaseException) -> Iterator[list[tuple[int, Response]]]:
        if "creation task" in str(exc):  # the replica cannot even start: retrying would loop
            raise EngineError(f"An engine replica of {self.spec.display_name} could not start: "
                              f"{str(exc).splitlines()[0]}") from exc
        slot.stats.deaths += 1
        log.warning("replica %d died (%s); starting a new one and sending its batch again",
                    slot.stats.replica, type(exc).__name__)
        fresh = self._start(slot.stats.replica, slot.stats)
        slot.actor = fresh.actor
        chunk.deaths += 1
        if chunk.deaths <= self.executor.max_batch_retries:
            pending.appendleft(chunk)
        elif len(chunk.indices) > 1:
            for half in _halves(chunk.indices):
                pending.appendleft(_Chunk(half, deaths=self.executor.max_batch_retries))
        else:
            yield [(chunk.indices[0], Response.failed(f"poison row: the engine replica died on this request "
                                             f"{chunk.deaths} times ({type(exc).__name__})"))]

    def _on_raise(self, chunk: _Chunk, pending: deque[_Chunk],
                  exc: BaseException) -> Iterator[list[tuple[int, Response]]]:
        cause = getattr(exc, "cause", None) or exc
        if isinstance(cause, (EngineError, LazyLLMError)):  # the model cannot load: no row can succeed
            raise EngineError(f"An engine replica of {self.spec.display_name} failed: {cause}") from exc
        if len(chunk.indices) > 1:
            for half in _halves(chunk.indices):
                pending.appendleft(_Chunk(half, deaths=chunk.deaths))
            return
        text = f"{type(cause).__name__}: {cause}".splitlines()[0][:500]
        yield [(chunk.indices[0], Response.failed(f"poison row: the engine raised on this request: {text}"))]

    def close(self) -> None:
        """Release the replicas (their models and reserved CPUs/GPUs)."""
        if self.closed:
            return
        self.closed = True
        for slot in self.slots:
            try:
                self.ray.get(slot.actor.close.remote(), timeout=60)
            except Exception:  # noqa: BLE001 - a dead replica has nothing to release
                pass
            try:
                self.ray.kill(slot.actor)
            except Exception:  # noqa: BLE001
                pass


def read_partitions(executor: RayExecutor, paths: Sequence[str], rows: int,
                    options: dict[str, Any] | None = None) -> Iterator["Any"]:
    """Parquet files read by Ray Data tasks on the cluster, yielded in file order as
    ``polars.DataFrame`` partitions of at most ``rows`` rows; the driver holds one at a
    time. ``options`` may hold ``columns`` (the other polars read options do not apply).
    """
    import polars as pl

    ray = executor.connect()
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # partitions in file and row order
    columns = (options or {}).get("columns")
    ds = ray.data.read_parquet(list(paths), columns=list(columns) if columns else None)
    for batch in ds.iter_batches(batch_size=rows, batch_format="pyarrow"):
        yield pl.from_arrow(batch)


def _halves(indices: list[int]) -> list[list[int]]:
    mid = (len(indices) + 1) // 2
    return [part for part in (indices[:mid], indices[mid:]) if part]



def merge_stats(pools: Sequence[ReplicaPool]) -> list[dict[str, Any]]:
    """Per-replica stats of every pool, as records (model, replica, ..., tokens/s)."""
    rows = []
    for pool in pools:
        for st in pool.stats():
            rec = {f.name: getattr(st, f.name) for f in fields(st)}
            rec["model"] = pool.spec.display_name
            rec["tokens_per_second"] = round(st.tokens_per_second, 2)
            rows.append(rec)
    return rows

