"""judge, judge_pairwise, LLM filter and structured output, with the deterministic test engine."""

from __future__ import annotations

import polars as pl
import pytest
from pydantic import BaseModel

import lazyllm
from lazyllm.errors import ColumnNotFoundError, PlanError
from lazyllm.planner.nodes import Filter, LLMFilter, walk
from lazyllm.planner.optimizer import optimize


def qa(n=4):
    return lazyllm.from_dicts(
        [{"id": i, "question": f"question {i}", "good": f"good answer {i}", "bad": f"bad answer {i}"} for i in range(n)]
    )


# -- pairwise ------------------------------------------------------------------------


def test_position_biased_judge_turns_into_ties(ws, counters):
    always_first = lazyllm.TestModel(name="biased", rules=(("[User Question]", "A"),))
    df = qa().judge_pairwise("winner", always_first, a="good", b="bad", question="question").collect(workspace=ws)
    assert df["winner"].to_list() == ["tie"] * 4
    assert df["winner_verdicts"].to_list() == [["A", "A"]] * 4
    assert counters.CALLS == 8  # both orders were really asked
    df = qa().judge_pairwise("winner", always_first, a="good", b="bad", question="question", swap=False).collect(
        workspace=ws
    )
    assert df["winner"].to_list() == ["a"] * 4


def test_consistent_judge_wins_in_both_orders(ws, counters):
    fair = lazyllm.TestModel(
        name="fair",
        rules=(("[The Start of Assistant A's Answer]\ngood", "A"), ("[The Start of Assistant B's Answer]\ngood", "B")),
    )
    frame = qa().judge_pairwise("winner", fair, a="good", b="bad", question="question")
    assert frame.collect(workspace=ws)["winner"].to_list() == ["a"] * 4
    flipped = qa().judge_pairwise("winner", fair, a="bad", b="good", question="question")
    assert flipped.collect(workspace=ws)["winner"].to_list() == ["b"] * 4


def test_pairwise_invalid_verdict_is_an_error_not_an_exception(ws, counters):
    chatty = lazyllm.TestModel(name="chatty")  # echoes: never a verdict letter
    df = qa(2).judge_pairwise("winner", chatty, a="good", b="bad", question="question").collect(workspace=ws)
    assert df["winner"].null_count() == 2
    assert all("is not one of" in e for e in df["winner_error"].to_list())


# -- single-answer grading --------------------------------------------------------------


def test_judge_scores_are_integers_in_the_scale(ws, counters):
    grader = lazyllm.TestModel(name="grader", rules=(("good answer", "9"), ("bad answer", "2")))
    frame = qa().judge("score", grader, question="question", answer="good")
    df = frame.collect(workspace=ws)
    assert df.schema["score"] == pl.Int64 and df["score"].to_list() == [9] * 4
    assert df["score_error"].is_null().all()
    # reference-guided grading reads the reference column through the default prompt
    ref = qa().judge("score", grader, question="question", answer="bad", reference="good").collect(workspace=ws)
    assert ref["score"].to_list() == [9] * 4  # the reference text contains "good answer"
    assert "JUDGE score ← test:grader" in frame.explain(workspace=ws)
    ref_node = qa().judge("score", grader, question="question", answer="bad", reference="good").plan
    assert "[The Start of Reference Answer]" in ref_node.prompt and ("reference", "good") in ref_node.aliases


def test_judge_out_of_scale_or_text_answers_are_null_with_an_error(ws):
    grader = lazyllm.TestModel(name="odd", rules=(("answer 0", "11"), ("answer 1", "seven")))
    df = qa(3).judge("score", grader, question="question", answer="good", scale=(1, 10)).collect(workspace=ws)
    assert df["score"].to_list()[:2] == [None, None]
    assert "not a score in [1, 10]" in df["score_error"][0]


def test_judge_with_rationale_gives_two_columns(ws):
    grader = lazyllm.TestModel(name="why", rules=(("good", '{"rationale": "correct", "score": 8}'),))
    df = qa(2).judge("score", grader, question="question", answer="good", rationale=True).collect(workspace=ws)
    assert df["score"].to_list() == [8, 8]
    assert df["score_rationale"].to_list() == ["correct", "correct"]


def test_judge_plan_errors_come_first(counters):
    with pytest.raises(PlanError, match="question='<column>' and answer='<column>'"):
        qa().judge("score", lazyllm.TestModel())
    with pytest.raises(ColumnNotFoundError, match="'nope'"):
        qa().judge("score", lazyllm.TestModel(), question="question", answer="nope")
    with pytest.raises(ColumnNotFoundError, match="'missing'"):
        qa().judge_pairwise("w", lazyllm.TestModel(), a="good", b="missing", question="question")
    with pytest.raises(PlanError, match="scale"):
        qa().judge("s", lazyllm.TestModel(), question="question", answer="good", scale=(5, 1))
    assert counters.CALLS == 0


