"""Frame operations give the same results as polars, and are lazy and immutable."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

import lazyllm
from lazyllm.errors import ColumnNotFoundError, PlanError

rows = st.lists(
    st.fixed_dictionaries(
        {
            "k": st.integers(0, 4),
            "x": st.integers(-50, 50),
            "s": st.sampled_from(["a", "b", "c", "dd"]),
            "tags": st.lists(st.sampled_from(["p", "q"]), max_size=3),
        }
    ),
    min_size=0,
    max_size=25,
)
SCHEMA = {"k": pl.Int64, "x": pl.Int64, "s": pl.String, "tags": pl.List(pl.String)}
fast = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def frame_and_df(data):
    df = pl.DataFrame(data, schema=SCHEMA)
    return lazyllm.from_polars(df), df


OPS = [
    ("select", lambda f: f.select("k", (pl.col("x") * 2).alias("x2")), lambda d: d.select("k", (pl.col("x") * 2).alias("x2"))),
    ("with_columns", lambda f: f.with_columns(y=pl.col("x") + 1), lambda d: d.with_columns(y=pl.col("x") + 1)),
    ("filter", lambda f: f.filter(pl.col("x") > 0, pl.col("s") != "a"), lambda d: d.filter(pl.col("x") > 0, pl.col("s") != "a")),
    ("head", lambda f: f.head(3), lambda d: d.head(3)),
    ("limit", lambda f: f.limit(7), lambda d: d.limit(7)),
    ("sort", lambda f: f.sort("k", "x", descending=[True, False]), lambda d: d.sort("k", "x", descending=[True, False], maintain_order=True)),
    ("unique", lambda f: f.unique("k"), lambda d: d.unique("k", keep="first", maintain_order=True)),
    ("unique_all", lambda f: f.select("k", "s").unique(), lambda d: d.select("k", "s").unique(keep="first", maintain_order=True)),
    ("explode", lambda f: f.explode("tags"), lambda d: d.explode("tags")),
    ("rename", lambda f: f.rename({"x": "value"}), lambda d: d.rename({"x": "value"})),
    ("drop", lambda f: f.drop("tags", "s"), lambda d: d.drop("tags", "s")),
    ("sample", lambda f: f.sample(fraction=0.5, seed=3),
     lambda d: d[sorted(np.random.default_rng(3).choice(d.height, round(d.height * 0.5), replace=False).tolist())]),
    ("chain", lambda f: f.filter(pl.col("k") < 3).with_columns(z=pl.col("x").abs()).sort("z").head(5),
     lambda d: d.filter(pl.col("k") < 3).with_columns(z=pl.col("x").abs()).sort("z", maintain_order=True).head(5)),
]


@pytest.mark.parametrize("name,lazy_op,eager_op", OPS, ids=[o[0] for o in OPS])
@fast
@given(data=rows)
def test_operation_matches_polars(name, lazy_op, eager_op, data, tmp_path):
    frame, df = frame_and_df(data)
    got = lazy_op(frame).collect(workspace=tmp_path, progress=False)
    assert_frame_equal(got, eager_op(df))


@fast
@given(left=rows, right=rows)
def test_join_and_concat_match_polars(left, right, tmp_path):
    fl, dl = frame_and_df(left)
    fr, dr = frame_and_df(right)
    dr = dr.select("k", pl.col("s").alias("s2")).unique("k", maintain_order=True)
    fr = fr.select("k", pl.col("s").alias("s2")).unique("k")
    for how in ("inner", "left"):
        got = fl.join(fr, on="k", how=how).collect(workspace=tmp_path, progress=False)
        assert_frame_equal(got, dl.join(dr, on="k", how=how, maintain_order="left_right"))
    got = fl.concat(fl.head(2)).collect(workspace=tmp_path, progress=False)
    assert_frame_equal(got, pl.concat([dl, dl.head(2)]))
    got = lazyllm.concat([fl, fl]).collect(workspace=tmp_path, progress=False)
    assert_frame_equal(got, pl.concat([dl, dl]))


@fast
@given(data=rows, seed=st.integers(0, 1000))
def test_split_is_a_seeded_partition(data, seed, tmp_path):
    frame, df = frame_and_df(data)
    df = df.with_row_index("i")
    frame = lazyllm.from_polars(df)
    parts = frame.split({"train": 0.8, "validation": 0.2}, seed=seed)
    train = parts["train"].collect(workspace=tmp_path, progress=False)
    val = parts["validation"].collect(workspace=tmp_path, progress=False)
    ids = sorted(train["i"].to_list() + val["i"].to_list())
    assert ids == list(range(df.height))  # disjoint and complete
    assert train["i"].is_sorted() and val["i"].is_sorted()  # original order kept
    assert train.height == round(0.8 * df.height)
    again = frame.split({"train": 0.8, "validation": 0.2}, seed=seed)["train"].collect(workspace=tmp_path, progress=False)
    assert_frame_equal(train, again)


def test_frame_is_immutable_and_lazy(tmp_path):
    frame = lazyllm.from_dicts([{"a": 1}, {"a": 2}])
    filtered = frame.filter(pl.col("a") > 1)
    assert frame is not filtered and frame.plan is not filtered.plan
    assert frame.collect(workspace=tmp_path, progress=False).height == 2
    with pytest.raises(AttributeError):
        frame._node = None  # type: ignore[misc]
    # building the plan ran nothing and created no workspace
    assert not (tmp_path / "lazy-ws").exists()
    filtered.with_columns(b=pl.col("a") * 2).explain(workspace=tmp_path / "lazy-ws")
    assert not (tmp_path / "lazy-ws" / "runs").exists()


def test_bad_columns_fail_when_the_plan_is_built():
    frame = lazyllm.from_dicts([{"a": 1}])
    with pytest.raises(ColumnNotFoundError, match="'nope'.*Existing columns: 'a'"):
        frame.filter(pl.col("nope") > 1)
    with pytest.raises(ColumnNotFoundError):
        frame.select(pl.col("nope"))
    with pytest.raises(ColumnNotFoundError):
        frame.drop("nope")
    with pytest.raises(PlanError, match="fractions must sum to 1"):
        frame.split({"a": 0.5, "b": 0.2})
    with pytest.raises(PlanError, match="exactly one"):
        frame.sample()


def test_sources_read_files(tmp_path):
    df = pl.DataFrame({"id": [1, 2, 3], "text": ["x", "y", "z"]})
    df.write_parquet(tmp_path / "a.parquet")
    df.write_csv(tmp_path / "a.csv")
    df.write_ndjson(tmp_path / "a.jsonl")
    pl.DataFrame({"id": [4], "text": ["w"]}).write_parquet(tmp_path / "b.parquet")
    ws = tmp_path / "ws"
    assert_frame_equal(lazyllm.read_parquet(tmp_path / "a.parquet").collect(workspace=ws), df)
    assert_frame_equal(lazyllm.read_csv(tmp_path / "a.csv").collect(workspace=ws), df)
    assert_frame_equal(lazyllm.read_ndjson(tmp_path / "a.jsonl").collect(workspace=ws), df)
    both = lazyllm.read_parquet(str(tmp_path / "*.parquet")).collect(workspace=ws)
    assert both["id"].to_list() == [1, 2, 3, 4]
    with pytest.raises(PlanError, match="matches no file"):
        lazyllm.read_parquet(str(tmp_path / "*.nothing"))


def test_in_memory_sources(tmp_path):
    import pandas as pd
    import pyarrow as pa

    expected = pl.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    ws = tmp_path / "ws"
    assert_frame_equal(lazyllm.from_pandas(pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})).collect(workspace=ws), expected)
    assert_frame_equal(lazyllm.from_arrow(pa.table({"a": [1, 2], "b": ["x", "y"]})).collect(workspace=ws), expected)
    assert_frame_equal(lazyllm.from_dicts([{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]).collect(workspace=ws), expected)
    # the same content gives the same fingerprint, whatever the source kind
    assert lazyllm.from_pandas(expected.to_pandas()).fingerprint == lazyllm.from_polars(expected).fingerprint


def test_from_hf_dataset_and_local_dataset_folder(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"question": ["a?", "b?", "c?"], "n": [1, 2, 3]})
    ws = tmp_path / "ws"
    got = lazyllm.from_hf(ds.select([2, 0])).collect(workspace=ws)  # indices mapping honoured
    assert got["question"].to_list() == ["c?", "a?"]
    # the load_dataset path (a Hub id on a connected machine), on a local folder here
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    pl.DataFrame({"question": ["q1", "q2"]}).write_parquet(folder / "train.parquet")
    pl.DataFrame({"question": ["q3"]}).write_parquet(folder / "test.parquet")
    with pytest.raises(PlanError, match="splits"):
        lazyllm.from_hf(datasets.load_dataset(str(folder)))
    got = lazyllm.from_hf(str(folder), split="test").collect(workspace=ws)
    assert got["question"].to_list() == ["q3"]
    got = lazyllm.from_hf(datasets.load_dataset(str(folder)), split="train").collect(workspace=ws)
    assert got["question"].to_list() == ["q1", "q2"]


def test_write_sinks(tmp_path):
    frame = lazyllm.from_dicts([{"a": 1}, {"a": 2}]).with_columns(b=pl.col("a") * 10)
    frame.write_parquet(tmp_path / "out" / "r.parquet", workspace=tmp_path / "ws")
    frame.write_ndjson(tmp_path / "out" / "r.jsonl", workspace=tmp_path / "ws")
    assert pl.read_parquet(tmp_path / "out" / "r.parquet")["b"].to_list() == [10, 20]
    assert pl.read_ndjson(tmp_path / "out" / "r.jsonl")["b"].to_list() == [10, 20]


def test_sink_parquet_writes_one_shard_per_partition_and_equals_collect(tmp_path, counters):
    src = tmp_path / "in"
    src.mkdir()
    for f in range(2):
        pl.DataFrame({"id": list(range(f * 5, f * 5 + 5))}).write_parquet(src / f"f{f}.parquet")
    frame = (lazyllm.read_parquet(str(src / "*.parquet"))
             .generate("y", lazyllm.TestModel(), prompt="row {{ id }}")
             .filter(pl.col("id") != 2)
             .with_columns(n=pl.col("y").str.len_chars()))
    shards = frame.sink_parquet(tmp_path / "out", rows_per_shard=3, workspace=tmp_path / "ws", progress=False)
    assert [pl.read_parquet(p).height for p in shards] == [2, 2, 3, 2]  # files of 5 rows: 3 + 2 each
    assert counters.CALLS == 9  # the filter on id ran before the LLM, partition by partition
    whole = frame.collect(workspace=tmp_path / "ws", progress=False)
    assert pl.concat([pl.read_parquet(p) for p in shards]).equals(whole)
    assert counters.CALLS == 9  # collect() was served from the cache the shards filled


def test_sink_parquet_refuses_plans_that_need_every_row(tmp_path):
    frame = lazyllm.from_dicts([{"x": i} for i in range(4)]).with_columns(m=pl.col("x").mean())
    with pytest.raises(lazyllm.errors.PlanError, match="WithColumns needs every row"):
        frame.sink_parquet(tmp_path / "out", workspace=tmp_path / "ws")
    with pytest.raises(lazyllm.errors.PlanError, match="rows_per_shard"):
        frame.sink_parquet(tmp_path / "out", rows_per_shard=0, workspace=tmp_path / "ws")
