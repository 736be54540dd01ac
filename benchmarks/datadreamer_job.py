"""The main docs->QA job with DataDreamer 0.46, run in DataDreamer's own virtual environment.

``benchmarks/run.py`` runs its :func:`main` with ``.venv-datadreamer/bin/python``
(``scripts/install_datadreamer.sh`` creates that environment: DataDreamer pins
transformers 4.48/4.49 and trl 0.9.6). It imports only the standard library, torch,
DataDreamer and ``benchmarks._workload``.

The workload is the one every tool of the comparison runs (question -> answer ->
judge, then ``score >= threshold``) written the DataDreamer way: a ``DataSource``
step of rendered prompts and a ``Prompt`` step per stage, inside a ``DataDreamer``
session whose output folder holds the saved steps and the LLM cache (a rerun in the
same folder reloads the steps; a changed prompt reruns the steps downstream of it).

Equal settings, made explicit because DataDreamer's defaults differ:

- chat template: for a local folder DataDreamer applies no chat template unless it
  is given one. Each stage's ``HFTransformers`` gets ``chat_prompt_template`` (the
  model's own template rendered around ``{{system_prompt}}`` / ``{{prompt}}``
  placeholders, see ``benchmarks/mainjob.py``) and the stage's ``system_prompt``,
  so the prompt text is the one lazyllm and the hand-written script send.
- greedy decoding: DataDreamer turns ``temperature=0`` into sampling with
  ``temperature=1, top_p=0``; ``do_sample=False`` (passed through the step's args to
  ``model.generate``) makes it plain greedy search.
- the judge's answer restricted to the integers 1..10 (lazyllm's ``judge()`` does it
  with xgrammar): ``prefix_allowed_tokens_fn`` (:class:`benchmarks._workload.ScoreConstraint`),
  which DataDreamer passes through to ``model.generate`` like ``do_sample``.
- the question's stop string ``"\\n"``: DataDreamer's own ``stop=`` is broken with a
  chat template: its stopping criterion decodes each row without special tokens and
  strips the prompt by matching the prompt text, which still holds ``<|im_start|>``
  etc., so the match fails, the prompt's own newlines count as generated, and every
  row stops after one token ("What"). The job passes transformers' ``stop_strings``
  (with the tokenizer) through to ``generate`` instead, and cuts the text at the stop
  string with the step's ``post_process``.
- the spec's dtype (float32 by default), torch thread count, batch size (16) and max tokens.

The model folder is a DataDreamer-loadable copy of the converted default model
(see ``mainjob.datadreamer_model_dir``: transformers 4.49 reads ``rope_theta`` and the
tokenizer class from other keys than transformers 5 writes).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from datadreamer import DataDreamer
from datadreamer.llms import HFTransformers
from datadreamer.steps import DataSource, Prompt

from benchmarks._workload import STAGES, job_main, job_record, CutAtStop, ScoreConstraint, context, parse_score, render

#: Prompts that reached the model in this process, per stage (cache misses).
COMPUTED: dict[str, int] = {}


class CountingHFTransformers(HFTransformers):
    """DataDreamer's HFTransformers, counting the prompts it runs (``_run_batch`` only sees
    the prompts that DataDreamer's saved steps and LLM cache did not serve). A module-level
    class: DataDreamer fingerprints its step arguments with dill, and a closure here would
    cost seconds per step."""

    stage = ""

    def _run_batch(self, *args: Any, **kwargs: Any) -> Any:
        COMPUTED[self.stage] = COMPUTED.get(self.stage, 0) + len(kwargs["inputs"])
        return super()._run_batch(*args, **kwargs)


def run_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the three Prompt steps in ``spec["datadreamer"]["output_folder"]``.

    Returns ``rows``, ``kept``, ``stages`` (prompts that reached the model per stage:
    DataDreamer's saved steps and LLM cache serve the others) and ``seconds``.
    """
    torch.set_num_threads(spec["threads"])
    dd = spec["datadreamer"]
    COMPUTED.clear()
    seconds: dict[str, float] = {}
    rows = [dict(d) for d in spec["docs"]]
    with DataDreamer(dd["output_folder"], verbose=False):
        for stage, column in STAGES.items():
            s = spec[stage]
            start = time.perf_counter()
            # one LLM per stage: DataDreamer takes the system prompt in the LLM's constructor
            template = dd["chat_templates"][stage]
            llm = CountingHFTransformers(dd["model_dir"], chat_prompt_template=template["chat_prompt_template"],
                                         system_prompt=template["system_prompt"], dtype=getattr(torch, spec["dtype"]),
                                         device="cpu")
            llm.stage = stage
            prompts = DataSource(f"{stage} prompts", data={"prompts": [render(s["prompt"], context(r)) for r in rows]})
            args: dict[str, Any] = {"llm": llm, "max_new_tokens": s["max_tokens"], "temperature": 0.0,
                                    "do_sample": False, "batch_size": spec["batch_size"]}
            if s["stop"]:  # generate()'s own stop strings, not DataDreamer's stop= (see the module docstring)
                args.update(stop_strings=s["stop"], tokenizer=llm.tokenizer, post_process=CutAtStop(s["stop"]))
            if "scale" in s:  # the judge: answers restricted to the scale, passed through to generate()
                args["prefix_allowed_tokens_fn"] = ScoreConstraint(llm.tokenizer, *s["scale"])
            step = Prompt(f"{stage}s", inputs={"prompts": prompts.output["prompts"]}, args=args)
            for r, text in zip(rows, step.output["generations"], strict=True):
                r[column] = parse_score(text, *s["scale"]) if "scale" in s else text
            seconds[stage] = time.perf_counter() - start
    return job_record(rows, spec, {stage: COMPUTED.get(stage, 0) for stage in STAGES}, seconds)


def main(argv: list[str] | None = None) -> None:
    job_main(run_job, argv)


if __name__ == "__main__":  # pragma: no cover - run_tool imports main() (classes here must be importable)
    main()
