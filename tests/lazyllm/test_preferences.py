"""Best-of-n pairs, the KTO format and the win-rate report (no LLM: scripted scores and preferences)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import lazyllm
from lazyllm.errors import ColumnNotFoundError, PlanError
from lazyllm.preferences import best_of_n_pairs, kto_rows, win_rate


def test_best_of_n_picks_the_scripted_best_and_worst_with_a_minimum_margin():
    df = pl.DataFrame({
        "q": ["a", "b", "c", "d"],
        "samples": [["s0", "s1", "s2", "s3"], ["t0", "t1"], ["u0", None, "u2"], ["v0", "v1"]],
        "scores": [[3.0, 8.5, 1.0, 8.5], [5.0, 5.4], [2.0, 9.0, 6.0], [None, 7.0]],
    })
    pairs = best_of_n_pairs(df, prompt="q", samples="samples", scores="scores", min_margin=1.0)
    # a: best 8.5 (first of the tie: s1), worst 1.0; b: below the margin; c: the null sample is skipped;
    # d: one valid sample only
    assert pairs.select("prompt", "chosen", "rejected", "margin").rows() == [("a", "s1", "s2", 7.5), ("c", "u2", "u0", 4.0)]
    loose = best_of_n_pairs(df, prompt="q", samples="samples", scores="scores", min_margin=0.0)
    assert loose["prompt"].to_list() == ["a", "b", "c"]
    with pytest.raises(ColumnNotFoundError):
        best_of_n_pairs(df, prompt="q", samples="nope", scores="scores")
    with pytest.raises(PlanError):
        best_of_n_pairs(df, prompt="q", samples="samples", scores="scores", min_margin=-1)


def test_kto_rows_are_two_unpaired_rows_per_pair():
    pairs = pl.DataFrame({"prompt": ["x", "y"], "chosen": ["g1", "g2"], "rejected": ["b1", "b2"]})
    assert kto_rows(pairs).rows() == [("x", "g1", True), ("x", "b1", False), ("y", "g2", True), ("y", "b2", False)]


def test_best_of_n_recipe_with_expected_scores_end_to_end(ws):
    """generate(n=3) -> explode -> judge(method="expected") -> gather -> best_of_n_pairs, on the test engine."""
    gen = lazyllm.TestModel(name="gen")
    judge = lazyllm.TestModel(name="judge", distributions=(
        ("echo[0|", (("2", 1.0),)), ("echo[1|", (("9", 0.5), ("10", 0.5))), ("echo[2|", (("5", 1.0),)),
    ))
    frame = (
        lazyllm.from_dicts([{"q": "first"}, {"q": "second"}])
        .generate("samples", gen, prompt="{{ q }}", n=3, temperature=0.8)
        .with_columns(sample_index=pl.int_ranges(pl.col("samples").list.len()))
        .explode("samples", "sample_index")
        .judge("score", judge, question="q", answer="samples", method="expected")
    )
    scored = frame.collect(workspace=ws, progress=False)
    gathered = scored.group_by("q", maintain_order=True).agg(pl.col("samples"), pl.col("score"))
    pairs = best_of_n_pairs(gathered, prompt="q", samples="samples", scores="score", min_margin=2.0)
    assert pairs.height == 2
    assert all(c.startswith("echo[1|") and r.startswith("echo[0|") for c, r in zip(pairs["chosen"], pairs["rejected"]))
    assert pairs["margin"].to_list() == pytest.approx([7.5, 7.5])


def test_win_rate_interval_covers_the_scripted_truth():
    rng = np.random.default_rng(1)
    truth = 0.7
    prefs = (rng.random(300) < truth).astype(float)
    report = win_rate(pl.DataFrame({"p": prefs}), preference="p", seed=0)
    assert report.ci[0] <= truth <= report.ci[1]
    assert report.ci[1] - report.ci[0] < 0.15 and report.n == 300
    assert report.lc_win_rate == pytest.approx(report.win_rate, abs=1e-6)  # no lengths: no length term


def test_length_controlled_win_rate_removes_a_length_preference():
    """A judge that only likes longer answers: the candidate is longer most of the time, so it
    "wins" the raw comparison, but at equal length it is a coin flip."""
    rng = np.random.default_rng(2)
    n = 400
    diff = rng.normal(40, 60, n)  # candidate minus baseline length, mostly positive
    p = 1 / (1 + np.exp(-2.0 * np.tanh(diff / diff.std())))
    prefs = (rng.random(n) < p).astype(float)
    df = pl.DataFrame({"p": prefs, "la": 200 + diff, "lb": np.full(n, 200.0)})
    report = win_rate(df, preference="p", candidate_length="la", baseline_length="lb", resamples=500)
    assert report.win_rate > 0.6
    assert report.lc_ci[0] <= 0.5 <= report.lc_ci[1]
    assert "length-controlled" in str(report)


def test_win_rate_rejects_bad_input():
    with pytest.raises(PlanError, match="in \\[0, 1\\]"):
        win_rate(pl.DataFrame({"m": [-0.5, 0.2]}), preference="m")
    with pytest.raises(PlanError, match="no row"):
        win_rate(pl.DataFrame({"m": [None]}, schema={"m": pl.Float64}), preference="m")
    with pytest.raises(ColumnNotFoundError):
        win_rate(pl.DataFrame({"m": [0.5]}), preference="x")
