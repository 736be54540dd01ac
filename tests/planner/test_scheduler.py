"""Cross-operator batching and per-row pipelining are observable in engine submissions."""

from __future__ import annotations

import polars as pl
import pytest
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


# -- streaming sessions: requests join the running batch -------------------------------------


def _chain(model):
    frame = lazyllm.from_dicts([{"topic": "slow topic"}, {"topic": "fast topic"}, {"topic": "other topic"}])
    return frame.generate("q", model, prompt="Ask about {{ topic }}").generate("a", model, prompt="A: {{ q }}")


def test_a_dependent_request_joins_the_running_batch(ws, counters):
    # the slow row's question takes 6 engine steps; the other rows' answers are sent meanwhile
    model = lazyllm.TestModel(streaming=True, batch_size=8, steps=(("slow", 6),))
    df = _chain(model).collect(workspace=ws)
    events = counters.EVENTS
    slow_done = events.index(("done", "Ask about slow topic"))
    fast_answer = next(i for i, (kind, text) in enumerate(events) if kind == "submit" and "fast topic" in text
                       and text.startswith("A: "))
    assert fast_answer < slow_done, events
    assert counters.CALLS == 6
    assert df["a"].to_list() == [f"echo[0|greedy]: A: echo[0|greedy]: Ask about {t}"
                                 for t in ("slow topic", "fast topic", "other topic")]
    # the same result as the batch path (an engine with generate only) and as an unoptimized run
    batch = _chain(lazyllm.TestModel(batch_size=8)).collect(workspace=ws.path / "batch")
    assert_frame_equal(df, batch)


def test_a_stream_never_has_more_than_capacity_in_flight(ws, counters):
    model = lazyllm.TestModel(streaming=True, batch_size=3, steps=(("topic 0", 4), ("topic 4", 3)))
    frame = rows(10).generate("q", model, prompt="Ask about {{ topic }}").generate("a", model, prompt="A: {{ q }}")
    frame.collect(workspace=ws)
    in_flight = peak = 0
    for kind, _ in counters.EVENTS:
        in_flight += 1 if kind == "submit" else -1
        peak = max(peak, in_flight)
    assert peak == 3 and in_flight == 0
    assert counters.CALLS == 20 and sum(counters.SUBMISSIONS) == 20


def test_a_failing_stream_keeps_what_was_committed(ws, counters, monkeypatch):
    # the fast row's answer raises in the engine while the slow row's question runs: the
    # questions that had returned are in the cache, and a rerun does not send them again
    from lazyllm.backends.testing import SteppedSession

    submit = SteppedSession.submit

    def failing(self, requests):
        if any(counters.render(r).startswith("A: ") and "fast" in counters.render(r) for r in requests):
            raise RuntimeError("the engine broke")
        return submit(self, requests)

    model = lazyllm.TestModel(streaming=True, batch_size=8, steps=(("slow", 6),))
    with monkeypatch.context() as patch:
        patch.setattr(SteppedSession, "submit", failing)
        with pytest.raises(lazyllm.errors.EngineError, match="the engine broke. Completed requests are in the cache"):
            _chain(model).collect(workspace=ws)
    done = [text for kind, text in counters.EVENTS if kind == "done"]
    assert "Ask about slow topic" not in done and "Ask about fast topic" in done
    counters.reset_counters()
    df = _chain(model).collect(workspace=ws)
    sent = [text for kind, text in counters.EVENTS if kind == "submit"]
    assert "Ask about fast topic" not in sent and "Ask about other topic" not in sent
    assert "Ask about slow topic" in sent and len(sent) == 4
    assert df["a"].null_count() == 0


# -- the commit window: fast engines pay one write transaction per window, not per batch -------


def _count_commits(monkeypatch) -> list[int]:
    """Spy on the cache's write transactions of answers: the number of answers in each."""
    from lazyllm.planner.cache import PromptCache

    sizes: list[int] = []
    put_many = PromptCache.put_many

    def counting(self, items, **kwargs):
        items = list(items)
        sizes.append(len(items))
        return put_many(self, items, **kwargs)

    monkeypatch.setattr(PromptCache, "put_many", counting)
    return sizes


