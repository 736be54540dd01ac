"""The main job end to end on the real embedded model (a few rows, short outputs)."""

from __future__ import annotations

import polars as pl
import pytest

import lazyllm
from lazyllm.backends import transformers as tf_engine
from lazyllm.examples import docs_to_qa

pytestmark = pytest.mark.model

_BUILD = docs_to_qa.build


def _small(limit, threshold=docs_to_qa.THRESHOLD):
    return _BUILD(limit, model=lazyllm.Transformers(batch_size=8), question_tokens=24, answer_tokens=24,
                  sample_tokens=16, threshold=threshold, train_steps=2)


def test_docs_are_real_stdlib_text():
    df = docs_to_qa.load_docs()
    assert df.height == 64 and df["name"].is_sorted() and df["name"].n_unique() == 64
    assert (df["doc"].str.len_chars() > 10).all()
    assert "JSON" in df.filter(pl.col("name") == "json.dumps")["doc"][0]


def test_main_job_runs_then_reruns_from_cache(model_workspace, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    argv = ["--limit", "6", "--out", str(out), "--workspace", str(model_workspace.path), "--quiet", "--threshold", "1"]
    monkeypatch.setattr(docs_to_qa, "build", _small)
    results = docs_to_qa.main(argv)
    printed = capsys.readouterr().out
    assert "GENERATE question ← transformers:smollm2-135m-instruct" in printed
    assert "JUDGE_PAIRWISE winner" in printed
    qa, kept, prefs = results["qa"], results["kept"], results["preferences"]
    assert qa.height == 6 and pl.read_parquet(out / "qa.parquet").equals(qa)
    assert "DuckDB summary of the kept data" in printed and results["summary"]["kept"].sum() == kept.height
    card = (out / "kept" / "README.md").read_text()
    assert "synthetic" in card and "smollm2-135m-instruct" in card.lower()
    import datasets

    loaded = datasets.load_dataset("parquet", data_dir=str(out / "preferences"))["train"]
    assert loaded.num_rows == prefs.height
    assert qa["question_error"].is_null().all() and qa["answer_error"].is_null().all()
    assert all(len(a) > 10 for a in qa["answer"].to_list())
    # the judge can only answer a score on the scale (constrained decoding)
    assert qa["score_error"].is_null().all()
    assert qa["score"].is_between(1, 10).all()
    assert kept.height == 6  # threshold 1 keeps everything
    # LoRA SFT on 5 kept pairs, then the held-out question answered with the trained adapter
    heldout = results["heldout"]
    assert heldout.height == 1 and heldout["tuned_answer_error"].is_null().all()
    assert len(heldout["tuned_answer"][0]) > 0
    assert "Held-out questions, base vs LoRA-tuned answers" in printed
    assert prefs.columns == ["name", "prompt", "chosen", "rejected"]
    assert (prefs["chosen"] != prefs["rejected"]).all()

    def no_load(self):
        raise AssertionError("a cached rerun must not load the model")

    monkeypatch.setattr(tf_engine.TransformersEngine, "load", no_load)
    again = docs_to_qa.main(argv)
    for name in ("qa", "kept", "preferences", "heldout"):
        assert again[name].equals(results[name])  # no retraining, no generation: all cached
    assert "LLM calls to make: 0" in capsys.readouterr().out
