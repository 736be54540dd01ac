"""Reasoning traces apart from answers, with the deterministic engine: the answer in the column,
the trace in ``<column>_reasoning`` (``reasoning="keep"``), both cached; judges and filters read
the answer; stats count trace tokens apart; the default adds no column and keeps fingerprints."""

from __future__ import annotations

import polars as pl
import pytest

import lazyllm
from lazyllm.core.errors import PlanError
from lazyllm.core.protocols import Response
from lazyllm.planner import executor

TRACE = "<think>France is a country. Its capital is Paris.</think> Paris"
MODEL = lazyllm.TestModel(rules=(("France", TRACE),))


def frame():
    return lazyllm.from_dicts([{"q": "Capital of France?"}, {"q": "Capital of Spain?"}])


def test_the_answer_goes_to_the_column_and_the_trace_to_its_companion(ws, counters):
    df = frame().generate("a", MODEL, prompt="{{ q }}", reasoning="keep").collect(workspace=ws)
    assert df.columns == ["q", "a", "a_reasoning", "a_error"]
    assert df["a"].to_list() == ["Paris", "echo[0|greedy]: Capital of Spain?"]
    assert df["a_reasoning"].to_list() == ["France is a country. Its capital is Paris.", None]
    assert df["a_error"].to_list() == [None, None]


def test_drop_is_the_default_and_keeps_columns_and_fingerprints(ws, counters):
    plain = frame().generate("a", MODEL, prompt="{{ q }}")
    dropped = frame().generate("a", MODEL, prompt="{{ q }}", reasoning="drop")
    kept = frame().generate("a", MODEL, prompt="{{ q }}", reasoning="keep")
    assert plain.fingerprint == dropped.fingerprint != kept.fingerprint
    assert "reasoning" not in plain.plan.fingerprint_params()
    df = plain.collect(workspace=ws)
    assert df.columns == ["q", "a", "a_error"] and df["a"][0] == "Paris"


def test_both_parts_are_cached_so_keep_after_drop_sends_nothing(ws, counters):
    frame().generate("a", MODEL, prompt="{{ q }}").collect(workspace=ws)
    assert counters.CALLS == 2
    df = frame().generate("a", MODEL, prompt="{{ q }}", reasoning="keep").collect(workspace=ws)
    assert counters.CALLS == 2  # served from the cache, trace included
    assert df["a_reasoning"][0] == "France is a country. Its capital is Paris."


def test_a_cached_record_without_reasoning_still_decodes():
    old = {"text": "Paris", "input_tokens": 3, "output_tokens": 1, "finish_reason": "stop"}
    r = Response.from_record(old)
    assert (r.reasoning, r.reasoning_tokens) == (None, 0)
    assert Response(text="Paris").to_record() == {"text": "Paris", "input_tokens": 0, "output_tokens": 0,
                                                  "finish_reason": "stop"}
    full = Response(text="Paris", output_tokens=9, reasoning="hmm", reasoning_tokens=8)
    assert Response.from_record(full.to_record()) == full


def test_stats_count_trace_and_answer_tokens_apart(ws, counters):
    result = executor.collect(frame().generate("a", MODEL, prompt="{{ q }}").plan, workspace=ws, progress=False)
    (stats,) = result.stats.values()
    # "<think>France is a country. Its capital is Paris.</think> Paris": 9 words, 8 of them the trace
    # (TestModel counts words); the echo answer of row 2 has no trace
    assert stats.reasoning_tokens == 8
    assert stats.output_tokens == 9 + len("echo[0|greedy]: Capital of Spain?".split())
    assert stats.answer_tokens == 1 + 4  # "Paris" and the echo


def test_judges_and_filters_read_the_answer_not_the_trace(ws, counters):
    judge = lazyllm.TestModel(name="judge", rules=(("capital is", "1"), ("", "9")))  # 1 if it sees the trace
    keep = lazyllm.llm_predicate(lazyllm.TestModel(name="f", rules=(("Its capital", "no"), ("", "yes"))),
                                 "Keep {{ a }}?")
    df = (frame().generate("a", MODEL, prompt="{{ q }}", reasoning="keep")
          .judge("s", judge, question="q", answer="a").filter(keep).collect(workspace=ws))
    assert df["s"].to_list() == [9, 9] and df.height == 2


def test_samples_keep_one_trace_each(ws, counters):
    df = frame().head(1).generate("a", MODEL, prompt="{{ q }}", n=2, temperature=0.7,
                                  reasoning="keep").collect(workspace=ws)
    assert df.schema["a_reasoning"] == pl.List(pl.String)
    assert df["a"][0].to_list() == ["Paris", "Paris"] and len(df["a_reasoning"][0]) == 2


def test_a_trace_cut_by_max_tokens_is_an_error_not_an_answer(ws, counters):
    df = frame().head(1).generate("a", MODEL, prompt="{{ q }}", max_tokens=3, reasoning="keep").collect(workspace=ws)
    assert df["a"][0] is None and "inside the reasoning trace" in df["a_error"][0]
    assert df["a_reasoning"][0] == "France is a"


def test_an_unknown_option_is_refused_when_the_plan_is_built():
    with pytest.raises(PlanError, match="keep"):
        frame().generate("a", MODEL, prompt="{{ q }}", reasoning="yes")


def test_a_constrained_answer_is_never_taken_for_a_trace(ws, counters):
    model = lazyllm.TestModel(rules=(("France", '{"city": "Paris</think>"}'),))
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    df = frame().head(1).generate("a", model, prompt="{{ q }}", json_schema=schema, reasoning="keep").collect(
        workspace=ws)
    assert df["a"][0] == {"city": "Paris</think>"} and df["a_reasoning"][0] is None
