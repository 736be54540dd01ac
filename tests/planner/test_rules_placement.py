"""Issue 15's plans, counted per engine request in fresh workspaces (the cache cannot
hide anything), and the fires / blocked pairs of the placement rules: conjunction
splitting, predicates through with_columns, select, rename, drop, sort, concat, join,
unique, explode and LLM nodes, derivation pushdown, sort pushdown (top-k), projection
pruning at the root."""

from __future__ import annotations

import itertools

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import lazyllm
from lazyllm.planner.nodes import Filter, Generate, PlanNode, walk
from lazyllm.planner.optimizer import optimize

ROWS = 200


def kinds(node: PlanNode) -> list[str]:
    out = [node.kind]
    while node.children:
        node = node.children[0]
        out.append(node.kind)
    return out


def rows(n=ROWS):
    return lazyllm.from_dicts([{"id": i, "topic": f"topic {i}", "len": (i * 37) % 100, "grp": i % 10}
                               for i in range(n)])


def gen(frame):
    return frame.generate("q", lazyllm.TestModel(), prompt="Ask about {{ topic }}")


_RUNS = itertools.count()


def counted(frame, ws, counters, *, ordered=True) -> tuple[int, int]:
    """Engine requests optimized and unoptimized (fresh workspaces); results must agree."""
    run = next(_RUNS)
    counters.reset_counters()
    fast = frame.collect(workspace=ws.path / f"opt{run}")
    opt = counters.CALLS
    counters.reset_counters()
    slow = frame.collect(workspace=ws.path / f"plain{run}", optimize=False)
    plain = counters.CALLS
    if ordered:
        assert_frame_equal(fast, slow)
    else:
        assert_frame_equal(fast.sort(fast.columns), slow.sort(slow.columns))
    return opt, plain


Q_LEN = pl.col("q").str.len_chars()

ISSUE_TABLE = [
    ("stacked filters", lambda f: gen(f).filter(Q_LEN > 0).filter(pl.col("grp") == 0), 20),
    ("one conjunction", lambda f: gen(f).filter((Q_LEN > 0) & (pl.col("grp") == 0)), 20),
    ("derived column", lambda f: gen(f).with_columns(big=pl.col("len") >= 90).filter(pl.col("big")), 20),
    ("sort by input, head", lambda f: gen(f).sort("len").head(5), 5),
    ("LLM column dropped at the root", lambda f: gen(f).drop("q", "q_error"), 0),
    ("median then head", lambda f: gen(f).filter(Q_LEN >= Q_LEN.median()).head(3), ROWS),
]


@pytest.mark.parametrize("name,build,minimum", ISSUE_TABLE, ids=[t[0] for t in ISSUE_TABLE])
def test_issue_table_plans_make_the_minimal_requests(name, build, minimum, ws, counters):
    opt, plain = counted(build(rows()), ws, counters)
    assert plain == ROWS
    assert opt == minimum


# -- conjunctions ------------------------------------------------------------------------


def test_conjuncts_split_and_move_on_their_own():
    frame = gen(rows(8)).filter((Q_LEN > 3) & (pl.col("grp") < 5) & (pl.col("id") > 1))
    result = optimize(frame.plan)
    assert kinds(result.plan) == ["Filter", "Generate", "Filter", "DataFrameSource"]
    assert result.plan.predicate.meta.root_names() == ["q"]
    assert sorted(result.plan.child.child.predicate.meta.root_names()) == ["grp", "id"]
    assert any("kept above" in note for _, note in result.fired)


def test_conjunction_not_split_when_a_part_reads_other_rows():
    # (grp < 5) & (id >= id.median()): the median is over the rows the filter sees, all of them
    frame = gen(rows(8)).filter((pl.col("grp") < 5) & (pl.col("id") >= pl.col("id").median()))
    assert kinds(optimize(frame.plan).plan) == ["Filter", "Generate", "DataFrameSource"]


def test_stacked_input_filters_are_not_merged_when_nothing_moves():
    frame = rows(8).filter(pl.col("grp") < 5).filter(pl.col("id") > 1)
    assert optimize(frame.plan).fired == []


