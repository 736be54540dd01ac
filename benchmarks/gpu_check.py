"""A GPU check in one command, inside 8 minutes with the embedded model (SmolLM2-135M).

On a machine with a CUDA GPU and the packages present it measures:

1. the transformers engine: output tokens/s over 256 prompts x 128 tokens (greedy),
   load time and peak GPU memory;
2. a LoRA SFT step (TRL ``SFTTrainer`` + PEFT through :mod:`lazyllm.backends.trainers`):
   seconds per optimizer step and peak GPU memory;
3. where vLLM is importable (this interpreter, ``.venv-vllm`` or ``LAZYLLM_VLLM_VENV``):
   lazyllm's vLLM engine vs one raw ``vllm.LLM.chat`` over the same 1,000 seeded prompts
   (:mod:`benchmarks.engines_raw`, A then B), output tokens/s and the ratio.

Each part runs only if the time left allows it (``--budget`` seconds, default 450), so
the whole stays inside 8 minutes. It prints a table and writes ``gpu_check.json`` to
``$OUT`` (or ``--out``) when set. Without a CUDA GPU it says so, writes that, and exits 0.

Usage (from the repository root)::

    python -m benchmarks.gpu_check            # OUT=/some/dir python -m benchmarks.gpu_check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Seconds each part needs at most on a recent GPU (a part starts only when this much time is left).
NEEDS = {"transformers": 90, "lora_sft": 120, "vllm": 240}


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _peak_gib() -> float:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 3)


def _reset_peak() -> None:
    import torch

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def part_transformers(work: Path, dtype: str) -> dict[str, Any]:
    import lazyllm
    from lazyllm.core.protocols import Message, Request, SamplingParams
    from lazyllm.backends.transformers import TransformersEngine

    from .engines_raw import prompts

    _reset_peak()
    spec = lazyllm.Transformers(lazyllm.DEFAULT_MODEL, dtype=dtype, device="cuda", batch_size=64)
    requests = [Request(messages=(Message("user", p),), params=SamplingParams(max_tokens=128)) for p in prompts(256)]
    with TransformersEngine(spec, workspace=work) as engine:
        start = time.perf_counter()
        list(engine.generate([requests[0]]))  # load and warm up
        load = time.perf_counter() - start
        start = time.perf_counter()
        tokens = sum(r.output_tokens for part in engine.generate(requests) for _, r in part)
        seconds = time.perf_counter() - start
    return {"prompts": len(requests), "load_s": round(load, 2), "generate_s": round(seconds, 2),
            "output_tokens": tokens, "tokens_per_s": round(tokens / seconds, 1), "peak_gib": _peak_gib()}


def part_lora_sft(work: Path, dtype: str) -> dict[str, Any]:
    import lazyllm
    from lazyllm.backends.trainers import TrainJob, train
    from lazyllm.core.model_store import resolve_model_dir

    from .engines_raw import prompts

    _reset_peak()
    base = resolve_model_dir(lazyllm.Transformers(lazyllm.DEFAULT_MODEL), work)
    rows = [{"prompt": p, "completion": f"Here is {p[6:].rstrip('.')}: " + "a clear and helpful answer. " * 8}
            for p in prompts(256)]
    job = TrainJob(method="sft", base_dir=Path(base), output_dir=work / "sft", train=rows,
                   lora={"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
                   max_steps=20, batch_size=16, max_length=256, save_steps=1000, logging_steps=5)
    result = train(job)
    m = result.metrics
    return {"steps": m.get("steps"), "seconds_per_step": m.get("seconds_per_step"), "train_s": m.get("seconds"),
            "setup_s": m.get("setup_seconds"), "rows_per_step": 16, "final_train_loss": m.get("final_train_loss"),
            "peak_gib": _peak_gib(), **{k: v for k, v in m.items() if "peak" in k}}


def part_vllm(work: Path, dtype: str) -> dict[str, Any]:
    from .engines_raw import vllm_pair
    from .run import alternate

    args = argparse.Namespace(prompts=1000, max_tokens=256, dtype=dtype)
    measures = alternate(vllm_pair(args, work), 1)
    out: dict[str, Any] = {"prompts": 1000, "max_tokens": 256}
    for name, m in measures.items():
        out[name] = {k: v[0] for k, v in m.extra.items()} | {"wall_s": round(m.seconds[0], 2)}
    lazy, raw = out["lazyllm VLLMEngine"]["tok/s"], out["raw LLM.chat"]["tok/s"]
    out["ratio_tokens_per_s"] = round(lazy / raw, 3) if raw else None
    return out


def _vllm_available() -> bool:
    from lazyllm.backends.vllm_engine import find_vllm_python

    return find_vllm_python() is not None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for all parts (default 450)")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_check.json (default $OUT)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    from lazyllm.backends.hardware import detect_machine

    machine = detect_machine()
    report: dict[str, Any] = {"machine": machine.describe(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                          time.gmtime()),
                              "parts": {}}
    if not _cuda():
        report["skipped"] = "no CUDA GPU here (torch.cuda.is_available() is False): nothing measured"
        return _finish(report, args.out)
    dtype = "bfloat16" if machine.cuda_bf16 else "float32"
    report["dtype"] = dtype
    parts: dict[str, Callable[[Path, str], dict[str, Any]]] = {
        "transformers": part_transformers, "lora_sft": part_lora_sft}
    if _vllm_available():
        parts["vllm"] = part_vllm
    else:
        report["parts"]["vllm"] = {"skipped": "vLLM is not importable here (bash scripts/install_vllm.sh)"}
    work = Path(tempfile.mkdtemp(prefix="lazyllm-gpu-check-"))
    try:
        for name, fn in parts.items():
            left = args.budget - (time.monotonic() - start)
            if left < NEEDS[name]:
                report["parts"][name] = {"skipped": f"{left:.0f} s left of the budget, {NEEDS[name]} s needed"}
                continue
            t0 = time.monotonic()
            try:
                report["parts"][name] = fn(work, dtype)
            except Exception as exc:  # noqa: BLE001 - one failed part must not hide the others
                report["parts"][name] = {"error": f"{type(exc).__name__}: {exc}",
                                         "traceback": traceback.format_exc()[-2000:]}
            report["parts"][name]["part_s"] = round(time.monotonic() - t0, 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["seconds"] = round(time.monotonic() - start, 1)
    return _finish(report, args.out)


def _finish(report: dict[str, Any], out: str | None) -> dict[str, Any]:
    lines = [f"GPU check · {report['machine']}"]
    if "skipped" in report:
        lines.append(f"skipped: {report['skipped']}")
    for name, result in report["parts"].items():
        flat = {k: v for k, v in result.items() if k != "traceback"}
        lines.append(f"| {name} | " + " · ".join(f"{k}: {v}" for k, v in flat.items()) + " |")
    print("\n".join(lines))
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
