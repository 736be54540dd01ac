"""Optimizer rules: for each, a plan where it fires and one where it must not,
checked on the plan and on the results (optimized == unoptimized)."""

from __future__ import annotations

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import lazyllm
from lazyllm.errors import OptimizerError
from lazyllm.planner.nodes import Filter, Generate, Head, PlanNode, walk
from lazyllm.planner.optimizer import optimize


def kinds(node: PlanNode) -> list[str]:
    out = [node.kind]
    while node.children:
        node = node.children[0]
        out.append(node.kind)
    return out


def base(n=8):
    src = lazyllm.from_dicts([{"id": i, "topic": f"t{i}"} for i in range(n)])
    return src.generate("q", lazyllm.TestModel(), prompt="Ask about {{ topic }}")


def same_results(frame, ws, counters) -> tuple[int, int]:
    """Collect optimized and unoptimized in separate workspaces; return engine calls of each."""
    counters.reset_counters()
    fast = frame.collect(workspace=ws.path / "opt")
    calls_opt = counters.CALLS
    counters.reset_counters()
    slow = frame.collect(workspace=ws.path / "noopt", optimize=False)
    calls_plain = counters.CALLS
    assert_frame_equal(fast, slow)
    return calls_opt, calls_plain


# -- predicate pushdown ----------------------------------------------------------------


def test_predicate_pushdown_fires_for_filters_on_input_columns(ws, counters):
    frame = base().filter(pl.col("id") < 3)
    result = optimize(frame.plan)
    assert kinds(result.plan) == ["Generate", "Filter", "DataFrameSource"]
    assert [name for name, _ in result.fired] == ["predicate_pushdown"]
    assert "moved below generate 'q'" in frame.explain(workspace=ws)
    calls_opt, calls_plain = same_results(frame, ws, counters)
    assert (calls_opt, calls_plain) == (3, 8)


def test_predicate_pushdown_blocked_for_filters_on_llm_columns(ws, counters):
    frame = base().filter(pl.col("q").str.contains("t1"))
    result = optimize(frame.plan)
    assert kinds(result.plan) == ["Filter", "Generate", "DataFrameSource"]
    assert result.fired == []
    calls_opt, calls_plain = same_results(frame, ws, counters)
    assert calls_opt == calls_plain == 8


def test_predicate_pushdown_through_sort_and_two_llm_nodes(ws, counters):
    frame = base().generate("a", lazyllm.TestModel(), prompt="A: {{ q }}").sort("id", descending=True)
    frame = frame.filter(pl.col("id") % 2 == 0)
    plan = optimize(frame.plan).plan
    assert kinds(plan) == ["Generate", "Generate", "Sort", "Filter", "DataFrameSource"]  # the sort moved too
    calls_opt, calls_plain = same_results(frame, ws, counters)
    assert (calls_opt, calls_plain) == (8, 16)


def test_predicate_pushdown_blocked_by_with_columns(ws, counters):
    # with_columns may hold window expressions (mean, shift): filtering first would change them
    frame = base().with_columns(m=pl.col("id").mean()).filter(pl.col("id") < 3)
    plan = optimize(frame.plan).plan
    # the mean moves below the generate (which keeps every row), the filter stays above the mean
    assert kinds(plan) == ["Select", "Generate", "Filter", "WithColumns", "DataFrameSource"]
    same_results(frame, ws, counters)


def test_predicate_pushdown_blocked_for_aggregate_predicates_above_an_llm_filter(ws, counters):
    # id > mean(id) depends on which rows are present: below the LLM filter it would see all 8
    keep = lazyllm.llm_predicate(lazyllm.TestModel(rules=(("t1", "no"), ("t3", "no"), ("Keep", "yes"))),
                                 "Keep {{ topic }}?")
    frame = base().filter(keep).filter(pl.col("id") > pl.col("id").mean())
    plan = optimize(frame.plan).plan
    assert kinds(plan)[:3] == ["Filter", "Generate", "LLMFilter"]  # the llm filter reads topic only
    same_results(frame, ws, counters)
    assert frame.collect(workspace=ws)["id"].to_list() == [5, 6, 7]  # mean of 0,2,4,5,6,7 is 4


