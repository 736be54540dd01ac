"""The columnar path (``planner/columnar.py``) gives what the per-row path gives.

Each test runs the same steps twice, in two fresh workspaces: once with the columnar
path off (``LAZYLLM_COLUMNAR=0``: every row goes through the scheduler's per-row loop)
and once with it on, and compares the frames of every collect (cold ones too), the run logs' node statistics
(rows, requests, distinct requests, cache hits, calls, failures, tokens and their
histograms), ``explain()`` and the engine calls. Each also checks which nodes the
columnar path served, so a test fails if the path silently stops being taken.
"""

from __future__ import annotations

import json

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import lazyllm
from lazyllm.core.layout import read_run_logs
from lazyllm.planner import columnar

_VOLATILE = {"seconds", "fingerprint"}


def _nodes(ws) -> list[list[dict]]:
    """Per run log (oldest first): its node statistics without wall times."""
    return [[{k: v for k, v in node.items() if k not in _VOLATILE} for node in record["nodes"]]
            for _, record in read_run_logs(ws)]


def _run(steps, ws, counters, monkeypatch, on: bool):
    """Collect each frame of ``steps`` in turn on ``ws``; what each returned (the cold
    collects too), the run logs, explain() of the last, engine calls and batches, and the
    nodes served in columns."""
    served: list[str] = []
    original = columnar._serve_node

    def spy(run, i, messages):
        served.append(run.states[i].node.column)
        return original(run, i, messages)

    counters.reset_counters()
    dfs: list[pl.DataFrame] = []
    with monkeypatch.context() as patch:
        patch.setenv("LAZYLLM_COLUMNAR", "1" if on else "0")
        patch.setattr(columnar, "_serve_node", spy)
        for frame in steps:
            if isinstance(frame, lazyllm.Frame):
                dfs.append(frame.collect(workspace=ws, progress=False))
            else:  # a step that prepares the workspace
                frame(ws)
        explained = steps[-1].explain(workspace=ws)
    return dfs, _nodes(ws), explained, counters.CALLS, list(counters.SUBMISSIONS), served


def _same(steps, tmp_path, counters, monkeypatch) -> tuple[pl.DataFrame, list[str]]:
    """Run ``steps`` per row and in columns; assert identical results; return the last frame and
    the nodes served in columns."""
    rows = _run(steps, tmp_path / "rows", counters, monkeypatch, on=False)
    cols = _run(steps, tmp_path / "cols", counters, monkeypatch, on=True)
    assert rows[5] == []  # the switch turns the columnar path off
    assert len(rows[0]) == len(cols[0])
    for per_row, in_columns in zip(rows[0], cols[0]):  # every collect, cold ones too
        assert_frame_equal(per_row, in_columns)
    assert json.dumps(rows[1], sort_keys=True) == json.dumps(cols[1], sort_keys=True)
    assert rows[2] == cols[2]  # explain()
    assert rows[3:5] == cols[3:5]  # engine calls and batches
    return cols[0][-1], cols[5]


def topics(n: int, nulls: tuple[int, ...] = ()) -> lazyllm.Frame:
    return lazyllm.from_dicts([{"id": i, "topic": None if i in nulls else f"topic {i}"} for i in range(n)],
                              schema={"id": pl.Int64, "topic": pl.String})


def test_partial_hits_and_null_inputs_match_the_per_row_path(tmp_path, counters, monkeypatch):
    model = lazyllm.TestModel(batch_size=4, fail_on=("topic 7",), rules=(("topic 5", " spaced answer\n"),))
    full = topics(12, nulls=(3, 9)).generate("q", model, prompt="Ask about {{ topic }}")
    warm_half = topics(6, nulls=(3,)).generate("q", model, prompt="Ask about {{ topic }}")
    df, served = _same([warm_half, full, full], tmp_path, counters, monkeypatch)
    assert served == ["q", "q", "q"]
    assert df["q"][3] is None and "'topic'" in df["q_error"][3] and df["q"][9] is None
    assert df["q"][7] is None and df["q_error"][7] is not None  # an engine error, retried each run
    assert df["q"].null_count() == 3


