"""``lazyllm doctor``: what this machine is, what it runs fast, and the default model's engine.

>>> report = diagnose(measure=False)
>>> report["choice"]["dtype"]
'float32'
"""

from __future__ import annotations

import os
import time
from typing import Any

from lazyllm.core.catalog import DEFAULT_MODEL
from lazyllm.backends.hardware import (FLAGS_THAT_MATTER, choose_default_engine, detect_machine, read_measurement,
                                       write_measurement)
from lazyllm.backends.vllm_engine import find_vllm_python

from .models import Transformers
from .planner.workspace import resolve_workspace
from lazyllm.backends.registry import engine_factory
from lazyllm.core.protocols import Message, Request, SamplingParams
from lazyllm.examples.docs_to_qa import QUESTION_SYSTEM, load_docs

__all__ = ["diagnose", "measure_engines", "format_report", "MAIN_JOB_OUTPUT_TOKENS"]

#: Output tokens of the main job's generation passes at 64 docstrings (about; see README):
#: the measured engine speed is extrapolated to this size to pick the faster engine.
MAIN_JOB_OUTPUT_TOKENS = 7000


def _installed() -> dict[str, str | None]:
    import transformers

    vllm_python = find_vllm_python()
    return {"transformers": transformers.__version__, "vllm": str(vllm_python) if vllm_python else None}


def measure_engines(workspace: Any = None, *, prompts: int = 16, max_tokens: int = 48) -> dict[str, Any]:
    """Time each installed engine on the default model (float32) with main-job-shaped requests.

    Each engine is loaded (timed: the load), then answers ``prompts`` question prompts
    of the main job (greedy, ``max_tokens`` each; timed: output tokens/s). The main
    job's time on each engine is estimated as load + :data:`MAIN_JOB_OUTPUT_TOKENS` /
    speed and kept in the workspace for this machine (``machines/<key>.json``), where
    :func:`lazyllm.default_model` reads it. Nothing enters the cache.

    Parameters
    ----------
    workspace : path or Workspace, optional
        The workspace whose converted model is used and where the result is kept.
    prompts : int
        Requests in the timed pass.
    max_tokens : int
        Output tokens per request at most.

    Returns
    -------
    dict
        ``{"seconds": {engine: estimated main-job seconds or None if it failed},
        "detail": {engine: {"load_s", "output_tokens", "output_tokens_per_s", ...}}}``.

    Cost: one model load and ``prompts`` generations per installed engine (about half a
    minute per engine on a 2-core CPU; vLLM's start-up is most of it).
    """
    ws = resolve_workspace(workspace)
    requests = [Request(messages=(Message("system", QUESTION_SYSTEM),
                                  Message("user", f"Read this documentation of `{row['name']}`:\n\n{row['doc']}\n\n"
                                                  f"Write a question about `{row['name']}` that starts with \"How\" "
                                                  "or \"What\".")),
                        params=SamplingParams(max_tokens=max_tokens))
                for row in load_docs(limit=prompts).iter_rows(named=True)]
    engines = ["transformers"] + (["vllm"] if find_vllm_python() is not None else [])
    seconds: dict[str, float | None] = {}
    detail: dict[str, Any] = {}
    for name in engines:
        spec = Transformers(DEFAULT_MODEL, engine=name).runtime_spec()
        engine = None
        try:
            t0 = time.perf_counter()
            engine = engine_factory(spec.provider)(spec, workspace=ws.path)
            engine.load()
            load_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            out_tokens = sum(r.output_tokens for part in engine.generate(requests) for _, r in part)
            gen_s = time.perf_counter() - t1
            tok_s = out_tokens / max(gen_s, 1e-9)
            seconds[name] = round(load_s + MAIN_JOB_OUTPUT_TOKENS / max(tok_s, 1e-9), 1)
            detail[name] = {"load_s": round(load_s, 1), "generate_s": round(gen_s, 1), "output_tokens": out_tokens,
                            "output_tokens_per_s": round(tok_s, 1), "requests": len(requests)}
        except Exception as exc:  # noqa: BLE001 - a failing engine is reported, never chosen
            seconds[name] = None
            detail[name] = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            if engine is not None:
                engine.close()
    write_measurement(ws.path, seconds, detail)
    return {"seconds": seconds, "detail": detail}


