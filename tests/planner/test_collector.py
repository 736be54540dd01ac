"""The cyclic collector around a run (``planner/collector.py``): no automatic full collection
while a run holds its per-row objects, young cycles still freed, full ones paced in time."""

from __future__ import annotations

import gc
import weakref

import polars as pl
import pytest

import lazyllm
from lazyllm.backends.testing import DeterministicEngine
from lazyllm.planner import collector
from lazyllm.planner.collector import FullCollections, paced_collections


def _full_collections() -> int:
    return gc.get_stats()[2]["collections"]


def _doubling() -> int:
    """New objects that start a full collection outside a block: the heap at least doubles (past
    CPython's quarter rule) and more than 10 generation-1 collections run (700 × 10 allocations each)."""
    return max(len(gc.get_objects()), 200_000)


def _grow_heap(n: int) -> list[list[int]]:
    """``n`` new long-lived tracked objects (lists), kept alive by the returned list."""
    return [[i] for i in range(n)]


@pytest.fixture
def collector_on():
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_a_growing_heap_starts_no_full_collection_inside_the_block(collector_on):
    n = _doubling()
    before = _full_collections()
    kept = _grow_heap(n)
    assert _full_collections() > before  # outside the block the same growth does start one
    del kept
    with paced_collections():
        before = _full_collections()
        kept = _grow_heap(n)
        assert _full_collections() == before
        del kept


def test_thresholds_are_put_back_after_nested_blocks_and_errors(collector_on):
    saved = gc.get_threshold()
    with pytest.raises(RuntimeError):
        with paced_collections():
            with paced_collections():
                assert gc.get_threshold()[:2] == saved[:2]
                assert gc.get_threshold()[2] > 10**9
            assert gc.get_threshold()[2] > 10**9  # the outer block still runs
            raise RuntimeError("boom")
    assert gc.get_threshold() == saved


def test_young_cycles_are_freed_inside_the_block(collector_on):
    class Node:
        pass

    with paced_collections():
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle: reference counting alone never frees it
        alive = weakref.ref(a)
        del a, b
        _grow_heap(100 * gc.get_threshold()[0])  # allocations start young collections
        assert alive() is None


def test_full_collections_are_paced_by_their_cost():
    times = iter([0.0, 5.0, 10.0, 12.0, 15.9, 16.0, 16.0])  # the clock at each read
    pacer = FullCollections(share=0.5, first_after=10.0, clock=lambda: next(times))  # t=0: first due at 10
    before = _full_collections()
    assert not pacer.tick()  # t=5: before the first is due
    assert pacer.tick()  # t=10: due; it "takes" 2 s (10 -> 12), so the next is due at 12 + 2 / 0.5 = 16
    assert not pacer.tick()  # t=15.9
    assert pacer.tick()  # t=16
    assert _full_collections() == before + 2 and pacer.collections == 2


def test_full_collections_pace_only_when_the_collector_is_on():
    pacer = FullCollections(first_after=0.0)
    with collector.gc_paused():
        assert not pacer.tick()


def test_share_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="share"):
        FullCollections(share=1.5)


def test_a_run_sends_its_batches_with_automatic_full_collections_off(tmp_path, monkeypatch, collector_on):
    seen: list[int] = []
    generate = DeterministicEngine.generate

    def spy(self, requests):
        seen.append(gc.get_threshold()[2])
        yield from generate(self, requests)

    monkeypatch.setattr(DeterministicEngine, "generate", spy)
    saved = gc.get_threshold()
    df = pl.DataFrame({"x": [f"item {i}" for i in range(40)]})
    out = (lazyllm.from_polars(df).generate("y", lazyllm.TestModel(batch_size=8), prompt="Say {{ x }}", max_tokens=4)
           .collect(workspace=tmp_path / "ws", progress=False))
    assert out.height == 40 and len(seen) == 5
    assert all(t > 10**9 for t in seen)
    assert gc.get_threshold() == saved


def test_a_full_collection_held_back_runs_once_the_block_is_over(collector_on):
    collector.collect_deferred()  # nothing held back from earlier tests
    with paced_collections():
        kept = _grow_heap(_doubling())
        del kept
        assert not collector.collect_deferred()  # not inside a block
    before = _full_collections()
    assert collector.collect_deferred() and _full_collections() == before + 1
    assert not collector.collect_deferred()  # once


def test_a_small_block_holds_nothing_back(collector_on):
    collector.collect_deferred()
    gc.collect()  # the generation counts start from zero
    with paced_collections():
        pass
    assert not collector.collect_deferred()