def test_is_elementwise_is_conservative():
    from lazyllm.planner.nodes import is_elementwise

    assert is_elementwise([pl.col("a") > 1, pl.col("s").str.contains("x"), pl.col("a").is_in([1, 2])])
    for expr in (pl.col("a") > pl.col("a").mean(), pl.col("a").cum_sum(), pl.col("a").shift(1),
                 pl.col("a").rank().over("b"), pl.len(), pl.col("a").sort(), pl.col("a").head(2)):
        assert not is_elementwise([expr]), expr


# -- limit pushdown --------------------------------------------------------------------


def test_limit_pushdown_fires_above_row_local_llm_nodes(ws, counters):
    frame = base().generate("a", lazyllm.TestModel(), prompt="A: {{ q }}").head(2)
    plan = optimize(frame.plan).plan
    assert kinds(plan) == ["Generate", "Generate", "Head", "DataFrameSource"]
    calls_opt, calls_plain = same_results(frame, ws, counters)
    assert (calls_opt, calls_plain) == (4, 16)


def test_limit_pushdown_blocked_by_filter_on_llm_output(ws, counters):
    frame = base().filter(pl.col("q").str.contains("t")).head(2)
    plan = optimize(frame.plan).plan
    assert kinds(plan) == ["Head", "Filter", "Generate", "DataFrameSource"]
    same_results(frame, ws, counters)


def test_limit_pushdown_blocked_by_sort(ws, counters):
    frame = base().sort("q", descending=True).head(2)
    assert kinds(optimize(frame.plan).plan)[:3] == ["Head", "Sort", "Generate"]
    same_results(frame, ws, counters)


def test_stacked_heads_merge():
    frame = base().head(5).head(3)
    plan = optimize(frame.plan).plan
    heads = [n for n in walk(plan) if isinstance(n, Head)]
    assert [h.n for h in heads] == [3]


# -- projection pruning ----------------------------------------------------------------


def test_projection_pruning_drops_unread_llm_columns(ws, counters):
    frame = base().generate("a", lazyllm.TestModel(), prompt="A: {{ q }}").select("id", "q")
    plan = optimize(frame.plan).plan
    assert [n.column for n in walk(plan) if isinstance(n, Generate)] == ["q"]
    calls_opt, calls_plain = same_results(frame, ws, counters)
    assert (calls_opt, calls_plain) == (8, 16)


def test_projection_pruning_keeps_columns_read_downstream(ws, counters):
    frame = base().generate("a", lazyllm.TestModel(), prompt="A: {{ q }}").select("id", "a")
    plan = optimize(frame.plan).plan
    assert [n.column for n in walk(plan) if isinstance(n, Generate)] == ["q", "a"]
    frame2 = base().generate("a", lazyllm.TestModel(), prompt="A: {{ q }}").drop("a")
    # the error column is still in the result: the node is kept
    assert len([n for n in walk(optimize(frame2.plan).plan) if isinstance(n, Generate)]) == 2
    same_results(frame, ws, counters)


# -- driver ----------------------------------------------------------------------------


def test_driver_names_the_rule_that_breaks_the_schema():
    def bad_rule(node, ctx):
        if isinstance(node, Filter):
            return node.child
        return None

    bad_rule.__module__ = "lazyllm.planner.rules.bad_rule"
    frame = base().filter(pl.col("id") < 3).select("id")
    # removing a filter keeps the schema: allowed by the driver (rules must be correct);
    # removing a generate whose column is selected changes it: refused
    def drops_generate(node, ctx):
        return node.child if isinstance(node, Generate) else None

    drops_generate.__module__ = "lazyllm.planner.rules.drops_generate"
    with pytest.raises(OptimizerError, match="drops_generate"):
        optimize(base().select("q").plan, rules=(drops_generate,))
    assert optimize(frame.plan, rules=(bad_rule,)).fired == []  # silent rules record nothing


def test_driver_reaches_a_fixed_point():
    frame = base().generate("a", lazyllm.TestModel(), prompt="{{ q }}").generate("b", lazyllm.TestModel(), prompt="{{ a }}")
    frame = frame.filter(pl.col("id") < 4).head(2)
    result = optimize(frame.plan)
    again = optimize(result.plan)
    assert again.fired == [] and again.plan.fingerprint == result.plan.fingerprint


# -- waves: generate until n rows pass ---------------------------------------------------


