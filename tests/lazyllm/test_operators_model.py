"""The LLM operators on the real embedded model: constrained answers only."""

from __future__ import annotations

import polars as pl
import pytest

import lazyllm
from lazyllm.planner import executor

pytestmark = pytest.mark.model

ROWS = [
    {"q": "What is the capital of France?", "good": "Paris is the capital of France.", "bad": "Bananas are yellow."},
    {"q": "What is 2 + 2?", "good": "2 + 2 equals 4.", "bad": "The sky is made of cheese."},
    {"q": "Which language is this library written in?", "good": "Python.", "bad": "I refuse to answer."},
]


@pytest.fixture(scope="module")
def model():
    return lazyllm.Transformers(batch_size=8)


def test_judge_scores_are_integers_within_the_scale(model, model_workspace):
    frame = lazyllm.from_dicts(ROWS).judge("score", model, question="q", answer="good", scale=(1, 5))
    df = frame.collect(workspace=model_workspace, progress=False)
    assert df.schema["score"] == pl.Int64
    assert df["score_error"].is_null().all()
    assert df["score"].is_between(1, 5).all()


def test_judge_with_rationale_gives_json_constrained_output(model, model_workspace):
    frame = lazyllm.from_dicts(ROWS[:2]).judge("score", model, question="q", answer="good", rationale=True,
                                               max_tokens=96)
    df = frame.collect(workspace=model_workspace, progress=False)
    ok = df.filter(pl.col("score_error").is_null())
    assert ok["score"].is_between(1, 10).all()
    assert (ok["score_rationale"].str.len_chars() > 0).all()
    # an answer cut by max_tokens is a recorded error, not an exception
    assert df.filter(pl.col("score_error").is_not_null())["score"].is_null().all()


def test_pairwise_verdicts_are_a_b_or_tie_and_both_orders_are_asked(model, model_workspace):
    frame = lazyllm.from_dicts(ROWS).judge_pairwise("winner", model, a="good", b="bad", question="q")
    result = executor.collect(frame.plan, workspace=model_workspace, progress=False)
    df = result.frames[0]
    assert set(df["winner"].to_list()) <= {"a", "b", "tie"}
    assert df["winner_error"].is_null().all()
    assert all(len(v) == 2 and set(v) <= {"A", "B", "C"} for v in df["winner_verdicts"].to_list())
    [stats] = [s for s in result.stats.values() if s.kind == "PairwiseJudge"]
    assert stats.requests == 2 * len(ROWS)  # the order swap is really sent
    assert stats.unique_requests == 2 * len(ROWS)


def test_llm_filter_and_choices_on_the_real_model(model, model_workspace):
    frame = lazyllm.from_dicts(ROWS).generate("topic", model, prompt="Is this about math or geography? {{ q }}",
                                              choices=["math", "geography", "other"], max_tokens=8)
    df = frame.collect(workspace=model_workspace, progress=False)
    assert set(df["topic"].to_list()) <= {"math", "geography", "other"} and df["topic_error"].is_null().all()
    kept = lazyllm.from_dicts(ROWS).filter(lazyllm.llm_predicate(model, "Is this a question? {{ q }}"))
    out = kept.collect(workspace=model_workspace, progress=False)
    assert out.height <= len(ROWS) and out.columns == ["q", "good", "bad"]


def test_expected_scores_lie_inside_the_scale_and_differ(model, model_workspace):
    frame = lazyllm.from_dicts(ROWS).judge("score", model, question="q", answer="good", method="expected")
    df = frame.collect(workspace=model_workspace, progress=False)
    assert df.schema["score"] == pl.Float64 and df["score_error"].is_null().all()
    assert df["score"].is_between(1, 10).all() and df["score"].n_unique() == len(ROWS)
    for probs in df["score_probs"].to_list():
        assert len(probs) == 10 and sum(probs) == pytest.approx(1.0) and min(probs) >= 0


def test_calibrated_pairwise_margin_is_antisymmetric_in_the_columns(model, model_workspace):
    base = lazyllm.from_dicts(ROWS)
    ab = base.judge_pairwise("w", model, a="good", b="bad", question="q").collect(workspace=model_workspace,
                                                                                  progress=False)
    ba = base.judge_pairwise("w", model, a="bad", b="good", question="q").collect(workspace=model_workspace,
                                                                                  progress=False)
    assert ab["w_error"].is_null().all() and ab["w_margin"].is_between(-1, 1).all()
    # swapping the columns swaps the two orders: the calibrated margin changes sign exactly
    assert ba["w_margin"].to_list() == pytest.approx([-m for m in ab["w_margin"].to_list()], abs=1e-4)
    flip = {"a": "b", "b": "a", "tie": "tie"}
    assert ba["w"].to_list() == [flip[v] for v in ab["w"].to_list()]