# -- predicates through other nodes --------------------------------------------------------


def test_predicate_through_rename_is_rewritten(ws, counters):
    frame = gen(rows(20)).rename({"grp": "group"}).filter(pl.col("group") == 1)
    plan = optimize(frame.plan).plan
    assert kinds(plan) == ["Rename", "Generate", "Filter", "DataFrameSource"]
    assert plan.child.child.predicate.meta.root_names() == ["grp"]
    assert counted(frame, ws, counters) == (2, 20)


def test_predicate_on_a_renamed_llm_column_stays(ws, counters):
    frame = gen(rows(20)).rename({"q": "question"}).filter(pl.col("question").str.contains("1"))
    assert kinds(optimize(frame.plan).plan)[:3] == ["Rename", "Filter", "Generate"]  # renamed back to q
    assert counted(frame, ws, counters) == (20, 20)


def test_predicate_through_select_and_drop(ws, counters):
    frame = gen(rows(20)).select("id", "grp", "q").drop("q").filter(pl.col("grp") == 3)
    assert counted(frame, ws, counters) == (0, 20)  # the drop prunes the generate as well
    frame = gen(rows(20)).select("id", "grp", "q").filter(pl.col("grp") == 3)
    assert kinds(optimize(frame.plan).plan) == ["Select", "Generate", "Filter", "DataFrameSource"]
    assert counted(frame, ws, counters) == (2, 20)


def test_predicate_into_every_concat_branch(ws, counters):
    a, b = gen(rows(10)), gen(lazyllm.from_dicts([{"id": 100 + i, "topic": f"x{i}", "len": i, "grp": i % 2}
                                                  for i in range(10)]))
    frame = a.concat(b).filter(pl.col("grp") == 1)
    plan = optimize(frame.plan).plan
    assert plan.kind == "Concat" and all(kinds(c)[:2] == ["Generate", "Filter"] for c in plan.children)
    assert counted(frame, ws, counters) == (6, 20)


def test_predicate_not_into_a_relaxed_concat():
    a, b = rows(4), rows(4).with_columns(pl.col("len").cast(pl.Float64))
    frame = gen(a).concat(gen(b), how="vertical_relaxed").filter(pl.col("len") > 3)
    assert optimize(frame.plan).plan.kind == "Filter"


def test_predicate_into_the_join_side_it_reads(ws, counters):
    left = gen(rows(12))
    right = lazyllm.from_dicts([{"id": i, "label": f"l{i % 3}"} for i in range(12)]).generate(
        "a", lazyllm.TestModel(), prompt="Label {{ label }}")
    frame = left.join(right, on="id").filter((pl.col("grp") == 2) & (pl.col("label") == "l1"))
    plan = optimize(frame.plan).plan
    assert plan.kind == "Join"
    assert [kinds(c)[:2] for c in plan.children] == [["Generate", "Filter"], ["Generate", "Filter"]]
    assert counted(frame, ws, counters) == (1 + 1, 12 + 3)  # "Label l0..l2": 3 distinct prompts


def test_predicate_not_into_the_padded_side_of_an_outer_join():
    left, right = gen(rows(4)), lazyllm.from_dicts([{"id": 1, "label": "x"}])
    frame = left.join(right, on="id", how="left").filter(pl.col("label") == "x")
    assert optimize(frame.plan).plan.kind == "Filter"  # a null-padded left row would pass below


def test_predicate_through_unique_on_its_keys_only(ws, counters):
    base = gen(rows(20)).unique(subset=["grp"])
    frame = base.filter(pl.col("grp") < 3)
    assert kinds(optimize(frame.plan).plan)[:3] == ["Generate", "Unique", "Filter"]
    counted(frame, ws, counters)
    frame = base.filter(pl.col("id") < 3)  # not a key column: which duplicate survives changes
    assert kinds(optimize(frame.plan).plan)[:3] == ["Generate", "Filter", "Unique"]
    counted(frame, ws, counters)


