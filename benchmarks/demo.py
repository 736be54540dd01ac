"""The README's main job as a new user runs it: ``python -m lazyllm demo`` cold (empty
workspace: model conversion, every LLM pass, SFT and DPO, held-out answers) and warm (the
same command again: served from the workspace), each as a process of its own.

Two CPU kinds on one machine, alternating: this CPU's own kernels, and AVX2-only kernels
(``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``, ``MKL_ENABLE_INSTRUCTIONS=AVX2``:
torch, oneDNN and MKL then run the code paths of an AVX2-only CPU such as an AMD EPYC
7B13; an emulation of that CPU's instruction set, not of its clock or caches). The
engine and dtype are what ``lazyllm.default_model()`` picks (``lazyllm doctor``).

    python -m benchmarks.run demo [--limit 64] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .run import WORK, write_section

AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def _demo(limit: int, workspace: Path, out: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lazyllm", "demo", "--limit", str(limit), "--workspace",
                           str(workspace), "--out", str(out), "--quiet"], env={**os.environ, **env},
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"lazyllm demo failed: {done.stderr[-3000:]}")
    return time.perf_counter() - start


def bench_demo(args: argparse.Namespace) -> None:
    import statistics

    import lazyllm

    limit = 8 if args.quick else args.limit
    repeats = args.repeats or 1
    kinds = {"native": {}, "avx2": AVX2_ONLY}
    cold: dict[str, list[float]] = {k: [] for k in kinds}
    warm: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(repeats):  # alternating: native, avx2, native, avx2, ...
        for kind, env in kinds.items():
            WORK.mkdir(parents=True, exist_ok=True)
            ws = Path(tempfile.mkdtemp(prefix="demo-ws-", dir=WORK))
            out = Path(tempfile.mkdtemp(prefix="demo-out-", dir=WORK))
            try:
                cold[kind].append(_demo(limit, ws, out, env))
                warm[kind].append(_demo(limit, ws, out / "warm", env))
            finally:
                shutil.rmtree(ws, ignore_errors=True)
                shutil.rmtree(out, ignore_errors=True)
    spec = lazyllm.default_model()
    rows = ["| CPU kernels | cold median s | cold min–max s | ratio vs native | warm median s |", "|---|---|---|---|---|"]
    base = statistics.median(cold["native"])
    for kind in kinds:
        c = statistics.median(cold[kind])
        rows.append(f"| {kind} | {c:.1f} | {min(cold[kind]):.1f}–{max(cold[kind]):.1f} | {c / base:.2f} | "
                    f"{statistics.median(warm[kind]):.2f} |")
    body = (f"`python -m lazyllm demo --limit {limit}` in a fresh workspace (cold: model conversion, every "
            f"LLM pass, training, held-out answers), then again (warm). Default model on engine `{spec.engine}`, "
            f"dtype `{spec.dtype}`, device `{spec.device}`; {repeats} run(s) per kind, alternating. `avx2` = "
            "AVX2-only kernels (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2, "
            "MKL_ENABLE_INSTRUCTIONS=AVX2).\n\n" + "\n".join(rows))
    write_section("Main job (lazyllm demo), native vs AVX2-only kernels", body,
                  f"python -m benchmarks.run demo --limit {limit} --repeats {repeats}")
