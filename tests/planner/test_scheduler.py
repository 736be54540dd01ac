"""Cross-operator batching and per-row pipelining are observable in engine submissions."""

from __future__ import annotations

import polars as pl
from polars.testing import assert_frame_equal

import lazyllm


def rows(n):
    return lazyllm.from_dicts([{"id": i, "topic": f"topic {i}"} for i in range(n)])


def test_independent_nodes_on_one_model_share_one_stream(ws, counters):
    model = lazyllm.TestModel(batch_size=8)
    frame = (
        rows(6)
        .generate("a1", model, prompt="Answer about {{ topic }}", temperature=0.7, seed=1)
        .generate("a2", model, prompt="Answer about {{ topic }}", temperature=0.7, seed=2)
    )
    df = frame.collect(workspace=ws)
    assert counters.CALLS == 12
    assert counters.SUBMISSIONS == [8, 4]  # one stream of 12 requests, not two of 6
    assert df["a1"].to_list() != df["a2"].to_list()


def test_dependent_nodes_pipeline_per_row(ws, counters):
    model = lazyllm.TestModel(batch_size=4)
    frame = rows(6).generate("q", model, prompt="Ask about {{ topic }}").generate("a", model, prompt="A: {{ q }}")
    df = frame.collect(workspace=ws)
    # sequential would be q:[4, 2] then a:[4, 2]; answers join the stream as their questions return
    assert counters.SUBMISSIONS == [4, 4, 4]
    sequential = frame.collect(workspace=ws.path / "seq", optimize=False)
    assert_frame_equal(df, sequential)


def test_different_models_are_each_loaded_once(ws, counters, monkeypatch):
    from lazyllm.backends import testing

    created = []
    original = testing.DeterministicEngine.__init__

    def counting_init(self, spec, *, workspace=None):
        created.append(spec.name)
        original(self, spec, workspace=workspace)

    monkeypatch.setattr(testing.DeterministicEngine, "__init__", counting_init)
    gen, judge = lazyllm.TestModel(name="gen", batch_size=2), lazyllm.TestModel(name="judge", batch_size=2)
    frame = (
        rows(5)
        .generate("q", gen, prompt="Ask about {{ topic }}")
        .generate("a", gen, prompt="A: {{ q }}")
        .generate("v", judge, prompt="Judge {{ a }}")
        .generate("b", gen, prompt="Again {{ topic }}")
    )
    frame.collect(workspace=ws)
    assert sorted(created) == ["gen", "judge"]
    assert counters.CALLS == 20


def test_shared_requests_across_nodes_are_sent_once(ws, counters):
    model = lazyllm.TestModel()
    frame = rows(4).generate("x", model, prompt="{{ topic }}").generate("y", model, prompt="{{ topic }}")
    df = frame.collect(workspace=ws)
    assert counters.CALLS == 4
    assert df["x"].to_list() == df["y"].to_list()


def test_filter_between_llm_nodes_is_respected(ws, counters):
    model = lazyllm.TestModel(rules=(("topic 1", "keep"), ("topic 3", "keep")))
    frame = rows(5).generate("v", model, prompt="{{ topic }}").filter(pl.col("v") == "keep")
    frame = frame.generate("a", model, prompt="Answer {{ topic }} {{ v }}")
    df = frame.collect(workspace=ws)
    assert df["id"].to_list() == [1, 3]
    assert counters.CALLS == 5 + 2
