"""A hard budget on a collect (``max_cost`` in USD, ``max_total_tokens``), with the deterministic
engine priced through ``TestModel(price_per_million=...)`` (its tokens are words)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazyllm
from lazyllm.backends import testing
from lazyllm.backends.testing import DeterministicEngine
from lazyllm.core.errors import ParameterError, PlanError
from lazyllm.core.protocols import Message, Request, SamplingParams
from lazyllm.planner import executor
from lazyllm.planner.budget import Budget, BudgetLedger

# USD 1000 per 1M tokens: 1 token = $0.001
PRICED = lazyllm.TestModel(price_per_million=(1000.0, 1000.0), batch_size=2)


def frame(model=PRICED, rows: int = 10):
    return lazyllm.from_dicts([{"q": f"question {i}"} for i in range(rows)]).generate(
        "a", model, prompt="{{ q }}", max_tokens=10)


def spent(stats) -> int:
    return sum(s.input_tokens + s.output_tokens for s in stats.values())


def test_a_cost_budget_stops_sending_and_names_itself_in_the_rows_not_done(ws, counters):
    result = executor.collect(frame().plan, workspace=ws, progress=False, budget=Budget(max_cost=0.05))
    df = result.frames[0]
    done = df.filter(df["a_error"].is_null())
    assert 0 < done.height < 10 and counters.CALLS == done.height
    # each answer: "question i" (2 words) in, "echo[0|greedy]: question i" (3 words) out = $0.005
    assert spent(result.stats) * 0.001 <= 0.05
    rest = df.filter(df["a_error"].is_not_null())
    assert rest["a"].null_count() == rest.height
    assert all("max_cost=$0.05" in e and "budget" in e for e in rest["a_error"])
    # the node's LLM calls are the requests sent: those the budget refused are not calls
    assert sum(s.calls for s in result.stats.values()) == counters.CALLS


def test_a_rerun_with_a_larger_budget_continues_from_the_cache(ws, counters):
    first = frame().collect(workspace=ws, max_cost=0.05)
    sent_first = counters.CALLS
    counters.reset_counters()
    second = frame().collect(workspace=ws, max_cost=1.0)
    assert counters.CALLS == 10 - sent_first  # only what the first run did not send
    assert second["a_error"].null_count() == 10
    kept = first.filter(first["a_error"].is_null())
    assert kept["a"].to_list() == second.filter(second["q"].is_in(kept["q"].to_list()))["a"].to_list()


def test_in_flight_estimates_count_before_any_usage_is_reported():
    """One submission of 10 requests, each estimated at up to 16 tokens (6 prompt + 10 max_tokens):
    a budget of 50 tokens admits 3 of them (48 in flight), although each uses only 5."""
    ledger = BudgetLedger(Budget(max_total_tokens=50))
    requests = [Request(messages=(Message("user", f"question {i}"),), params=SamplingParams(max_tokens=10))
                for i in range(10)]
    engine = ledger.guard(DeterministicEngine(lazyllm.TestModel(batch_size=10)), lazyllm.TestModel(),
                          lambda msgs: sum(len(m.content) // 4 + 4 for m in msgs))
    out = dict(r for part in engine.generate(requests) for r in part)
    assert sorted(out) == list(range(10))
    assert [i for i, r in out.items() if r.error is None] == [0, 1, 2]
    assert (ledger.spent_tokens, ledger.flight_tokens, ledger.refused) == (15, 0, 7)


def test_an_engine_failure_leaves_nothing_in_flight():
    ledger = BudgetLedger(Budget(max_total_tokens=1000))
    engine = ledger.guard(DeterministicEngine(lazyllm.TestModel(raise_on=("boom",))), lazyllm.TestModel(),
                          lambda msgs: 5)
    with pytest.raises(RuntimeError):
        list(engine.generate([Request(messages=(Message("user", "boom"),))]))
    assert (ledger.flight_tokens, ledger.spent_tokens) == (0, 0)


def test_a_token_budget_works_for_models_without_a_price(ws, counters):
    df = frame(lazyllm.TestModel(batch_size=2)).collect(workspace=ws, max_total_tokens=40)
    assert 0 < counters.CALLS < 10
    assert all("max_total_tokens=40" in e for e in df["a_error"].drop_nulls())


def test_max_cost_needs_prices_and_bad_budgets_fail_before_any_call(ws, counters):
    with pytest.raises(PlanError, match="price"):
        frame(lazyllm.TestModel()).collect(workspace=ws, max_cost=1.0)
    with pytest.raises(PlanError, match="price"):
        frame(lazyllm.TestModel()).explain(workspace=ws, max_cost=1.0)
    for bad in ({"max_cost": 0}, {"max_cost": -1.0}, {"max_total_tokens": 2.5}, {"max_cost": float("nan")}):
        with pytest.raises(ParameterError):
            frame().collect(workspace=ws, **bad)
    assert counters.CALLS == 0


def test_collect_all_shares_one_budget(ws, counters):
    a, b = frame(rows=4), lazyllm.from_dicts([{"q": f"other {i}"} for i in range(4)]).generate(
        "a", PRICED, prompt="{{ q }}", max_tokens=10)
    first, second = lazyllm.collect_all([a, b], workspace=ws, max_cost=0.05, progress=False)
    assert first["a_error"].null_count() + second["a_error"].null_count() == counters.CALLS < 8


def test_explain_warns_before_the_run_when_the_estimate_passes_the_budget(ws, counters):
    warned = frame().explain(workspace=ws, max_cost=0.05)
    assert "warning: estimated cost $0.16 > max_cost=$0.05" in warned
    assert "warning" not in frame().explain(workspace=ws, max_cost=1.0)
    assert "max_total_tokens=100" in frame().explain(workspace=ws, max_total_tokens=100)
    assert counters.CALLS == 0


def test_without_a_budget_nothing_is_wrapped(ws, counters):
    result = executor.collect(frame().plan, workspace=ws, progress=False)
    assert result.frames[0]["a_error"].null_count() == 10 and counters.CALLS == 10
    assert PRICED.prices() == (1000.0, 1000.0)
    assert lazyllm.TestModel().prices() is None
    assert executor.model_fingerprint(PRICED) == executor.model_fingerprint(lazyllm.TestModel(batch_size=2))


def test_sink_parquet_runs_under_one_budget_across_shards(ws, counters, tmp_path):
    shards = frame().sink_parquet(tmp_path / "out", rows_per_shard=3, workspace=ws, progress=False, max_cost=0.05)
    df = pl.read_parquet(shards)
    assert len(shards) == 4 and df.height == 10
    assert df["a_error"].null_count() == counters.CALLS < 10


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(budget=st.integers(1, 400), batch=st.integers(1, 12), rows=st.integers(1, 20), max_tokens=st.integers(3, 30))
def test_the_usage_never_passes_the_budget_and_a_rerun_completes_it(tmp_path_factory, budget, batch, rows, max_tokens):
    """Property: whatever the budget, batch size and rows, the usage the engine reports stays within
    max_total_tokens, and a rerun without a budget sends exactly the requests the first run did not."""
    ws = tmp_path_factory.mktemp("ws")
    plan = lazyllm.from_dicts([{"q": f"question number {i}"} for i in range(rows)]).generate(
        "a", lazyllm.TestModel(batch_size=batch), prompt="{{ q }}", max_tokens=max_tokens)
    first = executor.collect(plan.plan, workspace=ws, progress=False, budget=Budget(max_total_tokens=budget))
    assert spent(first.stats) <= budget
    done = first.frames[0]["a_error"].null_count()
    testing.reset_counters()
    second = plan.collect(workspace=ws, progress=False)
    assert testing.CALLS == rows - done and second["a_error"].null_count() == rows


def test_a_streaming_engine_cannot_bypass_the_budget(ws, counters):
    # the wrapped engine offers a continuous session; the budget must still see every submission
    model = lazyllm.TestModel(name="stream-budget", streaming=True, price_per_million=(1000.0, 1000.0))
    frame = lazyllm.from_dicts([{"x": f"row {i}"} for i in range(20)]).generate("y", model, prompt="{{ x }}",
                                                                                  max_tokens=8)
    df = frame.collect(workspace=ws, max_cost=0.05, progress=False)
    assert 0 < df["y"].drop_nulls().len() < 20
    assert df.filter(pl.col("y").is_null())["y_error"].str.contains("budget").all()
