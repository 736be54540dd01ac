"""Single-process executor vs the Ray executor with 2 engine replicas, on this machine.

Workload: the main job's question and answer passes on the first 32 docstrings with the
default model (greedy, 48 and 96 tokens), cold workspace each run (the converted model is
shared). On 2 cores no speed-up is expected: the comparison shows the Ray executor's
overhead (cluster start excluded: the cluster is started once before the runs; replica
start and model load included), and per-replica throughput while busy, which is what a
cluster multiplies.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

from .run import alternate, fresh_workspace, table, write_section


def bench_scaleout(args: argparse.Namespace) -> None:
    import lazyllm
    from lazyllm.examples import docs_to_qa
    from lazyllm.planner import executor

    ray_executor = lazyllm.RayExecutor(replicas=2, num_cpus=2)
    start = time.perf_counter()
    ray_executor.connect()
    cluster_start = time.perf_counter() - start
    limit = 32
    single = lazyllm.Transformers(lazyllm.DEFAULT_MODEL, batch_size=16, num_threads=2)
    replica = lazyllm.Transformers(lazyllm.DEFAULT_MODEL, batch_size=16, num_threads=1)  # 1 core each
    replica_rates: list[float] = []

    def run(model: Any, chosen: Any) -> Callable[[], dict[str, Any]]:
        def go() -> dict[str, Any]:
            ws = fresh_workspace()
            try:
                # selecting these columns prunes the judge (projection pruning): two LLM passes
                frame = docs_to_qa.build(limit, model=model).qa.select("name", "question", "answer")
                result = executor.collect(frame.plan, workspace=ws, progress=False, executor=chosen)
                tokens = sum(s.output_tokens for s in result.stats.values())
                out = {"output tokens": tokens, "LLM calls": sum(s.calls for s in result.stats.values())}
                if result.replicas:
                    rates = [r["tokens_per_second"] for r in result.replicas]
                    replica_rates.extend(rates)
                    out["per-replica tok/s busy"] = " / ".join(f"{r:.1f}" for r in rates)
                    out["requests per replica"] = " / ".join(str(r["requests"]) for r in result.replicas)
                return out
            finally:
                shutil.rmtree(ws, ignore_errors=True)

        return go

    measures = alternate({"single process (2 threads)": run(single, "local"),
                          "Ray, 2 replicas × 1 thread": run(replica, ray_executor)}, args.repeats or 2)
    body = table(measures, "single process (2 threads)",
                 ("output tokens", "LLM calls", "per-replica tok/s busy", "requests per replica"))
    mean_rate = sum(replica_rates) / len(replica_rates) if replica_rates else 0.0
    body += (f"\n\nWorkload: the main job's question and answer passes on {limit} docstrings, default model, "
             f"float32, greedy, batch 16, cold workspace each run (replica start and model load included; the "
             f"local Ray cluster was started once before, in {cluster_start:.1f} s). On 2 cores both variants "
             f"share the same CPUs, so the ratio is the Ray executor's overhead, not a speed-up. "
             f"Mean per-replica throughput while busy: {mean_rate:.1f} output tokens/s on one core; a cluster "
             f"of N such replicas projects to about N × that, since replicas share nothing but the driver's "
             f"cache writes.")
    write_section("Scale-out: single process vs Ray (2 replicas)", body, " ".join(sys.argv))
