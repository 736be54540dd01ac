"""explain() on large inputs runs the dry run of a chain on a uniform sample of rows, says so
and gives an interval; small inputs and chains that feed other LLM nodes are run on every row."""

from __future__ import annotations

import polars as pl
import pytest

import lazyllm
from lazyllm.planner import executor


@pytest.fixture
def small_sample(monkeypatch):
    monkeypatch.setattr(executor, "EXPLAIN_SAMPLE_ABOVE", 300)
    monkeypatch.setenv("LAZYLLM_EXPLAIN_SAMPLE", "100")


def _frame(n=1000):
    df = pl.DataFrame({"x": [f"item {i}" for i in range(n)], "i": list(range(n))})
    return lazyllm.from_polars(df).generate("y", lazyllm.TestModel(name="s"), prompt="Say {{ x }}", max_tokens=8)


def test_a_large_input_is_estimated_from_a_sample_with_an_interval(ws, small_sample):
    frame = _frame()
    frame.filter(pl.col("i") % 2 == 0).collect(workspace=ws, progress=False)  # half the requests cached
    text = frame.explain(workspace=ws)
    assert "estimated from a uniform sample of 100 of 1,000 input rows" in text
    stats = next(iter(executor.dry_run([frame.plan], ws).values()))
    assert (stats.sample_rows, stats.rows_total, stats.rows_in, stats.requests) == (100, 1000, 1000, 1000)
    lo, hi = stats.calls_interval
    assert lo <= 500 <= hi and 0 < lo < stats.calls < hi < 1000  # the true figure: 500 calls
    assert stats.calls + stats.cache_hits == 1000


def test_a_small_input_is_run_on_every_row(ws, small_sample):
    stats = next(iter(executor.dry_run([_frame(300).plan], ws).values()))
    assert (stats.sample_rows, stats.calls, stats.calls_interval) == (0, 300, None)
    assert "sample" not in _frame(300).explain(workspace=ws)


def test_sampling_can_be_turned_off(ws, small_sample, monkeypatch):
    monkeypatch.setenv("LAZYLLM_EXPLAIN_SAMPLE", "0")
    stats = next(iter(executor.dry_run([_frame().plan], ws).values()))
    assert (stats.sample_rows, stats.calls) == (0, 1000)


def test_a_chain_feeding_another_llm_node_runs_on_every_row(ws, small_sample):
    lower = _frame()
    upper = lower.with_columns(pl.col("y").str.len_chars().alias("k")).generate(
        "z", lazyllm.TestModel(name="t"), prompt="Again {{ y }} {{ k }}", max_tokens=8)
    stats = executor.dry_run([upper.plan], ws)
    by_column = {s.column: s for s in stats.values()}
    assert by_column["y"].sample_rows == 0 and by_column["y"].calls == 1000  # not sampled: z reads y
    assert by_column["z"].sample_rows == 100 and by_column["z"].rows_in == 1000  # the top chain is sampled
