"""The main-job comparison: lazyllm vs DataDreamer 0.46 vs a hand-written transformers script.

Every tool runs the same workload (:func:`workload_spec`): the docstrings of
``lazyllm.examples.docs_to_qa``, a question, an answer and a judge score per row
(greedy, max tokens 48/96/4, the same prompts and chat template), then
``score >= 7``. Each run is a fresh process of its own job script, started by
:func:`run_tool` with the same torch thread count:

- ``benchmarks/lazyllm_job.py``: lazyllm (transformers engine, or the vLLM worker);
- ``benchmarks/datadreamer_job.py``: DataDreamer, in ``.venv-datadreamer``
  (created by ``scripts/install_datadreamer.sh`` when missing);
- ``benchmarks/handwritten_job.py``: plain transformers, no framework.

A job writes a result JSON: the rows, the kept names, the rows it computed per stage
(cache hits excluded) and ``workflow_seconds`` (from the start of the workflow to the
end, interpreter start-up and imports excluded; the harness also measures the whole
process).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ._workload import STAGES

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(__file__).resolve().parent / ".work"
DATADREAMER_VENV = Path(os.environ.get("LAZYLLM_DATADREAMER_VENV", ROOT / ".venv-datadreamer"))
MAX_TOKENS = {"question": 48, "answer": 96, "judge": 4}


def changed_judge_prompt(prompt: str) -> str:
    """The judge prompt with one edit (the "one prompt changed" run): a renamed header."""
    changed = prompt.replace("[Question]", "[User Question]", 1)
    assert changed != prompt, "the judge prompt has no [Question] header to rename"
    return changed


def workload_spec(limit: int = 64, threads: int = 1, batch_size: int = 16, dtype: str = "float32",
                  changed: bool = False) -> dict[str, Any]:
    """The workload every tool runs: docs, per-stage system/user templates, max tokens, stop strings.

    The templates are the main job's (``lazyllm.examples.docs_to_qa``) and lazyllm's
    reference-guided judge prompts (``lazyllm.prompts``); ``changed`` edits the judge prompt.
    """
    from lazyllm import prompts
    from lazyllm.examples import docs_to_qa

    spec: dict[str, Any] = {
        "docs": docs_to_qa.load_docs(limit).to_dicts(),
        "threshold": docs_to_qa.THRESHOLD,
        "threads": threads,
        "batch_size": batch_size,
        "dtype": dtype,
        "question": {"system": docs_to_qa.QUESTION_SYSTEM, "prompt": docs_to_qa.QUESTION_PROMPT, "stop": ["\n"]},
        "answer": {"system": None, "prompt": docs_to_qa.ANSWER_PROMPT, "stop": None},
        "judge": {"system": prompts.JUDGE_REFERENCE_SYSTEM.format(lo=1, hi=10), "prompt": prompts.JUDGE_REFERENCE_PROMPT,
                  "stop": None, "scale": [1, 10]},  # the answer is constrained to the scale
    }
    if changed:
        spec["judge"]["prompt"] = changed_judge_prompt(spec["judge"]["prompt"])
    for stage in STAGES:
        spec[stage]["max_tokens"] = MAX_TOKENS[stage]
        for text in (spec[stage]["prompt"], spec[stage]["system"] or ""):
            # the job scripts render {{ column }} only; anything else would need Jinja2
            assert "{%" not in text and "{#" not in text, f"{stage}: template uses more than {{{{ column }}}}"
    return spec


# ------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------


def datadreamer_model_dir(source: Path) -> Path:
    """A copy of the converted model folder that transformers 4.49 (DataDreamer's) loads as
    transformers 5 does: ``rope_theta`` at the top of config.json (v5 nests it in
    ``rope_parameters``; without it v4 silently uses 10,000 instead of 100,000),
    ``torch_dtype``, a tokenizer class v4 knows, and the chat template inside
    tokenizer_config.json. The weights are a symlink. Made once."""
    target = WORK / "models-datadreamer" / source.name
    if (target / "config.json").is_file():
        return target
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=_mkdir(target.parent)))
    config = json.loads((source / "config.json").read_text())
    rope = config.get("rope_parameters") or {}
    if rope:
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"rope_parameters {rope} cannot be written for transformers 4.49 here")
        config["rope_theta"] = rope["rope_theta"]
    config.setdefault("torch_dtype", config.get("dtype", "float32"))
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer = json.loads((source / "tokenizer_config.json").read_text())
    for key in ("backend", "is_local", "local_files_only"):
        tokenizer.pop(key, None)
    tokenizer["tokenizer_class"] = "PreTrainedTokenizerFast"
    template = source / "chat_template.jinja"
    if template.is_file():
        tokenizer["chat_template"] = template.read_text()
    (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer, indent=2))
    for name in ("tokenizer.json", "generation_config.json"):
        shutil.copy(source / name, tmp / name)
    for weights in source.glob("*.safetensors"):
        (tmp / weights.name).symlink_to(weights.resolve())
    os.rename(tmp, target)
    return target


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def datadreamer_chat_templates(model_dir: Path, spec: dict[str, Any]) -> dict[str, dict[str, str | None]]:
    """Per stage, DataDreamer's ``chat_prompt_template`` and ``system_prompt`` giving the
    exact text the model's chat template gives (checked on the first row of each stage).

    The template is the model's own, rendered around DataDreamer's ``{{system_prompt}}``
    and ``{{prompt}}`` placeholders; a stage without a system prompt gets the template's
    default system message baked in (SmolLM2's template adds one)."""
    from transformers import AutoTokenizer

    from ._workload import context, render

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)

    def apply(system: str | None, user: str) -> str:
        chat = ([{"role": "system", "content": system}] if system is not None else []) + [
            {"role": "user", "content": user}]
        return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)

    out: dict[str, dict[str, str | None]] = {}
    for stage in STAGES:
        system = spec[stage]["system"]
        template = apply(None if system is None else "{{system_prompt}}", "{{prompt}}")
        row = context({**spec["docs"][0], "question": "Q?", "answer": "A."})
        user = render(spec[stage]["prompt"], row)
        dd_text = template.replace("{{system_prompt}}", system or "").replace("{{prompt}}", user)
        if dd_text != apply(system, user):
            raise AssertionError(f"{stage}: DataDreamer's chat prompt would differ from the model's chat template")
        out[stage] = {"chat_prompt_template": template, "system_prompt": system}
    return out


