"""A row whose template reads a null value is not sent: its output is null and its error
column names the null input. Templates that handle missing values are sent as usual.
Requests are counted per engine call in a fresh workspace."""

from __future__ import annotations

import polars as pl

import lazyllm


def frame():
    return lazyllm.from_dicts([{"id": 0, "topic": "a"}, {"id": 1, "topic": None}, {"id": 2, "topic": "c"}],
                              schema={"id": pl.Int64, "topic": pl.String})


def test_null_input_is_not_sent_and_the_error_names_it(ws, counters):
    df = frame().generate("q", lazyllm.TestModel(), prompt="Ask about {{ topic }}").collect(workspace=ws)
    assert counters.CALLS == 2
    assert df["q"][1] is None and "'topic'" in df["q_error"][1] and "null" in df["q_error"][1]
    assert df["q_error"][0] is None and not df["q"].drop_nulls().str.contains("None").any()


def test_null_through_an_alias_is_named_by_its_column(ws, counters):
    df = frame().judge("s", lazyllm.TestModel(rules=(("", "5"),)), question="topic", answer="topic").collect(
        workspace=ws)
    assert counters.CALLS == 2 and df["s"][1] is None and "'topic'" in df["s_error"][1]


def test_llm_filter_drops_a_null_row_without_a_request(ws, counters):
    keep = lazyllm.llm_predicate(lazyllm.TestModel(rules=(("", "yes"),)), "Keep {{ topic }}?")
    assert frame().filter(keep).collect(workspace=ws)["id"].to_list() == [0, 2]
    assert counters.CALLS == 2


def test_templates_that_handle_nulls_are_sent(ws, counters):
    for prompt in ("Ask about {{ topic | default('anything', true) }}", "{% if topic %}{{ topic }}{% else %}x{% endif %}",
                   "{{ 'none' if topic is none else topic }}"):
        counters.reset_counters()
        df = frame().generate("q", lazyllm.TestModel(), prompt=prompt).collect(workspace=ws.path / str(hash(prompt)))
        assert counters.CALLS == 3, prompt
        assert df["q_error"].is_null().all()