def test_predicate_through_explode_of_other_columns(ws, counters):
    src = lazyllm.from_dicts([{"id": i, "tags": [f"a{i}", f"b{i}"]} for i in range(6)])
    frame = src.generate("q", lazyllm.TestModel(), prompt="{{ id }}").explode("tags")
    assert kinds(optimize(frame.filter(pl.col("id") < 2).plan).plan)[:3] == ["Explode", "Generate", "Filter"]
    assert counted(frame.filter(pl.col("id") < 2), ws, counters) == (2, 6)
    blocked = frame.filter(pl.col("tags").str.starts_with("a"))
    assert kinds(optimize(blocked.plan).plan)[:2] == ["Filter", "Explode"]


def test_predicate_through_llm_filter_and_other_llm_nodes(ws, counters):
    keep = lazyllm.llm_predicate(lazyllm.TestModel(rules=(("topic 1", "yes"), ("Keep", "no"))), "Keep {{ topic }}?")
    frame = gen(rows(20)).filter(keep).generate("a", lazyllm.TestModel(), prompt="A {{ q }}").filter(
        pl.col("grp") == 1)
    assert kinds(optimize(frame.plan).plan) == ["Generate", "Generate", "LLMFilter", "Filter", "DataFrameSource"]
    opt, plain = counted(frame, ws, counters)
    assert opt < plain


# -- derivation pushdown --------------------------------------------------------------


def test_derivation_pushdown_fires_for_input_columns():
    frame = gen(rows(8)).with_columns(big=pl.col("len") > 90)
    result = optimize(frame.plan)
    assert kinds(result.plan) == ["Select", "Generate", "WithColumns", "DataFrameSource"]
    assert result.plan.columns == frame.columns
    assert any(name == "derivation_pushdown" for name, _ in result.fired)


def test_derivation_pushdown_blocked_for_llm_columns_and_overwrites():
    frame = gen(rows(8)).with_columns(n=Q_LEN)
    assert kinds(optimize(frame.plan).plan)[:2] == ["WithColumns", "Generate"]
    # overwriting a column the prompt reads must stay above the generate
    frame = gen(rows(8)).with_columns(topic=pl.col("topic").str.to_uppercase())
    assert kinds(optimize(frame.plan).plan)[:2] == ["WithColumns", "Generate"]


def test_derivation_pushdown_blocked_for_aggregates_above_an_llm_filter(ws, counters):
    keep = lazyllm.llm_predicate(lazyllm.TestModel(rules=(("topic 1", "yes"), ("Keep", "no"))), "Keep {{ topic }}?")
    frame = rows(20).filter(keep).with_columns(m=pl.col("id").mean())
    assert kinds(optimize(frame.plan).plan)[:2] == ["WithColumns", "LLMFilter"]
    counted(frame, ws, counters)


# -- sort pushdown (top-k below the LLM) -------------------------------------------------


def test_sort_pushdown_fires_for_input_keys():
    frame = gen(rows(8)).sort("len", descending=True).head(2)
    assert kinds(optimize(frame.plan).plan) == ["Generate", "Head", "Sort", "DataFrameSource"]


def test_sort_pushdown_blocked_for_llm_keys_and_llm_filters(ws, counters):
    frame = gen(rows(8)).sort("q").head(2)
    assert kinds(optimize(frame.plan).plan)[:3] == ["Head", "Sort", "Generate"]
    keep = lazyllm.llm_predicate(lazyllm.TestModel(rules=(("topic 1", "yes"), ("Keep", "no"))), "Keep {{ topic }}?")
    frame = rows(8).filter(keep).sort("len").head(2)
    assert kinds(optimize(frame.plan).plan)[:3] == ["Head", "Sort", "LLMFilter"]
    counted(frame, ws, counters)


# -- projection pruning at the root -------------------------------------------------------


def test_projection_pruning_at_the_root_and_through_rename(ws, counters):
    frame = gen(rows(8)).rename({"q": "question"}).drop("question", "q_error")
    assert not any(isinstance(n, Generate) for n in walk(optimize(frame.plan).plan))
    assert counted(frame, ws, counters) == (0, 8)


def test_projection_pruning_blocked_when_the_error_column_is_kept(ws, counters):
    frame = gen(rows(8)).drop("q")
    assert any(isinstance(n, Generate) for n in walk(optimize(frame.plan).plan))
    assert counted(frame, ws, counters) == (8, 8)