def test_a_fast_engine_commits_several_batches_in_one_transaction(ws, counters, monkeypatch):
    from lazyllm.planner import scheduler

    monkeypatch.setattr(scheduler, "COMMIT_WINDOW", 60.0)  # every answer of this run falls in one window
    sizes = _count_commits(monkeypatch)
    df = rows(10).generate("q", lazyllm.TestModel(batch_size=2), prompt="Ask about {{ topic }}").collect(workspace=ws)
    assert counters.SUBMISSIONS == [2] * 5
    assert sizes == [10]  # one transaction for the five batches
    assert len(ws.cache) == 10 and df["q"].null_count() == 0


def test_a_commit_of_held_answers_takes_at_most_commit_max_answers(ws, counters, monkeypatch):
    from lazyllm.planner import scheduler

    monkeypatch.setattr(scheduler, "COMMIT_WINDOW", 60.0)  # one window, were it not for the cap
    monkeypatch.setattr(scheduler, "COMMIT_MAX_ANSWERS", 4)
    sizes = _count_commits(monkeypatch)
    rows(10).generate("q", lazyllm.TestModel(batch_size=2), prompt="Ask about {{ topic }}").collect(workspace=ws)
    assert sizes == [4, 4, 2] and len(ws.cache) == 10


def test_batches_slower_than_the_window_and_answers_other_nodes_wait_for_commit_one_by_one(ws, counters,
                                                                                           monkeypatch):
    from lazyllm.planner import scheduler

    sizes = _count_commits(monkeypatch)
    monkeypatch.setattr(scheduler, "COMMIT_WINDOW", 0.05)
    rows(6).generate("q", lazyllm.TestModel(batch_size=2, delay=0.06), prompt="Ask about {{ topic }}").collect(
        workspace=ws)
    assert sizes == [2, 2, 2]  # each batch took longer than the window: committed on its own
    sizes.clear()
    counters.reset_counters()
    monkeypatch.setattr(scheduler, "COMMIT_WINDOW", 60.0)
    frame = rows(6).generate("q", lazyllm.TestModel(batch_size=4), prompt="Q {{ topic }}").generate(
        "a", lazyllm.TestModel(batch_size=4), prompt="A: {{ q }}")
    frame.collect(workspace=ws.path / "chain")
    assert counters.SUBMISSIONS == [4, 4, 4]  # pipelining as without the window (see above)
    assert sizes == [4, 4, 4]  # q's answers are awaited by a: committed at once; a's last batch ends the stream


def test_answers_waiting_for_the_window_are_committed_when_the_engine_fails(ws, counters, monkeypatch):
    from lazyllm.planner import scheduler

    monkeypatch.setattr(scheduler, "COMMIT_WINDOW", 60.0)
    model = lazyllm.TestModel(batch_size=2, raise_on=("topic 6",))
    with pytest.raises(lazyllm.errors.EngineError):
        rows(10).generate("q", model, prompt="Ask about {{ topic }}").collect(workspace=ws)
    assert counters.SUBMISSIONS == [2, 2, 2, 2] and len(ws.cache) == 6  # every batch answered before the failure


def test_slow_commits_make_a_fast_engine_wait_longer_for_the_next(ws, counters, monkeypatch):
    """After a commit that took t seconds, answers wait up to t / COMMIT_SHARE for the next."""
    import time

    from lazyllm.planner import scheduler
    from lazyllm.planner.cache import PromptCache

    put_many = PromptCache.put_many

    def slow(self, items, **kwargs):
        time.sleep(0.1)  # a commit flushing many pages
        return put_many(self, items, **kwargs)

    monkeypatch.setattr(PromptCache, "put_many", slow)
    sizes = _count_commits(monkeypatch)
    monkeypatch.setattr(scheduler, "COMMIT_WINDOW", 0.2)
    monkeypatch.setattr(scheduler, "COMMIT_HOLD_MAX", 60.0)
    got = {}
    for share in (1.0, 0.05):  # 1.0: the hold stays the window; 0.05: it grows to 0.1 / 0.05 = 2 s
        monkeypatch.setattr(scheduler, "COMMIT_SHARE", share)
        sizes.clear()
        model = lazyllm.TestModel(batch_size=2, delay=0.01)
        rows(200).generate("q", model, prompt=f"Ask {share} {{{{ topic }}}}").collect(workspace=ws)
        got[share] = list(sizes)
        assert sum(sizes) == 200
    assert len(got[1.0]) >= 4  # a commit per 0.2 s window over more than a second of batches
    assert len(got[0.05]) <= 2  # the first window, then everything after it waits for the end


