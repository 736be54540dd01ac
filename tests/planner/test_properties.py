"""Property tests over random plans with the deterministic engine:
optimizing never changes results and never increases LLM calls."""

from __future__ import annotations

import tempfile

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

import lazyllm
from lazyllm.backends import testing

MODEL = lazyllm.TestModel(
    name="prop",
    rules=(("judge: echo[0|greedy]: a 1", "8"), ("judge:", "3"), ("keep? t2", "yes"), ("keep? t5", "yes"),
           ("keep?", "no")),
    batch_size=3,
)


def _step(frame: lazyllm.Frame, op: tuple, i: int) -> lazyllm.Frame:
    kind = op[0]
    cols = frame.columns
    text_cols = [c for c in cols if frame.schema[c] == pl.String and not c.endswith("_error")]
    if kind == "generate" and text_cols:
        col = text_cols[op[1] % len(text_cols)]
        return frame.generate(f"g{i}", MODEL, prompt=f"a {{{{ {col} }}}}")
    if kind == "judge" and text_cols:
        col = text_cols[op[1] % len(text_cols)]
        return frame.judge(f"s{i}", MODEL, prompt=f"judge: {{{{ {col} }}}}", system="grade")
    if kind == "filter_input":
        return frame.filter(pl.col("id") % (op[1] % 3 + 2) != 0)
    if kind == "filter_llm":
        llm = [c for c in cols if c.startswith(("g", "s")) and not c.endswith("_error")]
        if llm:
            c = llm[op[1] % len(llm)]
            return frame.filter(pl.col(c).cast(pl.String).str.contains("1|8"))
        return frame
    if kind == "llm_filter":
        return frame.filter(lazyllm.llm_predicate(MODEL, "keep? {{ topic }}"))
    if kind == "head":
        return frame.head(op[1] % 7 + 1)
    if kind == "sort":
        return frame.sort("id", descending=bool(op[1] % 2))
    if kind == "select_all":  # selectors read every column: nothing below may be pruned
        return frame.select(pl.all()) if op[1] % 2 else frame.select(pl.exclude("topic"), pl.col("topic"))
    if kind == "select":
        keep = [c for c in cols if c in ("id", "topic") or (op[1] % 2 == 0 and not c.endswith("_error"))]
        return frame.select(keep)
    return frame


ops = st.lists(
    st.tuples(st.sampled_from(["generate", "judge", "filter_input", "filter_llm", "llm_filter", "head", "sort",
                               "select", "select_all"]), st.integers(0, 100)),
    min_size=1,
    max_size=6,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=ops, rows=st.integers(0, 9))
def test_optimizing_never_changes_results_nor_adds_llm_calls(steps, rows):
    frame = lazyllm.from_dicts([{"id": i, "topic": f"t{i}"} for i in range(rows)], schema={"id": pl.Int64,
                                                                                            "topic": pl.String})
    for i, op in enumerate(steps):
        frame = _step(frame, op, i)
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        testing.reset_counters()
        optimized = frame.collect(workspace=a, progress=False)
        calls_opt = testing.CALLS
        testing.reset_counters()
        plain = frame.collect(workspace=b, progress=False, optimize=False)
        calls_plain = testing.CALLS
    assert_frame_equal(optimized, plain)
    assert calls_opt <= calls_plain