def test_filters_never_only_swap():
    frame = gen(rows(8)).filter(Q_LEN > 1).filter(pl.col("grp") == 1)
    result = optimize(frame.plan)
    assert len([n for n in walk(result.plan) if isinstance(n, Filter)]) == 2
    assert optimize(result.plan).fired == []


def test_main_job_module_filter_passes_the_score_filter(ws, counters):
    from lazyllm.examples import docs_to_qa

    job = docs_to_qa.build(limit=64, model=lazyllm.TestModel(name="mainjob"))
    modules = docs_to_qa.load_docs(64)["module"].unique().sort().to_list()[:3]
    frame = job.kept.filter(pl.col("module").is_in(modules)).head(8)
    plan = optimize(frame.plan).plan
    assert kinds(plan)[-2:] == ["Filter", "DataFrameSource"]  # the module filter runs first
    in_modules = docs_to_qa.load_docs(64)["module"].is_in(modules).sum()
    assert counted(frame, ws, counters) == (3 * in_modules, 3 * 64)
    text = frame.explain(workspace=ws.path / "explain")
    assert "rule predicate_pushdown · saves " in text and "    - filter col(\"module\")" in text
    assert f"LLM calls to make: {3 * in_modules} optimized vs {3 * 64} as written ({3 * 64 - 3 * in_modules} saved)" in text


# -- SQL: columns read from the parsed query, WHERE conjuncts as filters -------------------


def test_sql_where_on_input_columns_is_as_cheap_as_a_filter(ws, counters):
    frame = gen(rows(40)).sql("SELECT id, q FROM self WHERE grp = 1 AND topic LIKE 'topic%' ORDER BY id")
    plan = optimize(frame.plan).plan
    assert kinds(plan) == ["SQL", "Generate", "Filter", "DataFrameSource"]
    assert "WHERE" not in plan.query
    assert counted(frame, ws, counters) == (4, 40)


def test_sql_where_on_llm_columns_or_functions_stays_in_the_query(ws, counters):
    frame = gen(rows(20)).sql("SELECT id FROM self WHERE length(q) > 3 OR grp = 1 ORDER BY id")
    plan = optimize(frame.plan).plan
    assert kinds(plan)[:2] == ["SQL", "Generate"] and "WHERE" in plan.query
    assert counted(frame, ws, counters) == (20, 20)
    frame = gen(rows(20)).sql("SELECT id, q FROM self WHERE grp = 'a1' ORDER BY id")  # a string vs an int column
    with pytest.raises(lazyllm.errors.PlanError):
        frame.collect(workspace=ws)  # DuckDB's own error, not a silent polars rewrite
    assert kinds(optimize(frame.plan).plan)[:2] == ["SQL", "Generate"]


def test_sql_columns_come_from_the_parsed_query(ws, counters):
    frame = gen(rows(10)).sql("SELECT id, topic, count(*) OVER () AS n FROM self ORDER BY id")
    assert not any(isinstance(n, Generate) for n in walk(optimize(frame.plan).plan))
    assert counted(frame, ws, counters) == (0, 10)


def test_sql_star_reads_every_column(ws, counters):
    for query in ("SELECT * FROM self", "SELECT * EXCLUDE (q) FROM self", "SELECT self FROM self",
                  "SELECT COLUMNS('^t') FROM self"):
        frame = gen(rows(4)).sql(query)
        assert any(isinstance(n, Generate) for n in walk(optimize(frame.plan).plan)), query


# -- LLM filter placement and ranking ---------------------------------------------------


def test_llm_filter_moves_below_llm_work_it_does_not_read(ws, counters):
    keep = lazyllm.llm_predicate(lazyllm.TestModel(rules=(("topic 1", "yes"), ("Keep", "no"))), "Keep {{ topic }}?")
    frame = gen(rows(20)).filter(keep)
    result = optimize(frame.plan)
    assert kinds(result.plan) == ["Generate", "LLMFilter", "DataFrameSource"]
    assert any(name == "llm_filter_placement" for name, _ in result.fired)
    assert counted(frame, ws, counters) == (20 + 11, 40)  # topic 1, 10..19 kept