def diagnose(workspace: Any = None, *, measure: bool = False) -> dict[str, Any]:
    """The machine, what is installed, the kept measurement and the default model's choice.

    Parameters
    ----------
    workspace : path or Workspace, optional
        Where a measurement for this machine is read from (and written, with ``measure``).
    measure : bool
        Run :func:`measure_engines` first (about half a minute per installed engine).

    Returns
    -------
    dict
        ``machine``, ``installed``, ``measurement`` (or None) and ``choice``
        (``engine``, ``device``, ``dtype``, ``reasons``).
    """
    ws = resolve_workspace(workspace)
    machine = detect_machine()
    installed = _installed()
    if measure:
        measure_engines(ws)
    measurement = read_measurement(ws.path)
    names = [name for name, where in installed.items() if where]
    pinned = os.environ.get("LAZYLLM_DEFAULT_ENGINE")
    choice = choose_default_engine(machine, names, measurement)
    try:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - informational only
        capability = "unknown"
    return {
        "machine": {"key": machine.key, "cpu_model": machine.cpu_model, "vendor": machine.vendor,
                    "cores": machine.cores, "flags": {f: f in machine.flags for f in FLAGS_THAT_MATTER},
                    "native_bf16": machine.native_bf16, "torch_cpu_capability": capability,
                    "cuda": [{"name": n, "capability": f"{c[0]}.{c[1]}"} for n, c in machine.cuda]},
        "installed": installed,
        "measurement": measurement,
        "pinned": pinned,
        "choice": {"engine": pinned if pinned in ("transformers", "vllm") else choice.engine,
                   "device": choice.device, "dtype": choice.dtype,
                   "reasons": list(choice.reasons) + ([f"LAZYLLM_DEFAULT_ENGINE={pinned} pins the engine"]
                                                     if pinned in ("transformers", "vllm") else [])},
        "workspace": str(ws.path),
    }


def format_report(report: dict[str, Any]) -> str:
    """The report of :func:`diagnose` as text."""
    m = report["machine"]
    flags = " ".join(f"{f}{'+' if v else '-'}" for f, v in m["flags"].items())
    lines = [
        f"machine      {m['cpu_model']} ({m['vendor']}), {m['cores']} cores, key {m['key']}",
        f"CPU flags    {flags}",
        f"             native bfloat16: {'yes' if m['native_bf16'] else 'no'} · torch CPU kernels: "
        f"{m['torch_cpu_capability']}",
        "GPUs         " + (", ".join(f"{g['name']} (sm {g['capability']})" for g in m["cuda"]) or "none (CUDA)"),
        "engines      " + ", ".join(f"{k}: {v or 'not installed'}" for k, v in report["installed"].items()),
    ]
    meas = report["measurement"]
    if meas:
        shown = ", ".join(f"{e}: {'failed' if s is None else f'{s:.1f} s'}" for e, s in meas["seconds"].items())
        lines.append(f"measured     {meas.get('measured_at', '?')}: estimated main job {shown}")
        for engine, d in meas.get("detail", {}).items():
            lines.append(f"             {engine}: {d}")
    else:
        lines.append("measured     nothing yet on this machine (lazyllm doctor --measure)")
    c = report["choice"]
    lines.append(f"default      {DEFAULT_MODEL} · engine {c['engine']} · device {c['device']} · dtype {c['dtype']}")
    lines += [f"  because    {r}" for r in c["reasons"]]
    lines.append(f"workspace    {report['workspace']}")
    return "\n".join(lines)
