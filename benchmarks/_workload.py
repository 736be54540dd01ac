"""Helpers shared by the job scripts of the main-job comparison (standard library only:
the DataDreamer job imports this module in DataDreamer's own virtual environment)."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_VARIABLE = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_INTEGER = re.compile(r"\d+")

#: Stage name -> the column it writes.
STAGES = {"question": "question", "answer": "answer", "judge": "score"}


def render(template: str, row: dict[str, Any]) -> str:
    """``{{ name }}`` -> ``row["name"]``: the only template syntax the workload uses.

    >>> render("Q: {{ question }}", {"question": "Why?"})
    'Q: Why?'
    """
    return _VARIABLE.sub(lambda m: str(row[m.group(1)]), template)


def context(row: dict[str, Any]) -> dict[str, Any]:
    """The template variables of a row: its columns, and the docstring as ``reference``
    (the judge's name for it, as ``judge(reference="doc")`` maps it in lazyllm)."""
    return {**row, "reference": row["doc"]}


def parse_score(text: str, lo: int = 1, hi: int = 10) -> int | None:
    """The first integer of the judge's answer when it lies in the scale, else None.

    >>> parse_score("8"), parse_score(" 7/10"), parse_score("great"), parse_score("11")
    (8, 7, None, None)
    """
    match = _INTEGER.search(text)
    if match is None:
        return None
    value = int(match.group())
    return value if lo <= value <= hi else None


class ScoreConstraint:
    """``prefix_allowed_tokens_fn`` for ``model.generate``: the answer is one of the integers
    ``lo..hi`` written out, then end of sequence. What lazyllm's ``judge()`` enforces with
    xgrammar, here with transformers' own hook, so every tool's judge answers on the scale.

    The generated part of a row is its longest suffix of tokens that can occur in an
    answer (the digits of the scale, end of sequence): a chat prompt ends with the
    generation prompt, never with a digit. A plain class (not a closure) so that
    DataDreamer can fingerprint it as a step argument.
    """

    def __init__(self, tokenizer: Any, lo: int = 1, hi: int = 10) -> None:
        self.choices = [tuple(tokenizer.encode(str(v), add_special_tokens=False)) for v in range(lo, hi + 1)]
        self.eos = int(tokenizer.eos_token_id)
        self.alphabet = {t for choice in self.choices for t in choice} | {self.eos}

    def __call__(self, batch_id: int, input_ids: Any) -> list[int]:
        ids = input_ids.tolist()
        k = 0
        while k < len(ids) and ids[-1 - k] in self.alphabet:
            k += 1
        generated = tuple(ids[len(ids) - k :])
        if self.eos in generated:  # finished (padding follows)
            return [self.eos]
        n = len(generated)
        allowed = {c[n] for c in self.choices if len(c) > n and c[:n] == generated}
        if generated in self.choices:
            allowed.add(self.eos)
        return sorted(allowed) or [self.eos]


class CutAtStop:
    """The text before the first stop string, stripped (a post-processing function; a
    plain class so that DataDreamer can fingerprint it as a step argument).

    >>> CutAtStop(["\\n"])("How?\\nMore")
    'How?'
    """

    def __init__(self, stop: list[str]) -> None:
        self.stop = list(stop)

    def __call__(self, text: str) -> str:
        for s in self.stop:
            text = text.split(s, 1)[0]
        return text.strip()


def job_record(rows: list[dict[str, Any]], spec: dict[str, Any], stages: dict[str, int],
               seconds: dict[str, float]) -> dict[str, Any]:
    """A job's result: its rows (name and stage columns), the names kept by the threshold,
    rows computed per stage and seconds per stage."""
    kept = [r["name"] for r in rows if r["score"] is not None and r["score"] >= spec["threshold"]]
    return {"rows": [{k: r[k] for k in ("name", *STAGES.values())} for r in rows], "kept": kept,
            "stages": stages, "seconds": seconds}


def job_main(run_job: Callable[[dict[str, Any]], dict[str, Any]], argv: list[str] | None = None) -> None:
    """``job SPEC.json RESULT.json``: run the job on the spec, write its result with the
    workflow's wall time (imports excluded) as ``workflow_seconds``."""
    spec_path, result_path = (argv if argv is not None else sys.argv[1:])[:2]
    spec = json.loads(Path(spec_path).read_text())
    start = time.perf_counter()
    result = run_job(spec)
    result["workflow_seconds"] = time.perf_counter() - start
    Path(result_path).write_text(json.dumps(result))