def test_llm_filter_on_llm_output_stays_above(ws, counters):
    keep = lazyllm.llm_predicate(lazyllm.TestModel(rules=(("topic 1", "yes"), ("Keep", "no"))), "Keep {{ q }}?")
    frame = gen(rows(8)).filter(keep)
    assert kinds(optimize(frame.plan).plan) == ["LLMFilter", "Generate", "DataFrameSource"]
    counted(frame, ws, counters)


def test_llm_filters_run_cheapest_first_by_rank(ws, counters):
    from lazyllm.planner.rules.llm_filter_placement import rank

    long = "Read this carefully and decide whether the topic deserves a question: " * 8 + "{{ topic }}"
    expensive = lazyllm.llm_predicate(lazyllm.TestModel(name="big", rules=(("", "yes"),)), long)
    cheap = lazyllm.llm_predicate(lazyllm.TestModel(name="small", rules=(("topic 1", "yes"), ("", "no"))),
                                  "{{ topic }}?")
    frame = rows(20).filter(expensive).filter(cheap)
    result = optimize(frame.plan)
    top, low = result.plan, result.plan.child
    assert rank(low) > rank(top) and low.prompt == "{{ topic }}?"
    assert any("ordered by rank" in note for _, note in result.fired)
    assert counted(frame, ws, counters) == (20 + 11, 40)
    same = rows(20).filter(cheap).filter(expensive)  # already in rank order: nothing moves
    assert optimize(same.plan).fired == []


LONG = "Read this carefully and decide how good a question the topic deserves: " * 8 + "{{ topic }}"


def judged(frame, column, model, prompt, threshold=5):
    return frame.judge(column, model, prompt=prompt).filter(pl.col(column) >= threshold)


def test_judge_filter_moves_below_a_generate_it_does_not_read(ws, counters):
    judge = lazyllm.TestModel(name="j", rules=(("Rate topic 1", "9"), ("Rate", "2")))
    frame = judged(gen(rows(20)), "s", judge, "Rate {{ topic }}")
    result = optimize(frame.plan)
    assert kinds(result.plan) == ["Select", "Generate", "Filter", "Judge", "DataFrameSource"]
    assert result.plan.columns == frame.columns  # the projection keeps the column order
    assert any("filter on judge 's' moved below generate 'q'" in note for _, note in result.fired)
    assert counted(frame, ws, counters) == (20 + 11, 40)  # topic 1, 10..19 pass


def test_judge_filter_on_generated_text_stays_above(ws, counters):
    judge = lazyllm.TestModel(name="j", rules=(("Rate", "2"),))
    frame = judged(gen(rows(8)), "s", judge, "Rate {{ q }}")
    assert kinds(optimize(frame.plan).plan) == ["Filter", "Judge", "Generate", "DataFrameSource"]
    counted(frame, ws, counters)


def test_judge_filters_run_by_rank_and_the_costly_judge_sees_fewer_rows(ws, counters, tmp_path):
    from lazyllm.planner.rules.llm_filter_placement import rank

    big = lazyllm.TestModel(name="big", rules=(("", "8"),), log_path=str(tmp_path / "big.log"))
    small = lazyllm.TestModel(name="small", rules=(("topic 1", "9"), ("", "1")), log_path=str(tmp_path / "small.log"))
    frame = judged(judged(rows(20), "s_big", big, LONG), "s_small", small, "{{ topic }}")
    result = optimize(frame.plan)
    assert kinds(result.plan) == ["Select", "Filter", "Judge", "Filter", "Judge", "DataFrameSource"]
    inner = result.plan.child.child.child.child
    assert inner.column == "s_small" and rank(inner) > rank(result.plan.child.child)
    assert any("ordered by rank" in note and "filter on judge 's_small'" in note for _, note in result.fired)
    assert counted(frame, ws, counters) == (20 + 11, 40)
    # already in rank order, or the cheap filter reads the costly judge's score: nothing moves
    assert optimize(judged(judged(rows(20), "s_small", small, "{{ topic }}"), "s_big", big, LONG).plan).fired == []
    reads = judged(judged(rows(20), "s_big", big, LONG), "s_small", small, "{{ topic }} {{ s_big }}")
    assert not any("ordered by rank" in note for _, note in optimize(reads.plan).fired)


