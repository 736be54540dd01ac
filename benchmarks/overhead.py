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


def _compare(baseline: str, sizes: tuple[int, ...], rounds: int) -> None:
    """Alternate (A B A B) child processes of another install (``baseline``: its Python, e.g.
    a virtual environment with the integration branch) and this one; write medians and ratios."""
    import statistics

    from .run import write_section

    pythons = {"before": baseline, "after": sys.executable}
    lines = ["| rows | phase | before µs/row | after µs/row | after / before |", "|---|---|---|---|---|"]
    for n in sizes:
        got: dict[str, dict[str, list[float]]] = {k: {"cold": [], "warm": [], "explain": []} for k in pythons}
        for _ in range(rounds):
            for name, python in pythons.items():
                proc = subprocess.run([python, "-m", "benchmarks.overhead", "--phases-child", str(n)],
                                      capture_output=True, text=True, check=True,
                                      cwd=Path(__file__).resolve().parent.parent)
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
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("LAZYLLM_QUIET", "1")
    if args.sink_child:
        _sink_child(int(args.sink_child[0]), int(args.sink_child[1]), Path(args.sink_child[2]))
    elif args.phases_child:
        ws = Path(tempfile.mkdtemp(prefix="lazyllm-overhead-ws-"))
        try:
            print(json.dumps(_phases(args.phases_child, ws)))
        finally:
            shutil.rmtree(ws, ignore_errors=True)
    elif args.compare:
        _compare(args.compare, tuple(args.rows), args.repeats or 2)
    elif args.profile:
        _profile(args.profile)
    else:
        bench_overhead(args)


if __name__ == "__main__":
    main()
