"""The main job end to end on the real embedded model (a few rows, short outputs)."""

from __future__ import annotations

import polars as pl
import pytest

import lazyllm
from lazyllm.backends import transformers as tf_engine
from lazyllm.examples import docs_to_qa

pytestmark = pytest.mark.model


def test_docs_are_real_stdlib_text():
    df = docs_to_qa.load_docs()
    assert df.height == 64 and df["name"].is_sorted() and df["name"].n_unique() == 64
    assert (df["doc"].str.len_chars() > 10).all()
    assert "JSON" in df.filter(pl.col("name") == "json.dumps")["doc"][0]


def test_main_job_runs_then_reruns_from_cache(model_workspace, tmp_path, monkeypatch, capsys):
    out = tmp_path / "qa.parquet"
    argv = ["--limit", "3", "--out", str(out), "--workspace", str(model_workspace.path), "--quiet"]
    monkeypatch.setattr(docs_to_qa, "build", lambda limit: _small(limit))
    df = docs_to_qa.main(argv)
    printed = capsys.readouterr().out
    assert "GENERATE question ← transformers:smollm2-135m-instruct" in printed
    assert "LLM calls to make: 3" in printed
    assert df.height == 3 and pl.read_parquet(out).equals(df)
    assert df["question_error"].is_null().all() and df["answer_error"].is_null().all()
    assert all(len(a) > 10 for a in df["answer"].to_list())

    def no_load(self):
        raise AssertionError("a cached rerun must not load the model")

    monkeypatch.setattr(tf_engine.TransformersEngine, "load", no_load)
    again = docs_to_qa.main(argv)
    assert again.equals(df)
    assert "predicted cache hits: 3/3" in capsys.readouterr().out


_BUILD = docs_to_qa.build


def _small(limit):
    return _BUILD(limit, model=lazyllm.Transformers(batch_size=4), question_tokens=24, answer_tokens=24)