def test_judge_filter_and_llm_predicate_are_ranked_together(ws, counters):
    keep = lazyllm.llm_predicate(lazyllm.TestModel(name="k", rules=(("topic 1", "yes"), ("", "no"))), "{{ topic }}?")
    big = lazyllm.TestModel(name="big", rules=(("", "8"),))
    frame = judged(rows(20), "s", big, LONG).filter(keep)
    result = optimize(frame.plan)
    assert kinds(result.plan) == ["Filter", "Judge", "LLMFilter", "DataFrameSource"]
    assert counted(frame, ws, counters) == (20 + 11, 40)


def test_explain_keeps_token_estimates_under_waves(ws):
    keep = lazyllm.llm_predicate(lazyllm.TestModel(rules=(("topic 1", "yes"), ("Keep", "no"))), "Keep {{ topic }}?")
    frame = gen(rows(30)).filter(keep).head(2)
    text = frame.explain(workspace=ws)
    assert "in waves" in text
    assert text.count("est. tokens:") == 2 and "est. tokens: 0 in ()" not in text


# -- selection pushdown: unique, semi/anti joins, sample ------------------------------------


def test_unique_on_input_keys_runs_before_the_llm(ws, counters):
    frame = gen(rows(40)).unique(subset=["grp"], keep="last")
    assert kinds(optimize(frame.plan).plan) == ["Generate", "Unique", "DataFrameSource"]
    assert counted(frame, ws, counters) == (10, 40)


def test_unique_blocked_on_llm_keys_and_keep_any(ws, counters):
    frame = gen(rows(12)).unique(subset=["q"])
    assert kinds(optimize(frame.plan).plan)[:2] == ["Unique", "Generate"]
    counted(frame, ws, counters)
    assert kinds(optimize(gen(rows(12)).unique(subset=["grp"], keep="any").plan).plan)[:2] == ["Unique", "Generate"]


def test_semi_and_anti_joins_run_before_the_llm(ws, counters):
    wanted = lazyllm.from_dicts([{"id": i} for i in (1, 5, 7)])
    for how, expected in (("semi", 3), ("anti", 17)):
        frame = gen(rows(20)).join(wanted, on="id", how=how)
        assert kinds(optimize(frame.plan).plan)[:2] == ["Generate", "Join"], how
        assert counted(frame, ws, counters) == (expected, 20)
    inner = gen(rows(20)).join(wanted, on="id")  # an inner join may repeat rows: stays above
    assert kinds(optimize(inner.plan).plan)[0] == "Join"


def test_sample_runs_before_the_llm_but_not_above_an_llm_filter(ws, counters):
    frame = gen(rows(40)).sample(5, seed=3)
    assert kinds(optimize(frame.plan).plan) == ["Generate", "Sample", "DataFrameSource"]
    assert counted(frame, ws, counters) == (5, 40)
    keep = lazyllm.llm_predicate(lazyllm.TestModel(rules=(("topic 1", "yes"), ("Keep", "no"))), "Keep {{ topic }}?")
    frame = rows(20).filter(keep).sample(3, seed=1)
    assert kinds(optimize(frame.plan).plan)[:2] == ["Sample", "LLMFilter"]
    counted(frame, ws, counters)


def test_derivations_pass_bare_selects_one_after_the_other(ws, counters):
    frame = gen(rows(40)).with_columns(a=pl.col("len") * 2).with_columns(b=pl.col("a") >= 180).filter(pl.col("b"))
    plan = optimize(frame.plan).plan
    assert kinds(plan)[:2] == ["Select", "Generate"] and "Filter" in kinds(plan)[2:]
    assert counted(frame, ws, counters) == (4, 40)


# -- projection merge ----------------------------------------------------------------------