# -- looking ahead for leases leaves the order of the queue as it is ----------------------------


def _queue_run():
    """A scheduler run with only its queue (one model, "m")."""
    import itertools
    from collections import defaultdict, deque
    from types import SimpleNamespace

    from lazyllm.planner import scheduler

    run = scheduler._ChainRun.__new__(scheduler._ChainRun)
    run.states = [SimpleNamespace(model_fp="m")] * 3
    run.queues, run.queued = defaultdict(dict), {}
    run._order, run._peeked, run._arrivals = defaultdict(list), defaultdict(deque), itertools.count()
    return run


@pytest.mark.parametrize("seed", range(20))
def test_peeking_ahead_and_queueing_columns_take_works_in_the_order_of_one_heap(seed):
    import random

    from lazyllm.planner.scheduler import _Work

    rng = random.Random(seed)
    plain, peeking = _queue_run(), _queue_run()
    taken: dict[str, list[bytes]] = {"plain": [], "peeking": []}
    for step in range(200):
        op = rng.random()
        if op < 0.4:  # a work arrives: upstream or downstream node, short or long prompt
            node, size = rng.randrange(3), rng.randrange(1, 50)
            for run in (plain, peeking):
                run._enqueue(_Work(f"k{step}".encode(), None, node, size=size))
        elif op < 0.5:  # a column of one node's misses arrives at once (equal sizes keep their order)
            node, sizes = rng.randrange(3), [rng.randrange(1, 6) for _ in range(rng.randrange(1, 15))]
            for j, size in enumerate(sizes):
                plain._enqueue(_Work(f"k{step}.{j}".encode(), None, node, size=size))
            works = [_Work(f"k{step}.{j}".encode(), None, node, size=size) for j, size in enumerate(sizes)]
            peeking.queued.update((w.key, w) for w in works)
            peeking._enqueue_run("m", node, works)
        elif op < 0.75:  # the next n works, left in the queue
            n, q = rng.randrange(1, 12), peeking.queues["m"]
            following = sorted(e for e in [*peeking._order["m"], *peeking._peeked["m"]] if e[3] in q)
            assert set(peeking._peek("m", n)) == {e[3] for e in following[:n]}
        else:
            n = rng.randrange(1, 6)
            taken["plain"] += [w.key for w in plain._take("m", n)]
            taken["peeking"] += [w.key for w in peeking._take("m", n)]
    taken["plain"] += [w.key for w in plain._take("m", 10**6)]
    taken["peeking"] += [w.key for w in peeking._take("m", 10**6)]
    assert taken["peeking"] == taken["plain"] and len(taken["plain"]) == len(set(taken["plain"]))


def test_looking_ahead_by_no_batch_leases_nothing_ahead():
    from lazyllm.planner.scheduler import _Work

    run = _queue_run()
    run._enqueue(_Work(b"a", None, 0, size=1))
    assert run._peek("m", 0) == [] and [w.key for w in run._take("m", 5)] == [b"a"]


# -- progress refreshes walk every row: on large inputs they come less often -------------------


@pytest.mark.parametrize(("cost", "expected"), [(0.0, 5), (0.008, 3)])
def test_progress_refreshes_take_at_most_their_share_of_the_time(monkeypatch, cost, expected):
    from types import SimpleNamespace

    from lazyllm.planner import scheduler

    clock = [0.0]
    refreshed: list[float] = []

    class Bars:
        interval = 1.0

        def refresh(self, i, **counts):  # a refresh that takes ``cost`` seconds
            refreshed.append(clock[0])
            clock[0] += cost

    monkeypatch.setattr(scheduler.time, "perf_counter", lambda: clock[0])
    run = scheduler._ChainRun.__new__(scheduler._ChainRun)
    run.states = [SimpleNamespace(done=[False], keys=set(), stats=SimpleNamespace(output_tokens=0))]
    run.from_cache, run._refreshed, run._refresh_cost = set(), -1.0, 0.0
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        clock[0] = t
        run._refresh(Bars())
    # every 0.2 s when cheap; an 8 ms refresh at most 2% of the time: every 0.4 s
    assert len(refreshed) == expected