def test_head_above_an_llm_filter_runs_in_waves(ws, counters):
    model = lazyllm.TestModel(name="every-third", rules=(("t0", "yes"), ("t3", "yes"), ("t6", "yes"), ("t9", "yes"),
                                                         ("t", "no")), batch_size=4)
    src = lazyllm.from_dicts([{"id": i, "topic": f"t{i}"} for i in range(30)])
    frame = src.filter(lazyllm.llm_predicate(model, "keep {{ topic }}?")).generate(
        "q", lazyllm.TestModel(), prompt="Ask about {{ topic }}").head(2)
    result = optimize(frame.plan)
    # the head moves below the generate, then runs the LLM filter in waves
    assert kinds(result.plan)[:3] == ["Generate", "Head", "LLMFilter"] and result.plan.child.waves
    assert any("waves until 2 rows pass" in note for _, note in result.fired)
    counters.reset_counters()
    df = frame.collect(workspace=ws.path / "waves")
    waves_calls = counters.CALLS
    counters.reset_counters()
    plain = frame.collect(workspace=ws.path / "plain", optimize=False)
    assert df.equals(plain) and df["id"].to_list() == [0, 3]
    assert counters.CALLS == 30 + 4  # every row judged, every kept row generated
    assert waves_calls == 10 + 2  # waves of 2 then 8 rows judged; 2 rows generated


def test_waves_blocked_without_llm_work_below(ws):
    frame = lazyllm.from_dicts([{"id": i} for i in range(10)]).filter(pl.col("id") > 3).head(2)
    assert not optimize(frame.plan).plan.waves
    frame = base().head(2)  # an LLM node but no filter: plain limit pushdown, no waves
    assert [n.waves for n in walk(optimize(frame.plan).plan) if isinstance(n, Head)] == [False]


def test_waves_stop_at_the_end_of_the_input(ws, counters):
    model = lazyllm.TestModel(name="rare", rules=(("t1", "yes"), ("t", "no")))
    src = lazyllm.from_dicts([{"id": i, "topic": f"t{i}"} for i in range(5)])
    df = src.filter(lazyllm.llm_predicate(model, "{{ topic }}")).head(3).collect(workspace=ws)
    assert df["id"].to_list() == [1]
    assert counters.CALLS == 5


def test_projection_pruning_blocked_by_selectors(ws, counters):
    frame = base().generate("a", lazyllm.TestModel(), prompt="A: {{ q }}").select(pl.all()).select("id", "a")
    plan = optimize(frame.plan).plan
    assert [n.column for n in walk(plan) if isinstance(n, Generate)] == ["q", "a"]
    frame = base().select(pl.exclude("id"))
    assert [n.column for n in walk(optimize(frame.plan).plan) if isinstance(n, Generate)] == ["q"]
    same_results(frame, ws, counters)


def test_waves_blocked_by_a_predicate_that_needs_every_row(ws, counters):
    # regression (issue 15): a median over a wave is not the median over every row, so the
    # rows returned differed from optimize=False; the head must not run the LLM in waves
    src = lazyllm.from_dicts([{"id": i, "topic": "t" * (i % 7 + 1) + str(i)} for i in range(40)])
    frame = src.generate("q", lazyllm.TestModel(), prompt="Ask about {{ topic }}")
    frame = frame.filter(pl.col("q").str.len_chars() >= pl.col("q").str.len_chars().median()).head(3)
    plan = optimize(frame.plan).plan
    assert not any(isinstance(n, Head) and n.waves for n in walk(plan))
    assert kinds(plan) == ["Head", "Filter", "Generate", "DataFrameSource"]
    calls_opt, calls_plain = same_results(frame, ws, counters)
    assert calls_opt == calls_plain == 40
    assert frame.collect(workspace=ws)["id"].to_list() == [4, 5, 6]  # the median of all 40 rows, not of 3


def test_waves_fire_through_row_by_row_nodes_only(ws, counters):
    keep = lazyllm.llm_predicate(lazyllm.TestModel(rules=(("t1", "yes"), ("Keep", "no"))), "Keep {{ topic }}?")
    frame = base(8).filter(keep).with_columns(m=pl.col("id").mean()).head(1)
    plan = optimize(frame.plan).plan
    assert not any(isinstance(n, Head) and n.waves for n in walk(plan))  # the mean needs every kept row
    same_results(frame, ws, counters)
    frame = base(8).filter(keep).with_columns(m=pl.col("id") * 2).head(1)
    plan = optimize(frame.plan).plan
    assert any(isinstance(n, Head) and n.waves for n in walk(plan))
    same_results(frame, ws, counters)