def test_projection_merge_fires_for_drop_and_select_over_a_select(ws, counters):
    frame = gen(rows(6)).select("id", "topic", "q", "q_error").drop("q", "q_error")
    result = optimize(frame.plan)
    assert kinds(result.plan) == ["Select", "DataFrameSource"]
    assert any(name == "projection_merge" for name, _ in result.fired)
    assert counted(frame, ws, counters) == (0, 6)
    frame = gen(rows(6)).select("id", "q", "q_error").select("id")
    assert kinds(optimize(frame.plan).plan) == ["Select", "DataFrameSource"]


def test_projection_merge_blocked_by_computed_or_renamed_columns():
    frame = gen(rows(6)).select("id", pl.col("q").alias("question")).drop("question")
    assert "Generate" in kinds(optimize(frame.plan).plan)  # the lower select computes (renames) q
    frame = gen(rows(6)).select("id", "q").select(pl.col("id") + 1)
    assert kinds(optimize(frame.plan).plan)[:2] == ["Select", "Select"]


def test_predicate_into_the_kept_side_of_a_right_join(ws, counters):
    left = lazyllm.from_dicts([{"id": i, "grp": i % 2} for i in range(8)])
    right = gen(rows(8)).select("id", "topic", "q")
    frame = left.join(right, on="id", how="right").filter(pl.col("topic").str.ends_with("3"))
    plan = optimize(frame.plan).plan
    assert plan.kind == "Join" and "Filter" in kinds(plan.children[1])
    assert counted(frame, ws, counters) == (1, 8)
    blocked = left.join(right, on="id", how="right").filter(pl.col("grp") == 1)  # null-padded left side
    assert optimize(blocked.plan).plan.kind == "Filter"
    counted(blocked, ws, counters)


def test_select_computations_move_below_the_llm(ws, counters):
    frame = gen(rows(40)).select("id", "q", big=pl.col("len") >= 90).filter(pl.col("big"))
    plan = optimize(frame.plan).plan
    assert kinds(plan)[:2] == ["Select", "Generate"] and "Filter" in kinds(plan)[2:]
    assert counted(frame, ws, counters) == (4, 40)


def test_select_computations_blocked_on_llm_columns_and_aggregates(ws, counters):
    frame = gen(rows(8)).select("id", n=pl.col("q").str.len_chars())
    assert kinds(optimize(frame.plan).plan)[:2] == ["Select", "Generate"]
    frame = gen(rows(8)).select("id", "q", m=pl.col("len").mean()).filter(pl.col("m") > 0)
    assert kinds(optimize(frame.plan).plan)[:3] == ["Filter", "Select", "Generate"]
    counted(frame, ws, counters)


# -- explain: each rule that fired, with the calls it saves (ablation) ---------------------


def test_explain_gives_each_fired_rule_the_calls_it_saves(ws):
    # pruning removes the generate; without it, the filter would still pass the generate
    # (derivation + predicate pushdown) and 20 calls remain: that is what pruning alone saves
    frame = gen(rows()).with_columns(big=pl.col("len") >= 90).filter(pl.col("big")).drop("q", "q_error")
    lines = frame.explain(workspace=ws.path / "explain").splitlines()
    assert lines[1].startswith("  LLM calls to make: 0 optimized vs 200 as written (200 saved)")
    assert lines[2:4] == ["  rule projection_pruning · saves 20 LLM calls",
                          "    - generate 'q' pruned: its output is never read"]


def test_explain_rule_savings_are_the_calls_without_that_rule(ws):
    frame = gen(rows()).filter(Q_LEN > 0).filter(pl.col("grp") == 0)
    lines = frame.explain(workspace=ws.path / "explain").splitlines()
    assert "  rule predicate_pushdown · saves 180 LLM calls" in lines
    two = gen(rows()).filter(pl.col("grp") == 0).filter(pl.col("len") > 10)
    lines = two.explain(workspace=ws.path / "explain").splitlines()
    assert lines[1].startswith("  LLM calls to make: 16 optimized vs 200 as written (184 saved)")
    assert lines[2] == "  rule predicate_pushdown · saves 184 LLM calls"
    assert lines[3].startswith("    - ") and lines[4].startswith("    - ") and "moved below generate 'q'" in lines[4]
