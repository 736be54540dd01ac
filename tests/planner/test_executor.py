"""The executor with the deterministic test engine: laziness, cache reuse, resume, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import lazyllm
from lazyllm.errors import ColumnNotFoundError, TemplateError


def docs(n=6):
    return lazyllm.from_dicts([{"id": i, "topic": f"topic {i}"} for i in range(n)])


def test_nothing_runs_before_collect(ws, counters):
    frame = docs().generate("q", lazyllm.TestModel(), prompt="Ask about {{ topic }}")
    frame.explain(workspace=ws)
    assert counters.CALLS == 0
    df = frame.collect(workspace=ws)
    assert counters.CALLS == 6
    assert df.columns == ["id", "topic", "q", "q_error"]
    assert df["id"].to_list() == list(range(6))  # order kept
    assert df["q"].to_list()[0].endswith("Ask about topic 0")
    assert df["q_error"].is_null().all()


def test_rerun_makes_zero_engine_calls(ws, counters):
    frame = (
        docs()
        .generate("q", lazyllm.TestModel(), prompt="Ask about {{ topic }}")
        .generate("a", lazyllm.TestModel(), prompt="Answer {{ q }}")
    )
    first = frame.collect(workspace=ws)
    assert counters.CALLS == 12
    counters.reset_counters()
    second = frame.collect(workspace=ws)
    assert counters.CALLS == 0
    assert_frame_equal(first, second)
    # an equivalent frame built again from scratch also hits the cache
    again = docs().generate("q", lazyllm.TestModel(), prompt="Ask about {{ topic }}").collect(workspace=ws)
    assert counters.CALLS == 0 and again["q"].to_list() == first["q"].to_list()


def test_changed_prompt_recomputes_only_that_node(ws, counters):
    q = docs().generate("q", lazyllm.TestModel(), prompt="Ask about {{ topic }}")
    q.generate("a", lazyllm.TestModel(), prompt="Answer {{ q }}").collect(workspace=ws)
    counters.reset_counters()
    q.generate("a", lazyllm.TestModel(), prompt="Answer briefly: {{ q }}").collect(workspace=ws)
    assert counters.CALLS == 6


def test_duplicate_prompts_are_sent_once(ws, counters):
    frame = lazyllm.from_dicts([{"t": "same"}] * 5 + [{"t": "other"}])
    df = frame.generate("y", lazyllm.TestModel(), prompt="{{ t }}").collect(workspace=ws)
    assert counters.CALLS == 2
    assert df["y"].n_unique() == 2 and df.height == 6


def test_n_samples_give_a_list_column(ws, counters):
    frame = docs(3).generate("s", lazyllm.TestModel(), prompt="{{ topic }}", n=3, temperature=0.8, seed=7)
    df = frame.collect(workspace=ws)
    assert df.schema["s"] == pl.List(pl.String)
    assert df["s"].list.len().to_list() == [3, 3, 3]
    assert counters.CALLS == 9
    assert len(set(df["s"][0])) == 3  # samples differ (different sample index)
    exploded = frame.explode("s").collect(workspace=ws)
    assert exploded.height == 9


def test_template_errors_come_before_any_engine_call(ws, counters):
    frame = docs()
    with pytest.raises(ColumnNotFoundError, match="'nope'.*Existing columns: 'id', 'topic'"):
        frame.generate("q", lazyllm.TestModel(), prompt="{{ nope }}")
    with pytest.raises(TemplateError, match="does not parse"):
        frame.generate("q", lazyllm.TestModel(), prompt="{{ topic ")
    # a column dropped upstream of a later generate is caught when that generate is added
    first = frame.generate("q", lazyllm.TestModel(), prompt="{{ topic }}").drop("topic")
    with pytest.raises(ColumnNotFoundError, match="topic"):
        first.generate("a", lazyllm.TestModel(), prompt="{{ q }} {{ topic }}")
    assert counters.CALLS == 0


def test_a_failing_row_keeps_a_null_and_an_error(ws, counters):
    frame = docs(4).generate("q", lazyllm.TestModel(fail_on=("topic 2",)), prompt="{{ topic }}")
    df = frame.collect(workspace=ws)
    assert df["q"].null_count() == 1 and df["q"][2] is None
    assert "topic 2" in df["q_error"][2] or df["q_error"][2]
    assert df["q_error"].null_count() == 3
    # errors are not cached: a rerun retries only the failed row
    counters.reset_counters()
    frame.collect(workspace=ws)
    assert counters.CALLS == 1


def test_explain_predicts_cache_hits_and_calls(ws, counters):
    frame = docs(4).generate("q", lazyllm.TestModel(), prompt="{{ topic }}").generate(
        "a", lazyllm.TestModel(), prompt="A: {{ q }}"
    )
    text = frame.explain(workspace=ws)
    assert "GENERATE q ← test:echo" in text
    assert "LLM calls to make: 4 · predicted cache hits: 0/4" in text
    assert "rows wait on upstream LLM output" in text
    frame.collect(workspace=ws)
    text = frame.explain(workspace=ws)
    assert text.count("LLM calls to make: 0 · predicted cache hits: 4/4") == 2
    assert counters.CALLS == 8  # explain never called the engine


def _requests(result) -> int:
    """Requests rendered by the scheduler, counted before the cache is looked up: a node
    that ran twice counts twice, whatever the cache holds."""
    return sum(s.requests for s in result.stats.values())


def test_shared_subplan_runs_once_in_collect_all(ws, counters):
    from lazyllm.planner.executor import collect_all

    q = docs(4).generate("q", lazyllm.TestModel(delay=0.0), prompt="{{ topic }}")
    result = collect_all([q.filter(pl.col("id") < 2).plan, q.plan], workspace=ws, progress=False)
    assert [f.height for f in result.frames] == [2, 4]
    assert _requests(result) == 4  # pushing the filter into the first root would render 2 + 4
    assert counters.CALLS == 4
    assert [s.rows_in for s in result.stats.values()] == [4]


def test_shared_subplan_runs_once_within_one_plan(ws, counters):
    from lazyllm.planner.executor import collect

    q = docs(4).generate("q", lazyllm.TestModel(delay=0.0), prompt="{{ topic }}")
    frame = q.join(q.filter(pl.col("id") < 2).select("id", "q"), on="id", how="semi").concat(q)
    result = collect(frame.plan, workspace=ws, progress=False)
    assert result.frames[0]["id"].to_list() == [0, 1, 0, 1, 2, 3]
    assert _requests(result) == 4 and counters.CALLS == 4
    plain = collect(frame.plan, workspace=ws.path / "plain", progress=False, optimize=False)
    assert_frame_equal(result.frames[0], plain.frames[0])


RESUME_SCRIPT = textwrap.dedent(
    """
    import sys, lazyllm
    ws, log, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    frame = lazyllm.from_dicts([{"i": i} for i in range(20)]).generate(
        "y", lazyllm.TestModel(batch_size=2, delay=delay, log_path=log), prompt="item {{ i }}")
    frame.collect(workspace=ws, progress=False).write_parquet(ws + "/out.parquet")
    """
)


def _logged_requests(path) -> int:
    if not os.path.exists(path):
        return 0
    with open(path) as fh:
        return sum(json.loads(line)["n"] for line in fh if line.strip())


def test_resume_after_kill_recomputes_nothing_already_done(tmp_path):
    ws, log = str(tmp_path / "ws"), str(tmp_path / "calls1.jsonl")
    proc = subprocess.Popen([sys.executable, "-c", RESUME_SCRIPT, ws, log, "0.4"])
    deadline = time.time() + 120
    while _logged_requests(log) < 6 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = _logged_requests(log)
    assert 6 <= done_before < 20, "the process should have been killed mid-run"
    committed = len(lazyllm.Workspace(ws).cache)
    assert committed >= done_before - 2  # at most the batch in flight is lost

    log2 = str(tmp_path / "calls2.jsonl")
    subprocess.run([sys.executable, "-c", RESUME_SCRIPT, ws, log2, "0"], check=True)
    assert _logged_requests(log2) == 20 - committed  # nothing completed is recomputed
    resumed = pl.read_parquet(ws + "/out.parquet")

    fresh_ws, log3 = str(tmp_path / "fresh"), str(tmp_path / "calls3.jsonl")
    subprocess.run([sys.executable, "-c", RESUME_SCRIPT, fresh_ws, log3, "0"], check=True)
    assert _logged_requests(log3) == 20
    assert_frame_equal(resumed, pl.read_parquet(fresh_ws + "/out.parquet"))