def test_n_samples_with_some_samples_cached(tmp_path, counters, monkeypatch):
    model = lazyllm.TestModel(batch_size=8)
    two = topics(5).generate("q", model, prompt="Ask about {{ topic }}", n=2, temperature=0.8, seed=3)
    three = topics(5, nulls=(1,)).generate("q", model, prompt="Ask about {{ topic }}", n=3, temperature=0.8, seed=3)
    df, served = _same([two, three, three], tmp_path, counters, monkeypatch)
    assert served == ["q", "q", "q"]
    assert df.schema["q"] == pl.List(pl.String) and len(df["q"][0]) == 3 and df["q"][1] is None


def test_judges_scores_and_probabilities(tmp_path, counters, monkeypatch):
    model = lazyllm.TestModel(
        batch_size=4,
        rules=(("topic 1", "11"), ("topic 2", "abc"), ("topic 4", " 7"), ("Rate", "6")),
        distributions=(("topic 3", (("2", 0.5), ("4", 0.5))), ("Grade", (("3", 0.25), ("5", 0.75)))),
    )
    base = topics(6, nulls=(5,))
    frame = (base.judge("s", model, prompt="Rate {{ topic }}", scale=(1, 10))
             .judge("e", model, prompt="Grade {{ topic }}", scale=(1, 5), method="expected"))
    df, served = _same([base.head(3).judge("s", model, prompt="Rate {{ topic }}", scale=(1, 10)), frame, frame],
                       tmp_path, counters, monkeypatch)
    assert served[-2:] == ["s", "e"]
    assert df["s"].to_list()[:5] == [6, None, None, 2, 7] and "not a score" in df["s_error"][1]
    assert df["e"][3] == pytest.approx(3.0) and df["e"][0] == pytest.approx(4.5)
    assert df["e_probs"][0].to_list() == pytest.approx([0, 0, 0.25, 0, 0.75])


def test_a_chain_of_nodes_with_constraints_a_filter_and_a_dependent_node(tmp_path, counters, monkeypatch):
    model = lazyllm.TestModel(batch_size=4, rules=(("Label topic 2", "maybe"), ("Label", "yes"),
                                                   ("Keep", "yes"), ("JSON", '{"k": 1}')))
    keep = lazyllm.llm_predicate(model, "Keep {{ q }}?")
    chain = (topics(8, nulls=(6,))
             .generate("q", model, prompt="Ask about {{ topic }}")
             .generate("a", model, prompt="Answer {{ q }}")  # depends on q: columnar once q is served
             .generate("label", model, prompt="Label {{ topic }}", choices=["yes", "no"])
             .generate("obj", model, prompt="JSON {{ topic }}", json_schema={"type": "object",
                                                                              "properties": {"k": {"type": "integer"}}})
             .judge("s", model, prompt="Rate {{ a }}", scale=(1, 10), rationale=True))
    above = chain.filter(keep).generate("after", model, prompt="After {{ a }}")  # above an LLM filter: per row
    warm = topics(4).generate("q", model, prompt="Ask about {{ topic }}")
    df, served = _same([warm, above, above, chain], tmp_path, counters, monkeypatch)
    assert {"q", "a", "label", "obj", "s"} <= set(served) and "after" not in served
    assert df["label"][2] is None and "maybe" in df["label_error"][2]
    assert df["a"][6] is None and "'q'" in df["a_error"][6]  # a null that came from a lower node's failure


