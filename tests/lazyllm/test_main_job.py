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
    # tie_margin=0: on 6 rows, decide every pair so that DPO has data
    return _BUILD(limit, model=lazyllm.Transformers(batch_size=8), question_tokens=24, answer_tokens=24,
                  sample_tokens=24, threshold=threshold, train_steps=2, dpo_steps=2, heldout_tokens=16,
                  tie_margin=0.0)


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
    # the judge's expected score lies inside the scale, with its distribution
    assert qa["score_error"].is_null().all() and qa.schema["score"] == pl.Float64
    assert qa["score"].is_between(1, 10).all()
    assert all(len(p) == 10 and abs(sum(p) - 1) < 1e-6 for p in qa["score_probs"].to_list())
    assert kept.height == 6  # threshold 1 keeps everything
    # SFT then DPO (LoRA) on the training part, then the held-out questions answered by the base and
    # the tuned model and judged in both orders; the win-rate report ends the job
    heldout = results["heldout"]
    assert heldout.height == 2 and heldout["tuned_answer_error"].is_null().all()
    assert heldout["verdict_error"].is_null().all() and heldout["verdict_margin"].is_between(-1, 1).all()
    assert "Held-out questions, base vs tuned" in printed and "Tuned vs base on 2 held-out questions" in printed
    report = results["win_rate"].row(0, named=True)
    assert 0 <= report["ci_low"] <= report["win_rate"] <= report["ci_high"] <= 1
    assert prefs.columns == ["name", "prompt", "chosen", "rejected", "margin"]
    assert (prefs["chosen"] != prefs["rejected"]).all() and (prefs["margin"] > 0).all()

    def no_load(self):
        raise AssertionError("a cached rerun must not load the model")

    monkeypatch.setattr(tf_engine.TransformersEngine, "load", no_load)
    again = docs_to_qa.main(argv)
    for name in ("qa", "kept", "preferences", "heldout", "win_rate"):
        assert again[name].equals(results[name])  # no retraining, no generation: all cached
    assert "LLM calls to make: 0" in capsys.readouterr().out
