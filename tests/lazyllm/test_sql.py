"""DuckDB SQL over frames: equal to polars, lazy, chainable into LLM operators."""

from __future__ import annotations

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import lazyllm
from lazyllm.errors import PlanError

ANSWERS = pl.DataFrame({"id": [1, 2, 3, 4], "module": ["json", "re", "json", "os"], "score": [9, 4, 7, 8]})
DOCS = pl.DataFrame({"id": [1, 2, 3, 5], "doc": ["dumps", "sub", "loads", "walk"]})


def test_sql_join_and_aggregate_equal_polars(ws):
    answers, docs = lazyllm.from_polars(ANSWERS), lazyllm.from_polars(DOCS)
    joined = lazyllm.sql("SELECT a.id, a.score, d.doc FROM answers a JOIN docs d USING (id) ORDER BY a.id",
                         answers=answers, docs=docs).collect(workspace=ws)
    expected = ANSWERS.join(DOCS, on="id").select("id", "score", "doc").sort("id")
    assert_frame_equal(joined, expected, check_dtypes=False)
    by_module = answers.sql("SELECT module, avg(score) AS mean, count(*) AS n FROM self GROUP BY module "
                            "ORDER BY module").collect(workspace=ws)
    expected = ANSWERS.group_by("module").agg(pl.col("score").mean().alias("mean"), pl.len().alias("n")).sort("module")
    assert_frame_equal(by_module, expected, check_dtypes=False)


def test_sql_node_inside_an_llm_chain(ws, counters):
    frame = (
        lazyllm.from_polars(ANSWERS)
        .sql("SELECT id, module || '.x' AS name FROM self WHERE score >= 7 ORDER BY id")
        .generate("q", lazyllm.TestModel(), prompt="Ask about {{ name }}")
        .sql("SELECT id, upper(q) AS q FROM self ORDER BY id")
    )
    assert frame.columns == ["id", "q"]  # schema known before running, from DuckDB on empty input
    df = frame.collect(workspace=ws)
    assert df["id"].to_list() == [1, 3, 4]
    assert df["q"].to_list()[0] == "ECHO[0|GREEDY]: ASK ABOUT JSON.X"
    assert counters.CALLS == 2  # SQL filtered first; rows 1 and 3 share one prompt (sent once)
    assert "SQL (duckdb) over self" in frame.explain(workspace=ws)


def test_bad_query_fails_when_the_frame_is_built(counters):
    frame = lazyllm.from_polars(ANSWERS)
    with pytest.raises(PlanError, match="DuckDB rejects the query.*nope"):
        frame.sql("SELECT nope FROM self")
    with pytest.raises(PlanError, match="at least one frame"):
        lazyllm.sql("SELECT 1")
    assert counters.CALLS == 0


def test_saved_parquet_is_queryable_by_duckdb(ws, tmp_path):
    frame = lazyllm.from_polars(ANSWERS).generate("q", lazyllm.TestModel(), prompt="{{ module }}")
    frame.save_dataset(tmp_path / "ds", workspace=ws)
    con = duckdb.connect()
    got = con.sql(f"SELECT count(*) AS n, max(score) AS top FROM '{tmp_path}/ds/data/*.parquet'").pl()
    assert got.rows() == [(4, 9)]