def test_reasoning_traces_and_appended_conversations(tmp_path, counters, monkeypatch):
    trace = "<think>It is a topic. Say so.</think> A topic."
    model = lazyllm.TestModel(batch_size=4, rules=(("topic 1", trace), ("topic 2", "</think>closing only")))
    frame = (topics(5, nulls=(4,))
             .generate("a", model, prompt="Ask about {{ topic }}")  # reasoning dropped: traces split off
             .generate("b", model, prompt="Tell about {{ topic }}", reasoning="keep")
             .generate("c", model, prompt="Chat about {{ topic }}", append_to="conv"))
    df, served = _same([topics(2).generate("a", model, prompt="Ask about {{ topic }}"), frame, frame],
                       tmp_path, counters, monkeypatch)
    assert {"a", "b", "c"} <= set(served)
    assert df["a"][1] == "A topic." and df["b_reasoning"][1] == "It is a topic. Say so."
    assert df["conv"][0][-1]["role"] == "assistant" and df["conv"][4] is None


def test_an_inline_trace_cached_before_engines_split_them(tmp_path, counters, monkeypatch):
    from lazyllm.core.hashing import model_fingerprint
    from lazyllm.core.protocols import Message, Request, Response, SamplingParams
    from lazyllm.planner.cache import PromptCache, request_key

    model = lazyllm.TestModel(batch_size=4)

    def seed(ws):  # an answer stored with its <think> trace inline, as older engines did
        key = request_key(model_fingerprint(model), Request(messages=(Message("user", "Ask about topic 1"),),
                                                            params=SamplingParams(max_tokens=256)))
        PromptCache(ws / "cache").put_many([(key, Response(text="<think>hmm</think> Old answer."))])

    frame = topics(3).generate("a", model, prompt="Ask about {{ topic }}")
    df, served = _same([seed, frame, frame], tmp_path, counters, monkeypatch)
    assert served == ["a", "a"] and df["a"][1] == "Old answer."


def test_cold_misses_with_duplicates_in_the_column_and_across_nodes(tmp_path, counters, monkeypatch):
    # every row a miss: duplicates within the column are sent once, a request two nodes share is
    # sent once, an answer with a trace or an engine error takes combine, the rest the plain rule
    model = lazyllm.TestModel(batch_size=3, fail_on=("topic 4",), rules=(("topic 2", "<think>hm</think> two"),))
    data = lazyllm.from_dicts([{"id": i, "topic": None if i == 7 else f"topic {i % 5}"} for i in range(12)],
                              schema={"id": pl.Int64, "topic": pl.String})
    frame = (data.generate("a", model, prompt="Ask about {{ topic }}")
             .generate("b", model, prompt="Ask about {{ topic }}")  # the same requests as "a"
             .judge("s", model, prompt="Rate {{ topic }}", scale=(1, 10)))
    df, served = _same([frame, frame], tmp_path, counters, monkeypatch)
    assert served == ["a", "b", "s", "a", "b", "s"]
    assert df["a"].to_list() == df["b"].to_list() and df["a"][0] == "echo[0|greedy]: Ask about topic 0"
    assert df["a"][2] == "two" and df["a"][4] is None and "fails on" in df["a_error"][4]
    assert df["a"][7] is None and "'topic'" in df["a_error"][7]


def test_a_cold_column_sends_each_distinct_request_once(tmp_path, counters, monkeypatch):
    model = lazyllm.TestModel(batch_size=4)
    frame = lazyllm.from_dicts([{"t": f"t{i % 3}"} for i in range(10)]).generate("y", model, prompt="Say {{ t }}")
    queued: list[int] = []
    from lazyllm.planner import scheduler

    original = scheduler._ChainRun.queue_rows

    def spy(self, i, rows, request):
        queued.append(len(rows))
        return original(self, i, rows, request)

    monkeypatch.setattr(scheduler._ChainRun, "queue_rows", spy)
    df, served = _same([frame], tmp_path, counters, monkeypatch)
    assert served == ["y"] and queued == [10]  # the whole column queued at once
    assert counters.CALLS == 3 and df["y"].to_list()[:4] == [f"echo[0|greedy]: Say t{i % 3}" for i in range(4)]