# -- LLM filter ----------------------------------------------------------------------


def test_llm_filter_keeps_exactly_the_rows_the_engine_says_yes_to(ws, counters):
    model = lazyllm.TestModel(name="yesno", rules=(("question 1", "yes"), ("question 3", "yes"), ("question", "no")))
    frame = qa().filter(lazyllm.llm_predicate(model, "Is this answerable? {{ question }}"))
    df = frame.collect(workspace=ws)
    assert df["id"].to_list() == [1, 3]
    assert df.columns == ["id", "question", "good", "bad"]  # the verdict column is internal
    assert counters.CALLS == 4


def test_llm_filter_drops_rows_with_invalid_answers(ws):
    model = lazyllm.TestModel(name="unsure", rules=(("question 0", "yes"), ("question 1", "maybe")))
    df = qa(3).filter(lazyllm.llm_predicate(model, "{{ question }}")).collect(workspace=ws)
    assert df["id"].to_list() == [0]


def test_cheap_and_llm_predicates_in_one_chain(ws, counters):
    model = lazyllm.TestModel(name="yes", rules=(("question", "yes"),))
    frame = qa(6).filter(lazyllm.llm_predicate(model, "{{ question }}"), pl.col("id") >= 4)
    plan = optimize(frame.plan).plan
    assert isinstance(plan, LLMFilter) and isinstance(plan.child, Filter)  # the polars filter runs first
    df = frame.collect(workspace=ws)
    assert df["id"].to_list() == [4, 5] and counters.CALLS == 2
    text = frame.explain(workspace=ws)
    assert "LLM_FILTER yes/no" in text and "moved below llm filter" in text


def test_generation_after_an_llm_filter_only_runs_on_kept_rows(ws, counters):
    model = lazyllm.TestModel(name="y", rules=(("keep? question 2", "yes"), ("keep?", "no")))
    frame = qa(4).filter(lazyllm.llm_predicate(model, "keep? {{ question }}")).generate(
        "a", lazyllm.TestModel(), prompt="answer {{ question }}"
    )
    df = frame.collect(workspace=ws)
    assert df["id"].to_list() == [2] and df["a"].to_list() == ["echo[0|greedy]: answer question 2"]
    assert counters.CALLS == 4 + 1


# -- structured output ---------------------------------------------------------------


class Review(BaseModel):
    sentiment: str
    stars: int


def test_json_schema_gives_a_struct_column_and_parse_failures_are_null(ws):
    model = lazyllm.TestModel(
        name="json",
        rules=(("question 0", '{"sentiment": "positive", "stars": 5}'), ("question 1", '{"sentiment": "meh"}'),
               ("question 2", "not json")),
    )
    df = qa(4).generate("review", model, prompt="{{ question }}", json_schema=Review).collect(workspace=ws)
    assert df.schema["review"] == pl.Struct({"sentiment": pl.String, "stars": pl.Int64})
    assert df["review"][0] == {"sentiment": "positive", "stars": 5}
    assert df["review"][1] is None and "does not match the JSON schema" in df["review_error"][1]
    assert df["review"][2] is None and "not valid JSON" in df["review_error"][2]
    assert df.unnest("review")["stars"].to_list()[0] == 5


def test_choices_restrict_the_label(ws):
    model = lazyllm.TestModel(name="labels", rules=(("question 0", "positive"), ("question 1", "angry")))
    df = qa(2).generate("label", model, prompt="{{ question }}", choices=["positive", "negative"]).collect(workspace=ws)
    assert df["label"].to_list() == ["positive", None]
    assert "not one of ['positive', 'negative']" in df["label_error"][1]


def test_constraint_is_part_of_the_fingerprint():
    base = qa().generate("x", lazyllm.TestModel(), prompt="{{ question }}")
    labels = qa().generate("x", lazyllm.TestModel(), prompt="{{ question }}", choices=["a", "b"])
    schema = qa().generate("x", lazyllm.TestModel(), prompt="{{ question }}", json_schema={"type": "object"})
    assert len({base.fingerprint, labels.fingerprint, schema.fingerprint}) == 3
    assert qa().generate("x", lazyllm.TestModel(), prompt="{{ question }}", json_schema=Review).fingerprint == qa(
    ).generate("x", lazyllm.TestModel(), prompt="{{ question }}", json_schema=Review.model_json_schema()).fingerprint


def test_llm_filter_is_never_pruned_and_heads_wait_for_it():
    model = lazyllm.TestModel()
    frame = qa().filter(lazyllm.llm_predicate(model, "{{ question }}")).select("id").head(1)
    plan = optimize(frame.plan).plan
    assert any(isinstance(n, LLMFilter) for n in walk(plan))
    assert plan.kind == "Head" or plan.child.kind == "Head"
