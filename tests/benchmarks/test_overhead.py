"""The per-row overhead benchmark's accounting (benchmarks/overhead.py): no timings here
(``python -m benchmarks.run overhead`` measures them); these tests check that the split of
a cold collect counts every answer the cache stored, that the LMDB floor writes as many
records as the run did, and that the instrumented methods are put back."""

from __future__ import annotations

from pathlib import Path

import benchmarks  # noqa: F401 - lazyllm from this checkout
from benchmarks import overhead
from lazyllm.backends.testing import DeterministicEngine
from lazyllm.planner.cache import PromptCache
from lazyllm.planner.workspace import Workspace


def _methods() -> tuple[object, ...]:
    return DeterministicEngine.generate, PromptCache.put_many, PromptCache.lease, PromptCache.release


def test_the_cold_split_counts_every_stored_answer_and_puts_the_methods_back(tmp_path: Path) -> None:
    before = _methods()
    with overhead._accounted() as acc:
        assert _methods() != before  # instrumented while active
        overhead._frame(300).collect(workspace=tmp_path / "ws", progress=False)
    assert _methods() == before
    assert sum(acc["commits"]) == 300 == len(Workspace(tmp_path / "ws").cache)
    assert acc["engine"] > 0 and acc["writes"] > 0
    assert 0 < acc["leases"] < acc["writes"] and acc["gc"] >= 0  # the leases are part of the writes


def test_the_methods_are_put_back_when_the_collect_fails(tmp_path: Path) -> None:
    before = _methods()
    try:
        with overhead._accounted():
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert _methods() == before


def test_phases_report_the_split_and_the_floor(tmp_path: Path) -> None:
    phases = overhead._with_own(overhead._phases(200, tmp_path / "ws"))
    assert set(phases) == set(overhead._PHASES)
    assert 0 < phases["cold_engine"] < phases["cold"] and 0 < phases["cold_writes"] < phases["cold"]
    assert phases["cold_own"] == phases["cold"] - phases["cold_engine"]
    assert phases["cold_lmdb"] > 0 and phases["warm"] > 0 and phases["explain"] > 0