def datadreamer_python() -> Path:
    """The DataDreamer environment's interpreter, installed first when missing."""
    python = DATADREAMER_VENV / "bin" / "python"
    if not python.exists():
        print(f"DataDreamer is not installed in {DATADREAMER_VENV}: running scripts/install_datadreamer.sh "
              "(a few minutes, once)", file=sys.stderr, flush=True)
        env = {**os.environ, "LAZYLLM_DATADREAMER_VENV": str(DATADREAMER_VENV)}
        subprocess.run(["bash", str(ROOT / "scripts" / "install_datadreamer.sh")], check=True, env=env)
    return python


def vllm_available() -> bool:
    from lazyllm.backends.vllm_engine import find_vllm_python

    return find_vllm_python() is not None


# ------------------------------------------------------------------------------------
# Running one job
# ------------------------------------------------------------------------------------


def job_env(threads: int) -> dict[str, str]:
    """Environment of every job process: offline, quiet, ``threads`` CPU threads everywhere."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "LAZYLLM_QUIET": "1", "TOKENIZERS_PARALLELISM": "false", "LAZYLLM_NUM_THREADS": str(threads),
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "VLLM_CPU_OMP_THREADS_BIND": f"0-{threads - 1}" if threads > 1 else "0"}
    env.pop("PYTHONPATH", None)
    return env


def run_tool(tool: str, spec: dict[str, Any], *, python: Path | str = sys.executable) -> dict[str, Any]:
    """Run ``benchmarks/<tool>_job.py``'s ``main`` on ``spec`` in a fresh process (imported,
    not run as ``__main__``, so the job's classes pickle by reference); its result, plus
    ``process_seconds`` (the whole process, interpreter start-up and imports included).

    Raises RuntimeError with the end of the job's output when it fails."""
    logs = _mkdir(WORK / "logs")
    stamp = f"{tool}-{time.strftime('%H%M%S')}-{os.getpid()}-{time.perf_counter_ns() % 10**6}"
    spec_path, result_path, log_path = logs / f"{stamp}.spec.json", logs / f"{stamp}.result.json", logs / f"{stamp}.log"
    spec_path.write_text(json.dumps(spec))
    start = time.perf_counter()
    with log_path.open("w") as log:
        code = f"import sys; from benchmarks.{tool}_job import main; main(sys.argv[1:])"
        done = subprocess.run([str(python), "-c", code, str(spec_path), str(result_path)],
                              cwd=ROOT, env=job_env(spec["threads"]), stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"{tool} job failed (exit {done.returncode}); log {log_path}:\n{tail}")
    result = json.loads(result_path.read_text())
    result["process_seconds"] = seconds
    for path in (spec_path, result_path, log_path):
        path.unlink(missing_ok=True)
    return result


