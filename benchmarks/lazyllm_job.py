"""The main docs->QA job with lazyllm, as a user script (one process per run).

The plan of ``lazyllm.examples.docs_to_qa`` (question -> answer -> judge -> filter
``score >= threshold``), built from the workload spec written by
``benchmarks/run.py`` so that every tool gets the same docs, prompts and max tokens.
The judge is lazyllm's ``judge()`` (MT-Bench reference-guided prompt, score
constrained to 1..10); ``spec["judge"]["prompt"]`` replaces its user prompt.

Run: ``python -m benchmarks.lazyllm_job SPEC.json RESULT.json``. The spec's
``lazyllm`` entry names the workspace and the engine (``transformers``, or ``vllm``:
the vLLM worker of ``.venv-vllm``).
"""

from __future__ import annotations

from typing import Any

import polars as pl

import lazyllm
from benchmarks._workload import STAGES, job_main
from lazyllm.planner.executor import collect_all


def model_for(spec: dict[str, Any]) -> Any:
    """The model spec: transformers (fp32, the spec's batch size and threads) or the vLLM worker."""
    engine = spec["lazyllm"].get("engine", "transformers")
    if engine == "vllm":
        return lazyllm.VLLM(lazyllm.DEFAULT_MODEL, dtype=spec["dtype"])
    return lazyllm.Transformers(lazyllm.DEFAULT_MODEL, dtype=spec["dtype"], batch_size=spec["batch_size"],
                                num_threads=spec["threads"])


def build(spec: dict[str, Any], model: Any) -> tuple[Any, Any]:
    """The lazy frames (nothing runs): every judged row, and the rows the filter keeps."""
    q, a, j = spec["question"], spec["answer"], spec["judge"]
    docs = lazyllm.from_polars(pl.DataFrame(spec["docs"]), label="stdlib docstrings")
    qa = (
        docs.generate("question", model, system=q["system"], prompt=q["prompt"], max_tokens=q["max_tokens"],
                      stop=q["stop"])
        .generate("answer", model, system=a["system"], prompt=a["prompt"], max_tokens=a["max_tokens"])
        .judge("score", model, question="question", answer="answer", reference="doc", system=j["system"],
               prompt=j["prompt"], max_tokens=j["max_tokens"], scale=tuple(j["scale"]))
    )
    return qa, qa.filter(pl.col("score") >= spec["threshold"])


def run_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Collect both frames in one run (the shared subplan runs once) in the spec's workspace.

    Returns ``rows`` (name, question, answer, score), ``kept`` (names), ``stages``
    (LLM calls per stage: the rows recomputed, cache hits excluded) and ``seconds``.
    """
    qa, kept = build(spec, model_for(spec))
    result = collect_all([qa.plan, kept.plan], workspace=spec["lazyllm"]["workspace"], progress=False)
    rows, kept_rows = result.frames
    calls = {stage: 0 for stage in STAGES}
    for stats in result.stats.values():
        stage = next(s for s, column in STAGES.items() if column == stats.column)
        calls[stage] += stats.calls
    return {
        "rows": rows.select("name", *STAGES.values()).to_dicts(),
        "kept": kept_rows["name"].to_list(),
        "stages": calls,
        "seconds": {"collect": result.seconds},
    }


def main(argv: list[str] | None = None) -> None:
    job_main(run_job, argv)


if __name__ == "__main__":
    main()
