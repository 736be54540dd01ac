"""lazyllm's own per-row work at scale (issue 19): cold and warm collect, ``explain()``,
and peak memory of a streamed ``sink_parquet`` job.

Workload: one ``generate`` (prompt ``"Say {{ x }}"``, 8 tokens) over ``x = "item <i>"`` with
the deterministic test engine (``TestModel(batch_size=512)``), whose engine work is a few
microseconds per request, so the wall time per row is lazyllm's own work (render, key,
cache, schedule, assemble) plus that small engine share: an upper bound of the overhead.

- cold: a fresh workspace (every request computed and committed, one LMDB commit per
  engine batch plus one lease transaction);
- warm: the same collect again (everything served from the cache);
- explain: ``explain()`` on the warm workspace (a dry run over every row);
- peak RSS: ``sink_parquet`` of a 1M-row parquet input in a child process per partition
  size (its ``VmHWM``; ``resource.getrusage`` where there is no ``/proc``), cold workspace.

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
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROMPT = "Say {{ x }}"


def _frame(n: int) -> Any:
    import polars as pl

    import lazyllm

    df = pl.DataFrame({"x": pl.Series([f"item {i}" for i in range(n)], dtype=pl.String)})
    model = lazyllm.TestModel(name="bench", batch_size=512)
    return lazyllm.from_polars(df).generate("y", model, prompt=PROMPT, max_tokens=8)


def _phases(n: int, ws: Path) -> dict[str, float]:
    """Seconds of cold collect, warm collect and explain() on one fresh workspace."""
    frame = _frame(n)
    out: dict[str, float] = {}
    start = time.perf_counter()
    frame.collect(workspace=ws, progress=False)
    out["cold"] = time.perf_counter() - start
    start = time.perf_counter()
    df = frame.collect(workspace=ws, progress=False)
    out["warm"] = time.perf_counter() - start
    assert df.height == n  # a benchmark of a broken run is worthless
    start = time.perf_counter()
    frame.explain(workspace=ws)
    out["explain"] = time.perf_counter() - start
    return out


def _sink_child(n: int, rows_per_shard: int, work: Path) -> None:
    """Child process: stream a 1M-row parquet input through the generate into parquet shards."""
    import lazyllm

    frame = lazyllm.read_parquet(work / "input.parquet").generate(
        "y", lazyllm.TestModel(name="bench", batch_size=512), prompt=PROMPT, max_tokens=8)
    start = time.perf_counter()
    shards = frame.sink_parquet(work / f"out-{rows_per_shard}", rows_per_shard=rows_per_shard,
                                workspace=work / f"ws-{rows_per_shard}", progress=False)
    seconds = time.perf_counter() - start
    print(json.dumps({"peak_mib": _peak_kib() / 1024, "seconds": seconds, "shards": len(shards)}))


def _peak_kib() -> float:
    """Peak resident memory of this process in KiB. Linux keeps ``ru_maxrss`` across
    ``execve``, so a child started by a large parent reports the parent's peak: take the
    address space's own high-water mark (``VmHWM``) where there is one."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1])
    except OSError:
        pass
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


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
    sink = [] if quick else _sink_rss(1_000_000, (50_000, 500_000))  # first: this process is still small
    sizes = (100_000,) if quick else (100_000, 1_000_000)
    lines = ["| rows | cold µs/row | warm µs/row | explain s | explain s per 1M rows | rounds |",
             "|---|---|---|---|---|---|"]
    for n in sizes:
        rounds = 1 if quick or n >= 1_000_000 else (args.repeats or 2)
        got: dict[str, list[float]] = {"cold": [], "warm": [], "explain": []}
        for _ in range(rounds):
            ws = Path(tempfile.mkdtemp(prefix="lazyllm-overhead-ws-"))
            try:
                for phase, seconds in _phases(n, ws).items():
                    got[phase].append(seconds)
            finally:
                shutil.rmtree(ws, ignore_errors=True)

        def cell(phase: str, scale: float) -> str:
            vals = [v * scale for v in got[phase]]
            med = statistics.median(vals)
            return f"{med:.1f}" if len(vals) == 1 else f"{med:.1f} ({min(vals):.1f}–{max(vals):.1f})"

        lines.append(f"| {n:,} | {cell('cold', 1e6 / n)} | {cell('warm', 1e6 / n)} | {cell('explain', 1)} | "
                     f"{cell('explain', 1e6 / n)} | {rounds} |")
    body = "\n".join(lines)
    if sink:
        body += "\n\n| streamed sink_parquet, 1M rows | peak RSS MiB | seconds | shards |\n|---|---|---|---|\n"
        body += "\n".join(f"| rows_per_shard={r['rows_per_shard']:,} | {r['peak_mib']:.0f} | {r['seconds']:.1f} | "
                          f"{r['shards']} |" for r in sink)
    body += ("\n\nWorkload: one `generate` (`\"Say {{ x }}\"`, 8 tokens) with the deterministic test engine "
             "(`TestModel(batch_size=512)`); wall time per row, so the figures are an upper bound of lazyllm's "
             "own work (the engine's share is a few µs per request). Cold: fresh workspace; warm: the same "
             "collect again; explain: `explain()` on the warm workspace. Peak RSS: a child process per "
             "partition size, cold workspace, input read from parquet (`VmHWM`: Linux keeps `ru_maxrss` across exec, so a child of a large parent would report the parent's peak). The machine was shared with other "
             "jobs while measuring (2 cores): figures are noisy, compare within a run.")
    write_section("Per-row overhead at scale (issue 19)", body, " ".join(sys.argv))


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
        got: dict[str, dict[str, list[float]]] = {k: {"cold": [], "warm": [], "explain": []} for k in pythons}
        for _ in range(rounds):
            for name, python in pythons.items():
                proc = subprocess.run([python, "-m", "benchmarks.overhead", "--phases-child", str(n)],
                                      capture_output=True, text=True, check=True, cwd=neutral)
                for phase, seconds in json.loads(proc.stdout.strip().splitlines()[-1]).items():
                    got[name][phase].append(seconds * 1e6 / n)
        for phase in ("cold", "warm", "explain"):
            b, a = statistics.median(got["before"][phase]), statistics.median(got["after"][phase])
            lines.append(f"| {n:,} | {phase} | {b:.1f} | {a:.1f} | {a / b:.2f} |")
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
        got: dict[str, dict[str, list[float]]] = {k: {"cold": [], "warm": [], "explain": []} for k in names}
        for _ in range(rounds):
            for name, (python, extra, env) in variants.items():
                proc = subprocess.run([python, "-m", "benchmarks.overhead", "--phases-child", str(n), *extra],
                                      capture_output=True, text=True, check=True, cwd=neutral,
                                      env={**os.environ, **env})
                for phase, seconds in json.loads(proc.stdout.strip().splitlines()[-1]).items():
                    got[name][phase].append(seconds * 1e6 / n)
        for phase in ("cold", "warm", "explain"):
            med = {k: statistics.median(got[k][phase]) for k in names}
            cells = " | ".join(f"{med[k]:.1f}" for k in names)
            lines.append(f"| {n:,} | {phase} | {cells} | {med['after'] / med['before']:.2f} |")
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
    inside = [0.0]
    original = OpenAIEngine.generate

    def timed(self: Any, requests: Any) -> Any:
        parts = original(self, requests)
        while True:
            start = time.perf_counter()
            try:
                part = next(parts)
            except StopIteration:
                inside[0] += time.perf_counter() - start
                return
            inside[0] += time.perf_counter() - start
            yield part

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
                engine = inside[0]
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
