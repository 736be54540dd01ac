"""Golden explain() snapshots. Regenerate with LAZYLLM_UPDATE_SNAPSHOTS=1 after an
intended change, and review the diff."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest

import lazyllm
from lazyllm.examples import docs_to_qa

SNAPSHOTS = Path(__file__).parent / "snapshots"
MODEL = lazyllm.TestModel(name="snap")


def docs_job():
    return docs_to_qa.build(6, model=MODEL)


def pushdown_plan():
    src = lazyllm.from_dicts([{"id": i, "topic": f"topic {i}"} for i in range(10)])
    return (
        src.generate("question", MODEL, prompt="Ask about {{ topic }}", max_tokens=32)
        .generate("answer", MODEL, prompt="Answer: {{ question }}", max_tokens=64)
        .generate("unused", MODEL, prompt="Never read: {{ topic }}")
        .filter(pl.col("id") < 6)
        .filter(lazyllm.llm_predicate(MODEL, "Is {{ question }} clear?"))
        .select("id", "question", "answer")
        .head(2)
    )


CASES = {
    "docs_job_preferences": lambda: docs_job().preferences,
    "pushdown_optimized": pushdown_plan,
    "pushdown_logical": pushdown_plan,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_explain_matches_snapshot(name, tmp_path):
    frame = CASES[name]()
    text = frame.explain(workspace=tmp_path, optimized=not name.endswith("_logical"))
    path = SNAPSHOTS / f"{name}.txt"
    if os.environ.get("LAZYLLM_UPDATE_SNAPSHOTS") == "1" or not path.exists():
        path.write_text(text + "\n")
        if os.environ.get("CI"):
            pytest.fail(f"snapshot {path.name} was missing in CI")
    assert text + "\n" == path.read_text()


def test_explain_fingerprints_match_the_plan(tmp_path):
    frame = pushdown_plan()
    text = frame.explain(workspace=tmp_path, optimized=False)
    assert f"#{frame.fingerprint[:10]}" in text.splitlines()[1]
