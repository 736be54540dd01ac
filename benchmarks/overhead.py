"""lazyllm's own per-row work at scale (issue 19): cold and warm collect, ``explain()``,
and peak memory of a streamed ``sink_parquet`` job.

Workload: one ``generate`` (prompt ``"Say {{ x }}"``, 8 tokens) over ``x = "item <i>"`` with
the deterministic test engine (``TestModel(batch_size=512)``), whose engine work is a few
microseconds per request.

- cold: a fresh workspace (every request computed and committed: one LMDB commit per
  engine batch or per commit window, lease transactions); split, in the same process,
  into the time inside the engine, the time in the cache's write transactions (and of
  it, the leases taken and released), the time in cyclic garbage collections, and
  lazyllm's own work (cold less the engine); next to it, LMDB alone writing the same
  records in the same transactions (the floor of the cache writes);
- warm: the same collect again (everything served from the cache);
- explain: ``explain()`` on the warm workspace (a dry run over a sample of rows);
- peak memory: ``sink_parquet`` of a 1M-row parquet input in a child process per
  partition size (its ``VmHWM``, ``resource.getrusage`` where there is no ``/proc``; and
  the peak of its anonymous memory, without the cache's memory-mapped file pages), cold
  workspace.

Rounds alternate (cold, warm, explain on one workspace, then the next round), and each
size is reported as medians with min–max, because the machine is shared. Nothing here
is a test: no thresholds.

Usage::

    python -m benchmarks.run overhead                       # 100k and 1M rows, 1M-row sink
    python -m benchmarks.run overhead --quick               # 100k rows only, one round, no sink
    python -m benchmarks.overhead --profile 50000           # pyinstrument per phase (text)
    python -m benchmarks.overhead --compare /tmp/venv-integ/bin/python --rows 100000  # before/after
    python -m benchmarks.overhead --compare /tmp/venv-integ/bin/python --ablate  # + columnar off, lease per batch
    LAZYLLM_VLLM_VENV=/path/.venv-vllm python -m benchmarks.overhead --real 300  # OpenAI engine + local vLLM
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PROMPT = "Say {{ x }}"


def _frame(n: int) -> Any:
    import polars as pl

    import lazyllm

    df = pl.DataFrame({"x": pl.Series([f"item {i}" for i in range(n)], dtype=pl.String)})
    model = lazyllm.TestModel(name="bench", batch_size=512)
    return lazyllm.from_polars(df).generate("y", model, prompt=PROMPT, max_tokens=8)


def _timed_generate(generate: Any, acc: dict[str, Any], key: str) -> Any:
    """An engine's ``generate`` that adds to ``acc[key]`` the seconds spent producing each
    part it yields (the engine's own work between the caller's requests for parts)."""

    def timed(self: Any, requests: Any) -> Iterator[Any]:
        parts = generate(self, requests)
        while True:
            start = time.perf_counter()
            try:
                part = next(parts)
            except StopIteration:
                return
            finally:
                acc[key] += time.perf_counter() - start
            yield part

    return timed


@contextmanager
def _accounted() -> Iterator[dict[str, Any]]:
    """Benchmark instrumentation: while active, the seconds spent inside the deterministic
    engine (``engine``: between its batches' requests and answers) and in the cache's write
    transactions (``writes``: answers committed, leases taken and released; ``leases``: of
    it, the leases), in cyclic garbage collections (``gc``, wherever they ran), and the
    answers stored per commit (``commits``). Wraps the methods and puts them back afterwards."""
    from lazyllm.backends.testing import DeterministicEngine
    from lazyllm.planner.cache import PromptCache

    acc: dict[str, Any] = {"engine": 0.0, "writes": 0.0, "leases": 0.0, "gc": 0.0, "commits": []}
    generate, put_many, lease, release = (DeterministicEngine.generate, PromptCache.put_many,
                                          PromptCache.lease, PromptCache.release)

    depth = [0]  # put_many releases its leases through release: counted once in the writes

    def timed(method: Any) -> Any:
        def call(self: Any, items: Any, *args: Any, **kwargs: Any) -> Any:
            items = list(items)
            if method is put_many:
                acc["commits"].append(sum(r.error is None and r.text is not None for _, r in items))
            start = time.perf_counter()
            depth[0] += 1
            try:
                return method(self, items, *args, **kwargs)
            finally:
                depth[0] -= 1
                took = time.perf_counter() - start
                acc["writes"] += took if depth[0] == 0 else 0.0
                if method is not put_many:
                    acc["leases"] += took
        return call

    collecting = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collecting[0] = time.perf_counter()
        else:
            acc["gc"] += time.perf_counter() - collecting[0]

    DeterministicEngine.generate = _timed_generate(generate, acc, "engine")  # type: ignore[method-assign]
    PromptCache.put_many, PromptCache.lease, PromptCache.release = (  # type: ignore[method-assign]
        timed(put_many), timed(lease), timed(release))
    gc.callbacks.append(on_gc)
    try:
        yield acc
    finally:
        gc.callbacks.remove(on_gc)
        DeterministicEngine.generate = generate  # type: ignore[method-assign]
        PromptCache.put_many, PromptCache.lease, PromptCache.release = (  # type: ignore[method-assign]
            put_many, lease, release)


def _lmdb_floor(commits: list[int], ws: Path) -> float:
    """Seconds LMDB alone takes for the cold run's writes: as many records as each commit
    of the run stored (the run's own record bytes, cycled), under fresh random 32-byte keys,
    one write transaction per commit, into a fresh environment opened as the cache opens
    its own (same flags: one flush per commit)."""
    import hashlib
    from itertools import islice

    import msgpack

    from lazyllm.planner.cache import _close_env, _open_env
    from lazyllm.planner.workspace import Workspace

    values = [msgpack.packb(dict(v)) for _, v in islice(Workspace(ws).cache.items(), 4096)]
    keys = [hashlib.sha256(i.to_bytes(8, "little")).digest() for i in range(sum(commits))]
    path = Path(tempfile.mkdtemp(prefix="lazyllm-overhead-lmdb-"))
    env = _open_env(path, 1 << 36)
    try:
        db = env.open_db(b"responses")
        start, done = time.perf_counter(), 0
        for size in commits:
            with env.begin(write=True) as txn:
                put = txn.put
                for j in range(done, done + size):
                    put(keys[j], values[j % len(values)], db=db)
            done += size
        return time.perf_counter() - start
    finally:
        _close_env(path)
        shutil.rmtree(path, ignore_errors=True)


def _phases(n: int, ws: Path) -> dict[str, float]:
    """Seconds of cold collect, warm collect and explain() on one fresh workspace; of the
    cold collect, the seconds inside the engine (``cold_engine``) and in the cache's write
    transactions (``cold_writes``), and LMDB alone for the same writes (``cold_lmdb``)."""
    frame = _frame(n)
    out: dict[str, float] = {}
    with _accounted() as acc:
        start = time.perf_counter()
        frame.collect(workspace=ws, progress=False)
        out["cold"] = time.perf_counter() - start
    out["cold_engine"], out["cold_writes"] = acc["engine"], acc["writes"]
    out["cold_leases"], out["cold_gc"] = acc["leases"], acc["gc"]
    out["cold_lmdb"] = _lmdb_floor(acc["commits"], ws)
    start = time.perf_counter()
    df = frame.collect(workspace=ws, progress=False)
    out["warm"] = time.perf_counter() - start
    assert df.height == n  # a benchmark of a broken run is worthless
    start = time.perf_counter()
    frame.explain(workspace=ws)
    out["explain"] = time.perf_counter() - start
    return out


def _with_own(phases: dict[str, float]) -> dict[str, float]:
    """``phases`` with ``cold_own``: the cold collect less the time inside the engine."""
    return {**phases, "cold_own": phases["cold"] - phases["cold_engine"]}


def _sink_child(n: int, rows_per_shard: int, work: Path) -> None:
    """Child process: stream a 1M-row parquet input through the generate into parquet shards."""
    import lazyllm

    frame = lazyllm.read_parquet(work / "input.parquet").generate(
        "y", lazyllm.TestModel(name="bench", batch_size=512), prompt=PROMPT, max_tokens=8)
    sampler = _AnonPeak()
    sampler.start()
    start = time.perf_counter()
    shards = frame.sink_parquet(work / f"out-{rows_per_shard}", rows_per_shard=rows_per_shard,
                                workspace=work / f"ws-{rows_per_shard}", progress=False)
    seconds = time.perf_counter() - start
    sampler.stop()
    print(json.dumps({"peak_mib": _peak_kib() / 1024, "anon_peak_mib": sampler.peak_kib / 1024,
                      "file_mib": _status_kib("RssFile") / 1024, "seconds": seconds, "shards": len(shards)}))


def _status_kib(field: str) -> float:
    """A ``/proc/self/status`` field in KiB (0 where there is no ``/proc``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return float(line.split()[1])
    except OSError:
        pass
    return 0.0


class _AnonPeak:
    """The highest ``RssAnon`` (memory the process itself allocated: Python objects, frames,
    LMDB's dirty pages of a write transaction) seen every 20 ms by a daemon thread.
    ``VmHWM`` also counts file pages mapped in (``RssFile``): the LMDB cache is a memory map
    whose pages the kernel's page cache holds and can drop, so the cache's size shows there."""

    def __init__(self) -> None:
        import threading

        self.peak_kib = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, _status_kib("RssAnon"))

    def _run(self) -> None:
        while not self._done.wait(0.02):
            self.peak_kib = max(self.peak_kib, _status_kib("RssAnon"))


def _peak_kib() -> float:
    """Peak resident memory of this process in KiB. Linux keeps ``ru_maxrss`` across
    ``execve``, so a child started by a large parent reports the parent's peak: take the
    address space's own high-water mark (``VmHWM``) where there is one."""
    return _status_kib("VmHWM") or float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


def _sink_rss(n: int, partitions: tuple[int, ...]) -> list[dict[str, Any]]:
    import polars as pl

    work = Path(tempfile.mkdtemp(prefix="lazyllm-overhead-"))
    try:
        pl.DataFrame({"x": [f"item {i}" for i in range(n)]}).write_parquet(work / "input.parquet")
        rows = []
        for part in partitions:
            proc = subprocess.run([sys.executable, "-m", "benchmarks.overhead", "--sink-child", str(n), str(part),
                                   str(work)], capture_output=True, text=True, check=True,
                                  cwd=Path(__file__).resolve().parent.parent)
            rows.append({"rows_per_shard": part, **json.loads(proc.stdout.strip().splitlines()[-1])})
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_overhead(args: argparse.Namespace) -> None:
    import statistics

    from .run import write_section

    quick = getattr(args, "quick", False)
    sink = [] if quick else _sink_rss(1_000_000, (50_000, 100_000, 500_000))  # first: this process is still small
    sizes = (100_000,) if quick else (100_000, 1_000_000)
    lines = ["| rows | cold µs/row | engine | cache writes | cold without the engine | LMDB alone, same writes | "
             "warm µs/row | explain s | explain s per 1M rows | rounds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for n in sizes:
        rounds = 1 if quick or n >= 1_000_000 else (args.repeats or 2)
        got: dict[str, list[float]] = {}
        for _ in range(rounds):
            ws = Path(tempfile.mkdtemp(prefix="lazyllm-overhead-ws-"))
            try:
                for phase, seconds in _with_own(_phases(n, ws)).items():
                    got.setdefault(phase, []).append(seconds)
            finally:
                shutil.rmtree(ws, ignore_errors=True)

        def cell(phase: str, scale: float) -> str:
            vals = [v * scale for v in got[phase]]
            med = statistics.median(vals)
            return f"{med:.1f}" if len(vals) == 1 else f"{med:.1f} ({min(vals):.1f}–{max(vals):.1f})"

        lines.append(f"| {n:,} | {cell('cold', 1e6 / n)} | {cell('cold_engine', 1e6 / n)} | "
                     f"{cell('cold_writes', 1e6 / n)} | {cell('cold_own', 1e6 / n)} | {cell('cold_lmdb', 1e6 / n)} | "
                     f"{cell('warm', 1e6 / n)} | {cell('explain', 1)} | {cell('explain', 1e6 / n)} | {rounds} |")
    body = "\n".join(lines)
    if sink:
        body += ("\n\n| streamed sink_parquet, 1M rows | peak RSS MiB | peak anonymous MiB | cache file pages at "
                 "the end MiB | seconds | shards |\n|---|---|---|---|---|---|\n")
        body += "\n".join(f"| rows_per_shard={r['rows_per_shard']:,} | {r['peak_mib']:.0f} | {r['anon_peak_mib']:.0f} | "
                          f"{r['file_mib']:.0f} | {r['seconds']:.1f} | {r['shards']} |" for r in sink)
    body += ("\n\nWorkload: one `generate` (`\"Say {{ x }}\"`, 8 tokens) with the deterministic test engine "
             "(`TestModel(batch_size=512)`); wall time per row. Cold: fresh workspace; *engine*: of it, the time "
             "inside the test engine; *cache writes*: of it, the time in the cache's write transactions (answers "
             "committed, leases taken and released); *cold without the engine*: lazyllm's own work, cache writes "
             "included; *LMDB alone, same writes*: right after, in the same process, LMDB writing as many records "
             "(the run's own record bytes) in the same transactions (one per commit of the run, same flags, "
             "fresh random keys), which is the floor for the cache writes. Warm: the same "
             "collect again; explain: `explain()` on the warm workspace. Peak RSS: a child process per "
             "partition size, cold workspace, input read from parquet (`VmHWM`: Linux keeps `ru_maxrss` across exec, "
             "so a child of a large parent would report the parent's peak); it counts the pages of the LMDB "
             "cache's memory map the process touched (file pages of the kernel's page cache, which it can drop: "
             "*cache file pages at the end*, `RssFile`). *Peak anonymous*: the highest `RssAnon` sampled every "
             "20 ms, the memory the job itself allocated. The machine is shared (2 cores): figures are noisy, "
             "compare within a run.")
    write_section("Per-row overhead at scale (issue 19)", body, " ".join(sys.argv))


#: the rows of the before/after tables: phases of :func:`_phases`, and the cold collect less the engine
_PHASES = {"cold": "cold", "cold_engine": "cold: inside the engine", "cold_writes": "cold: cache writes",
           "cold_leases": "cold: of the writes, leases taken and released", "cold_gc": "cold: cyclic GC",
           "cold_own": "cold without the engine", "cold_lmdb": "LMDB alone, same writes", "warm": "warm",
           "explain": "explain"}

#: ``--ablate`` variants of this tree: (name, extra child arguments, extra environment).
_ABLATIONS = (("columnar off", [], {"LAZYLLM_COLUMNAR": "0"}), ("lease per batch", ["--lease-ahead", "1"], {}))


def _compare(baseline: str, sizes: tuple[int, ...], rounds: int, ablate: bool = False) -> None:
    """Alternate (A B A B) child processes of another install (``baseline``: its Python, e.g.
    a virtual environment with the integration branch) and this one; write medians and ratios.
    With ``ablate``, also this tree with the columnar path off and with one lease transaction
    per engine batch, in the same alternation."""
    import statistics

    from .run import write_section

    pythons = {"before": baseline, "after": sys.executable}
    variants: dict[str, tuple[str, list[str], dict[str, str]]] = {
        "before": (baseline, [], {}), "after": (sys.executable, [], {})}
    if ablate:
        variants.update({name: (sys.executable, extra, env) for name, extra, env in _ABLATIONS})
        _ablate(variants, sizes, rounds)
        return
    lines = ["| rows | phase | before µs/row | after µs/row | after / before |", "|---|---|---|---|---|"]
    # the children run this benchmark from a folder holding only a copy of it, so that each
    # imports lazyllm from its own install (not the lazyllm/ folder of this checkout)
    neutral = Path(tempfile.mkdtemp(prefix="lazyllm-overhead-bench-"))
    shutil.copytree(Path(__file__).resolve().parent, neutral / "benchmarks",
                    ignore=shutil.ignore_patterns("__pycache__", "*.md"))
    for n in sizes:
        got: dict[str, dict[str, list[float]]] = {k: {} for k in pythons}
        for _ in range(rounds):
            for name, python in pythons.items():
                proc = subprocess.run([python, "-m", "benchmarks.overhead", "--phases-child", str(n)],
                                      capture_output=True, text=True, check=True, cwd=neutral)
                for phase, seconds in _with_own(json.loads(proc.stdout.strip().splitlines()[-1])).items():
                    got[name].setdefault(phase, []).append(seconds * 1e6 / n)
        for phase in _PHASES:
            if phase not in got["before"]:  # an install older than this split
                lines.append(f"| {n:,} | {_PHASES[phase]} | — | {statistics.median(got['after'][phase]):.1f} | — |")
                continue
            b, a = statistics.median(got["before"][phase]), statistics.median(got["after"][phase])
            lines.append(f"| {n:,} | {_PHASES[phase]} | {b:.1f} | {a:.1f} | {a / b:.2f} |")
    body = "\n".join(lines) + (
        f"\n\nBefore: `{baseline}` (the integration branch before this work); after: this tree. Child "
        f"processes alternate before/after, {rounds} round(s) per size, medians. Same workload as above; the "
        "machine was shared while measuring.")
    write_section("Per-row overhead before vs after (issue 19)", body, " ".join(sys.argv))


def _ablate(variants: dict[str, tuple[str, list[str], dict[str, str]]], sizes: tuple[int, ...], rounds: int) -> None:
    """:func:`_compare` with the ablation variants: one column per variant, ratios to before."""
    import statistics

    from .run import write_section

    neutral = Path(tempfile.mkdtemp(prefix="lazyllm-overhead-bench-"))
    shutil.copytree(Path(__file__).resolve().parent, neutral / "benchmarks",
                    ignore=shutil.ignore_patterns("__pycache__", "*.md"))
    names = list(variants)
    lines = ["| rows | phase | " + " | ".join(f"{v} µs/row" for v in names) + " | after / before |",
             "|---|---|" + "---|" * (len(names) + 1)]
    for n in sizes:
        got: dict[str, dict[str, list[float]]] = {k: {} for k in names}
        for _ in range(rounds):
            for name, (python, extra, env) in variants.items():
                proc = subprocess.run([python, "-m", "benchmarks.overhead", "--phases-child", str(n), *extra],
                                      capture_output=True, text=True, check=True, cwd=neutral,
                                      env={**os.environ, **env})
                for phase, seconds in _with_own(json.loads(proc.stdout.strip().splitlines()[-1])).items():
                    got[name].setdefault(phase, []).append(seconds * 1e6 / n)
        for phase in _PHASES:
            med = {k: statistics.median(got[k][phase]) for k in names}
            cells = " | ".join(f"{med[k]:.1f}" for k in names)
            lines.append(f"| {n:,} | {_PHASES[phase]} | {cells} | {med['after'] / med['before']:.2f} |")
    body = "\n".join(lines) + (
        f"\n\nBefore: `{variants['before'][0]}`; after: this tree; *columnar off*: this tree with "
        "`LAZYLLM_COLUMNAR=0` (every row through the scheduler's per-row loop); *lease per batch*: this tree "
        f"with one lease transaction per engine batch (`LEASE_AHEAD = 1`). Child processes alternate in that "
        f"order, {rounds} round(s) per size, medians. Same workload as above; the machine was shared while "
        "measuring.")
    write_section("Per-row overhead before vs after, with ablations (issue 19)", body, " ".join(sys.argv))


def _real_engine(n: int, max_tokens: int, model_ws: Path) -> None:
    """One ``generate`` over ``n`` rows with the OpenAI engine against a local vLLM server
    (``vllm.entrypoints.openai.api_server`` from ``$LAZYLLM_VLLM_VENV``, SmolLM2-135M, float32,
    started by :func:`lazyllm.backends.vllm_server.serve`): wall time of the cold collect,
    time spent inside the engine's ``generate`` (waiting for the server and decoding its
    answers), and the rest, which is lazyllm's own work; then the warm rerun."""
    import polars as pl

    import lazyllm
    from lazyllm.backends.openai_api import OpenAIEngine
    from lazyllm.backends.vllm_engine import find_vllm_python
    from lazyllm.backends.vllm_server import serve
    from lazyllm.core.model_store import resolve_model_dir

    from .run import write_section

    python = find_vllm_python()
    if python is None:
        raise SystemExit("no vLLM install: set LAZYLLM_VLLM_VENV (see scripts/install_vllm.sh)")
    folder = resolve_model_dir(lazyllm.Transformers(), model_ws)
    inside = {"engine": 0.0}
    original = OpenAIEngine.generate
    timed = _timed_generate(original, inside, "engine")
    with serve(folder, dtype="float32", served_model_name="smollm2", gpu_memory_utilization=0.5,
               log_path=model_ws / f"vllm-server-{os.getpid()}.log", python=python) as url:
        OpenAIEngine.generate = timed  # type: ignore[method-assign]
        try:
            df = pl.DataFrame({"x": [f"item {i}" for i in range(n)]})
            frame = lazyllm.from_polars(df).generate("y", lazyllm.OpenAI("smollm2", base_url=url),
                                                     prompt="Say {{ x }} in French.", max_tokens=max_tokens)
            ws = Path(tempfile.mkdtemp(prefix="lazyllm-overhead-real-"))
            try:
                start = time.perf_counter()
                out = frame.collect(workspace=ws, progress=False)
                cold = time.perf_counter() - start
                engine = inside["engine"]
                start = time.perf_counter()
                frame.collect(workspace=ws, progress=False)
                warm = time.perf_counter() - start
            finally:
                shutil.rmtree(ws, ignore_errors=True)
        finally:
            OpenAIEngine.generate = original  # type: ignore[method-assign]
    assert out.height == n and out["y_error"].null_count() == n  # every row answered
    own = cold - engine
    lines = ["| rows | max_tokens | cold s | inside the engine s | lazyllm's own s | share of wall time | "
             "µs/row (own) | warm s |", "|---|---|---|---|---|---|---|---|",
             f"| {n:,} | {max_tokens} | {cold:.2f} | {engine:.2f} | {own:.3f} | {own / cold:.1%} | "
             f"{own * 1e6 / n:.0f} | {warm:.3f} |"]
    body = "\n".join(lines) + (
        "\n\nWorkload: one `generate` (`\"Say {{ x }} in French.\"`) with `lazyllm.OpenAI(\"smollm2\", base_url=...)` "
        "against a local vLLM OpenAI-compatible server (SmolLM2-135M-Instruct, float32, CPU, from "
        "`$LAZYLLM_VLLM_VENV`), fresh workspace. *Inside the engine*: time spent in the OpenAI engine's "
        "`generate` (HTTP requests in flight, decoding the answers); *lazyllm's own*: the rest of the cold "
        "collect (plan, render, keys, cache lookups, leases and commits, assembling the frame). Warm: the same "
        "collect again (every row from the cache, no HTTP call). The server shares the 2 cores with lazyllm.")
    write_section("Per-row overhead with a real engine (issue 19)", body, " ".join(sys.argv))


def _profile(n: int) -> None:
    from pyinstrument import Profiler

    ws = Path(tempfile.mkdtemp(prefix="lazyllm-overhead-ws-"))
    frame = _frame(n)
    try:
        for phase in ("cold", "warm", "explain"):
            profiler = Profiler(interval=0.002)
            profiler.start()
            if phase == "explain":
                frame.explain(workspace=ws)
            else:
                frame.collect(workspace=ws, progress=False)
            profiler.stop()
            print(f"===== {phase}, {n} rows")
            print(profiler.output_text(color=False))
    finally:
        shutil.rmtree(ws, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sink-child", nargs=3, metavar=("ROWS", "ROWS_PER_SHARD", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--phases-child", type=int, metavar="ROWS", help=argparse.SUPPRESS)
    parser.add_argument("--profile", type=int, metavar="ROWS", help="pyinstrument profile of each phase")
    parser.add_argument("--compare", metavar="PYTHON", help="before/after: the Python of another install")
    parser.add_argument("--rows", type=int, nargs="*", default=[100_000], help="--compare: input sizes")
    parser.add_argument("--real", type=int, metavar="ROWS",
                        help="the OpenAI engine against a local vLLM server ($LAZYLLM_VLLM_VENV): overhead share")
    parser.add_argument("--max-tokens", type=int, default=16, help="--real: tokens generated per row")
    parser.add_argument("--model-workspace", default=None, help="--real: workspace holding the converted model")
    parser.add_argument("--ablate", action="store_true",
                        help="--compare: also this tree with the columnar path off and one lease per batch")
    parser.add_argument("--lease-ahead", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("LAZYLLM_QUIET", "1")
    if args.sink_child:
        _sink_child(int(args.sink_child[0]), int(args.sink_child[1]), Path(args.sink_child[2]))
    elif args.phases_child:
        if args.lease_ahead is not None:
            from lazyllm.planner import scheduler

            scheduler.LEASE_AHEAD = args.lease_ahead  # type: ignore[attr-defined]
        ws = Path(tempfile.mkdtemp(prefix="lazyllm-overhead-ws-"))
        try:
            print(json.dumps(_phases(args.phases_child, ws)))
        finally:
            shutil.rmtree(ws, ignore_errors=True)
    elif args.compare:
        _compare(args.compare, tuple(args.rows), args.repeats or 2, ablate=args.ablate)
    elif args.real:
        model_ws = Path(args.model_workspace or tempfile.mkdtemp(prefix="lazyllm-overhead-models-"))
        _real_engine(args.real, args.max_tokens, model_ws)
    elif args.profile:
        _profile(args.profile)
    else:
        bench_overhead(args)


if __name__ == "__main__":
    main()