# ------------------------------------------------------------------------------------
# Comparing outputs
# ------------------------------------------------------------------------------------


def differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, int]:
    """Rows whose question / answer / score differ between two results (matched by name),
    and whether the kept sets differ (``kept`` = size of the symmetric difference)."""
    rows_b = {r["name"]: r for r in b["rows"]}
    out = {column: 0 for column in STAGES.values()}
    for row in a["rows"]:
        other = rows_b.get(row["name"], {})
        for column in out:
            out[column] += row[column] != other.get(column)
    out["kept"] = len(set(a["kept"]) ^ set(b["kept"]))
    return out


def describe_differences(diff: dict[str, int], rows: int) -> str:
    return (f"{diff['question']}/{rows} questions, {diff['answer']}/{rows} answers, {diff['score']}/{rows} scores "
            f"differ; kept sets differ by {diff['kept']} rows")


# ------------------------------------------------------------------------------------
# The results section
# ------------------------------------------------------------------------------------


def report(measures: dict[str, Any], first: dict[str, dict[str, Any]], *, limit: int, threads: int, repeats: int,
           vllm: bool, dtype: str, table: Any) -> str:
    """The markdown body of the results section: four tables, the targets, the output parity.

    ``measures``: run name -> ``benchmarks.run.Measure`` (seconds = whole process; extra
    ``workflow s`` = the job's own timing); ``first``: run name -> its first result."""
    import dataclasses
    import statistics

    def workflow(name: str) -> float:
        return statistics.median(measures[name].extra["workflow s"])

    def view(names: list[str], baseline: str) -> str:
        picked = {}
        for name in names:
            m = measures[name]
            ratio = f"{workflow(name) / workflow(baseline):.3f}"
            picked[name] = dataclasses.replace(m, extra={**m.extra, "workflow ratio": [ratio]})
        return table(picked, baseline, ("workflow s", "workflow ratio", "rows computed q/a/j", "kept"))

    def ratio(a: str, b: str) -> str:
        return f"{measures[a].median / measures[b].median:.3g} (process) / {workflow(a) / workflow(b):.3g} (workflow)"

    lazy_cold = ["lazyllm cold"] + (["lazyllm cold, vLLM"] if vllm else [])
    fastest = min(lazy_cold, key=lambda n: measures[n].median)
    rows = len(first["hand-written"]["rows"])
    parts = [
        f"Workload: the main job on {limit} standard-library docstrings (`lazyllm.examples.docs_to_qa`): "
        "question (max 48 tokens, stop at a newline) → answer (96) → judge (4; MT-Bench reference-guided "
        "prompt, answer constrained to the integers 1–10) → keep `score >= 7`. SmolLM2-135M-Instruct, "
        f"{dtype}, greedy, batch 16, {threads} torch thread(s) for every tool, identical prompt texts "
        f"(the model's chat template). {repeats} round(s), runs alternating in the order of the rows "
        "below; every run is a fresh process (`benchmarks/*_job.py`). *median s* is the whole process "
        "(interpreter start-up and imports included); *workflow s* is the job's own timing after its "
        "imports (lazyllm imports torch and transformers only when a model has to run, so its cold "
        "workflow time includes that import, about 2.5 s, and a warm run never pays it). *rows computed "
        "q/a/j*: prompts that reached a model per stage (question/answer/judge), cache hits excluded.",
        "**Same engine (HF transformers), cold** (lazyllm and DataDreamer start from an empty "
        "workspace / output folder; the hand-written script has no cache):",
        view(["hand-written", "lazyllm cold", "DataDreamer cold"], "hand-written"),
        "**Each tool on its fastest engine here, cold** (DataDreamer's pins keep it on transformers"
        + (f"; lazyllm also on the vLLM worker, vllm-cpu in `.venv-vllm`, {dtype}, eager):" if vllm
           else "; vLLM is not installed, so lazyllm runs on transformers too):"),
        view(["DataDreamer cold", *lazy_cold], "DataDreamer cold"),
        "**Warm rerun** (the cold run's workspace / output folder, everything cached):",
        view(["DataDreamer warm", "lazyllm warm"], "DataDreamer warm"),
        "**One prompt changed** (the judge's user prompt, `[Question]` → `[User Question]`, rerun in the "
        "warm workspace / folder):",
        view(["DataDreamer judge prompt changed", "lazyllm judge prompt changed"], "DataDreamer judge prompt changed"),
        "Targets (reported, not asserted):\n"
        f"- cold, each on its fastest engine: lazyllm ({fastest}) / DataDreamer = "
        f"{ratio(fastest, 'DataDreamer cold')} (target ≤ 0.5);\n"
        f"- cold, same engine: lazyllm / hand-written = {ratio('lazyllm cold', 'hand-written')} (target ≤ 1.05);\n"
        f"- warm: lazyllm cold / warm = {ratio('lazyllm cold', 'lazyllm warm')} (target ≥ 100); "
        f"DataDreamer cold / warm = {ratio('DataDreamer cold', 'DataDreamer warm')};\n"
        f"- judge prompt changed: lazyllm recomputes q/a/j = "
        f"{_computed(first['lazyllm judge prompt changed'])} rows in {workflow('lazyllm judge prompt changed'):.1f} s, "
        f"DataDreamer {_computed(first['DataDreamer judge prompt changed'])} in "
        f"{workflow('DataDreamer judge prompt changed'):.1f} s (target: only the judge rows).",
        "Outputs (first round, same prompts and greedy decoding):\n"
        f"- lazyllm (transformers) vs hand-written: "
        f"{describe_differences(differences(first['lazyllm cold'], first['hand-written']), rows)};\n"
        f"- DataDreamer vs hand-written: "
        f"{describe_differences(differences(first['DataDreamer cold'], first['hand-written']), rows)};\n"
        + (f"- lazyllm on vLLM vs on transformers: "
           f"{describe_differences(differences(first['lazyllm cold, vLLM'], first['lazyllm cold']), rows)};\n"
           if vllm else "")
        + f"- warm vs cold: lazyllm {describe_differences(differences(first['lazyllm warm'], first['lazyllm cold']), rows)}; "
        f"DataDreamer {describe_differences(differences(first['DataDreamer warm'], first['DataDreamer cold']), rows)}."
        + ("" if dtype == "float32" else
           f"\n\n{dtype} rounds differently with the batch (padding, batch size, engine kernels), so greedy "
           "texts differ between tools that group the prompts differently; float32 gives the same texts."),
        "DataDreamer 0.46.0 runs in `.venv-datadreamer` (transformers 4.49, `scripts/install_datadreamer.sh`) on a "
        "copy of the converted model folder that transformers 4.49 reads (`rope_theta`, tokenizer class). "
        "Equal settings are passed explicitly (see `benchmarks/datadreamer_job.py`): `chat_prompt_template` and "
        "`system_prompt` built from the model's chat template (DataDreamer applies none to a local folder by "
        "default); `do_sample=False` (DataDreamer turns `temperature=0` into sampling with `top_p=0`); the "
        "judge's scale via `prefix_allowed_tokens_fn`; the question's stop string via transformers' "
        "`stop_strings` (DataDreamer's own `stop=` ends every row after one token when the chat template "
        "holds newlines). One `HFTransformers` per stage (its constructor takes the system prompt), so "
        "DataDreamer loads the model three times per cold run.",
    ]
    return "\n\n".join(parts)


def _computed(result: dict[str, Any]) -> str:
    return "/".join(str(result["stages"][s]) for s in STAGES)
