"""The main docs->QA job as a hand-written batched transformers script: no framework.

What a careful engineer writes by hand for this workload: load the model once,
apply the tokenizer's chat template, sort the prompts by length, generate greedily
in left-padded batches (``model.generate(do_sample=False)``), and run the three
passes one after another (question, answer, judge, the judge's answer restricted
to the integers of the scale with ``generate``'s ``prefix_allowed_tokens_fn``); then
parse the score and keep the rows scored at or above the threshold. No cache:
a rerun, or a changed prompt, recomputes everything.

It reads the workload from a JSON spec written by ``benchmarks/run.py`` (docs,
prompt templates, max tokens, model folder, threads) so that every tool of the
comparison gets the same inputs. Templates only use ``{{ column }}``; they are
rendered with a regular expression (:func:`benchmarks._workload.render`), as a
script would with ``str.format``.

Run: ``python -m benchmarks.handwritten_job SPEC.json RESULT.json``. The functions
(:func:`load`, :func:`generate`, :func:`run_job`) are imported by the parity test.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from benchmarks._workload import STAGES, job_main, job_record, ScoreConstraint, context, parse_score, render


def messages(system: str | None, user: str) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": user}
    ]


def load(model_dir: str | Path, threads: int | None = None, dtype: str = "float32") -> tuple[Any, Any]:
    """The model (eval mode) and its tokenizer (left padding, pad = eos when missing)."""
    if threads:
        torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype), local_files_only=True)
    model.eval()
    return model, tokenizer


@torch.inference_mode()
def generate(model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]], max_new_tokens: int,
             batch_size: int = 16, stop: list[str] | None = None, allowed_tokens: Any = None) -> list[str]:
    """Greedy completions of chat conversations, in input order.

    Prompts are sorted by token length (longest first) and run in left-padded
    batches of ``batch_size``; a batch ends when every row has produced the
    end-of-sequence token or a ``stop`` string. Each text is decoded without special
    tokens, cut before the first stop string and stripped. ``allowed_tokens`` is
    passed to ``generate`` as ``prefix_allowed_tokens_fn`` (the judge's score constraint).
    """
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
    eos = model.generation_config.eos_token_id
    out: list[str] = [""] * len(ids)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = tokenizer.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt")
        generated = model.generate(
            **batch, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=eos,
            stop_strings=stop or None, tokenizer=tokenizer if stop else None,
            prefix_allowed_tokens_fn=allowed_tokens,
        )
        width = batch["input_ids"].shape[1]
        for row, tokens in zip(rows, generated[:, width:].tolist()):
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            for s in stop or ():
                text = text.split(s, 1)[0]
            out[row] = text.strip()
    return out


def run_job(spec: dict[str, Any], model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Three greedy passes over ``spec["docs"]``, then the score filter.

    Returns ``rows`` (name, question, answer, score), ``kept`` (names scored >=
    the threshold), ``stages`` (rows computed per stage: every row, there is no
    cache) and ``seconds`` per stage, model load included in ``load``.
    """
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    if model is None:
        model, tokenizer = load(spec["model_dir"], spec.get("threads"), spec.get("dtype", "float32"))
    seconds["load"] = time.perf_counter() - start
    size = spec.get("batch_size", 16)
    rows = [dict(d) for d in spec["docs"]]
    for stage, column in STAGES.items():
        s = spec[stage]
        t0 = time.perf_counter()
        convs = [messages(s["system"], render(s["prompt"], context(r))) for r in rows]
        allowed = ScoreConstraint(tokenizer, *s["scale"]) if "scale" in s else None
        for r, text in zip(rows, generate(model, tokenizer, convs, s["max_tokens"], size, s["stop"], allowed)):
            r[column] = parse_score(text, *s["scale"]) if "scale" in s else text
        seconds[stage] = time.perf_counter() - t0
    return job_record(rows, spec, {stage: len(rows) for stage in STAGES}, seconds)


def main(argv: list[str] | None = None) -> None:
    job_main(run_job, argv)


if __name__ == "__main__":
    main()
