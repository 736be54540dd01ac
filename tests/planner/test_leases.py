"""Concurrent collects on one workspace share work through leases in the LMDB cache.

Processes run a script that builds one frame, waits for a start file (so that they
collect at the same time), and collects it on a shared workspace. Every engine batch
is logged by ``TestModel(log_path=...)`` with the process id and the request keys, so
the tests count how often each distinct request was computed across processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from lazyllm.core.protocols import Response
from lazyllm.planner.cache import PromptCache, lease_owner

ROWS = 48
BATCH = 4

SCRIPT = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import lazyllm

    ws, log, go, out, delay = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), float(sys.argv[5])
    model = lazyllm.TestModel(name="shared", log_path=log, delay=delay, batch_size={batch})
    frame = (lazyllm.from_dicts([{{"q": f"question {{i}}"}} for i in range({rows})])
             .generate("a", model, prompt="Answer: {{{{ q }}}}")
             .generate("b", model, prompt="Check: {{{{ a }}}}"))
    while not go.exists():
        time.sleep(0.01)
    df = frame.collect(workspace=ws, progress=False)
    out.write_text(json.dumps(df.select("a", "b").rows()))
""").format(rows=ROWS, batch=BATCH)

DISTINCT = 2 * ROWS  # two LLM nodes, every prompt distinct


def _start(tmp_path: Path, n: int, delay: float = 0.02) -> tuple[list[subprocess.Popen], Path, Path]:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    log, go = tmp_path / "batches.jsonl", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "ws"), str(log), str(go),
                               str(tmp_path / f"out{i}.json"), str(delay)], stderr=subprocess.PIPE)
             for i in range(n)]
    return procs, log, go


def _finish(procs: list[subprocess.Popen], timeout: float = 240) -> None:
    try:
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stderr.close()


def _computed(log: Path) -> tuple[Counter, Counter]:
    """How often each request key was computed, and requests per process."""
    keys, per_pid = Counter(), Counter()
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        keys.update(entry["keys"])
        per_pid[entry["pid"]] += entry["n"]
    return keys, per_pid


@pytest.mark.parametrize("n", [2, 3])
def test_concurrent_processes_compute_each_distinct_request_once(tmp_path, n):
    procs, log, go = _start(tmp_path, n)  # they import lazyllm, build the frame, then wait for "go"
    go.touch()
    _finish(procs)
    assert [p.returncode for p in procs] == [0] * n
    keys, _ = _computed(log)
    assert len(keys) == DISTINCT and set(keys.values()) == {1}  # each distinct request computed once
    outputs = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(n)]
    assert all(o == outputs[0] for o in outputs) and len(outputs[0]) == ROWS
    first = "echo[0|greedy]: Answer: question 0"
    assert outputs[0][0] == [first, f"echo[0|greedy]: Check: {first}"]


@pytest.mark.parametrize("n", [2, 3])
def test_a_killed_process_loses_at_most_its_batch_in_flight(tmp_path, n):
    procs, log, go = _start(tmp_path, n, delay=0.2)
    go.touch()
    victim = procs[0]
    deadline = time.monotonic() + 120
    while not (log.exists() and any(json.loads(x)["pid"] == victim.pid for x in log.read_text().splitlines())):
        assert victim.poll() is None and time.monotonic() < deadline, "the first process never computed a batch"
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)  # mid-collect: it holds leases on a batch in flight
    victim.wait()
    _finish(procs[1:])
    assert [p.returncode for p in procs[1:]] == [0] * (n - 1)
    keys, _ = _computed(log)
    assert len(keys) == DISTINCT  # the survivors finished the victim's leased work
    assert sum(keys.values()) <= DISTINCT + BATCH  # at most the batch in flight was computed twice
    outputs = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(1, n)]
    assert all(o == outputs[0] for o in outputs) and len(outputs[0]) == ROWS

    # a rerun computes nothing
    before = sum(keys.values())
    rerun, log, go = _start(tmp_path, 1)
    go.touch()
    _finish(rerun)
    assert rerun[0].returncode == 0 and sum(_computed(log)[0].values()) == before


# -- the lease table itself -------------------------------------------------------------------


def test_a_lease_blocks_other_owners_until_it_expires_or_is_released(tmp_path):
    cache = PromptCache(tmp_path / "c")
    a, b = lease_owner(), "another-host:123:abcd"
    k1, k2, k3 = (bytes([i]) * 32 for i in range(1, 4))
    cache.put_many([(k3, Response(text="done"))])
    got = cache.lease([k1, k2, k3], b, seconds=60, now=1000.0)
    assert got.acquired == [k1, k2] and got.cached == [k3] and got.elsewhere == []
    mine = cache.lease([k1, k2], a, seconds=60, now=1030.0)
    assert mine.acquired == [] and mine.elsewhere == [k1, k2]
    assert cache.leased_elsewhere([k1, k2], a, now=1030.0) == {k1, k2}
    cache.put_many([(k1, Response(text="one"))], owner=b)  # committing releases the lease
    assert cache.leased_elsewhere([k1, k2], a, now=1030.0) == {k2}
    expired = cache.lease([k2], a, seconds=60, now=1061.0)  # b's lease ran out
    assert expired.acquired == [k2]
    assert cache.lease([k2], b, now=1062.0).elsewhere == [k2]
    cache.release([k2], a)
    assert cache.lease([k2], b, now=1062.0).acquired == [k2]


def test_a_lease_of_a_dead_process_on_this_machine_lapses_at_once(tmp_path):
    cache = PromptCache(tmp_path / "c")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = lease_owner().split(":")[0]
    key = b"k" * 32
    assert cache.lease([key], f"{host}:{dead.pid}:dead", seconds=3600).acquired == [key]
    assert cache.lease([key], lease_owner(), seconds=3600).acquired == [key]
    alive = f"{host}:{os.getpid()}:other-run"
    assert cache.lease([b"j" * 32], alive, seconds=3600).acquired == [b"j" * 32]
    assert cache.lease([b"j" * 32], lease_owner(), seconds=3600).elsewhere == [b"j" * 32]


# -- the leases' own environment: one per boot, not flushed ---------------------------------------


def test_leases_live_in_an_environment_of_this_boot_committed_without_a_flush(tmp_path):
    from lazyllm.planner import cache as cache_module

    boot = cache_module._boot_id()
    if boot is None:
        pytest.skip("this machine does not tell its boot id")
    host = lease_owner().split(":")[0]
    old = tmp_path / "c.leases" / f"{host}-an-earlier-boot"  # leases left by processes of an earlier boot
    earlier = cache_module._open_env(old, 1 << 20, sync=False)
    with earlier.begin(write=True) as txn:
        txn.put(b"k" * 32, b"stale", db=earlier.open_db(b"leases", txn=txn))
    cache_module._close_env(old)
    cache = PromptCache(tmp_path / "c")
    assert not old.exists()  # no owner of its leases outlived that boot
    assert cache._lease_env.path() == str((tmp_path / "c.leases" / f"{host}-{boot}").resolve())
    assert cache._lease_env.flags()["sync"] is False and cache._env.flags()["sync"] is True
    assert cache.lease([b"k" * 32], lease_owner()).acquired == [b"k" * 32]


def test_without_a_boot_id_the_leases_are_flushed_like_the_cache(tmp_path, monkeypatch):
    from lazyllm.planner import cache as cache_module

    monkeypatch.setattr(cache_module, "_boot_id", lambda: None)
    cache = PromptCache(tmp_path / "c")
    assert cache._lease_env.path().endswith("-flushed") and cache._lease_env.flags()["sync"] is True


def test_a_lease_is_released_only_after_its_answer_is_committed(tmp_path, monkeypatch):
    cache = PromptCache(tmp_path / "c")
    owner, keys = lease_owner(), [bytes([i]) * 32 for i in range(1, 5)]
    assert cache.lease(keys, owner).acquired == keys
    seen: list[bool] = []
    release = PromptCache.release

    def checking(self, released, who):
        released = list(released)
        other = PromptCache(tmp_path / "c")  # what another process's read sees at that moment
        seen.extend(other.get(k) is not None for k in released)
        return release(self, released, who)

    monkeypatch.setattr(PromptCache, "release", checking)
    cache.put_many([(k, Response(text="x")) for k in keys], owner=owner)
    assert seen == [True] * 4
    assert cache.leased_elsewhere(keys, "another-host:1:x") == set()


def test_a_lease_of_misses_reads_no_answer_until_another_writer_commits(tmp_path):
    cache, owner = PromptCache(tmp_path / "c"), lease_owner()
    mine, theirs, later = b"m" * 32, b"t" * 32, b"l" * 32
    cache.put_many([(mine, Response(text="stored here"))])
    # misses=True promises these keys were missing and not stored here since: with no other writer
    # nothing is read (so a key this object did store, against the promise, is leased, not found)
    assert cache.lease([mine], owner, misses=True).acquired == [mine]
    assert cache.lease([mine], owner).cached == [mine]  # without the promise every key is read
    cache.release([mine], owner)
    PromptCache(tmp_path / "c").put_many([(theirs, Response(text="another writer"))])
    got = cache.lease([theirs, later], owner, misses=True)  # another object committed: read again
    assert got.cached == [theirs] and got.acquired == [later]


def test_a_lease_of_misses_leaves_other_live_leases_and_renews_its_own(tmp_path):
    cache, owner, other = PromptCache(tmp_path / "c"), lease_owner(), lease_owner()  # both alive: this process
    a, b, c = b"a" * 32, b"b" * 32, b"c" * 32
    assert cache.lease([b], other).acquired == [b]
    # one key leased elsewhere: the others are leased, in order, and the held one is left to its owner
    got = cache.lease([c, b, a], owner, misses=True, now=time.time())
    assert got.acquired == [c, a] and got.elsewhere == [b] and got.cached == []
    assert cache.leased_elsewhere([a, b, c], other) == {a, c}
    # its own leases again, later: renewed (a lease found is not taken for another's)
    renewed = cache.lease([a, c], owner, misses=True, seconds=1000.0)
    assert renewed.acquired == [a, c]
    assert cache.leased_elsewhere([a], other, now=time.time() + 500.0) == {a}  # the new expiry holds


# -- leasing ahead: one lease transaction for several engine batches ---------------------------


def _count_leases(monkeypatch) -> list[int]:
    """Spy on lease transactions: the number of keys each one leased."""
    calls: list[int] = []
    original = PromptCache.lease

    def counting(self, keys, owner, **kwargs):
        keys = list(keys)
        calls.append(len(keys))
        return original(self, keys, owner, **kwargs)

    monkeypatch.setattr(PromptCache, "lease", counting)
    return calls


def _keys(model, rows: int) -> list[bytes]:
    """The cache keys of ``generate(prompt="A: {{ q }}")`` over ``question 0..rows-1``."""
    from lazyllm.core.hashing import model_fingerprint
    from lazyllm.core.protocols import Message, Request
    from lazyllm.core.protocols import SamplingParams
    from lazyllm.planner.cache import request_key

    params = SamplingParams(max_tokens=256)
    return [request_key(model_fingerprint(model), Request(messages=(Message("user", f"A: question {i}"),),
                                                          params=params)) for i in range(rows)]


def _job(model, rows: int):
    import lazyllm

    return lazyllm.from_dicts([{"q": f"question {i}"} for i in range(rows)]).generate("a", model, prompt="A: {{ q }}")


def test_one_lease_transaction_covers_several_batches_and_nothing_stays_leased(tmp_path, monkeypatch, counters):
    import lazyllm
    from lazyllm.planner import scheduler

    calls = _count_leases(monkeypatch)
    model = lazyllm.TestModel(batch_size=2)
    df = _job(model, 40).collect(workspace=tmp_path / "ws", progress=False)
    batches = 40 // 2
    assert counters.SUBMISSIONS == [2] * batches and df["a"].null_count() == 0
    window = scheduler.LEASE_AHEAD
    assert len(calls) == -(-batches // window) and calls[0] == 2 * window  # not one per batch
    cache = PromptCache(tmp_path / "ws" / "cache")
    keys = _keys(model, 40)
    assert len(cache.get_many(keys)) == 40  # the keys are the run's: every one computed and committed
    assert cache.leased_elsewhere(keys, "another-host:1:x") == set()


def test_a_failed_run_releases_what_it_leased_ahead(tmp_path, monkeypatch, counters):
    import lazyllm
    from lazyllm.errors import EngineError

    calls = _count_leases(monkeypatch)
    model = lazyllm.TestModel(batch_size=2, raise_on=("question 3",))
    with pytest.raises(EngineError):
        _job(model, 12).collect(workspace=tmp_path / "ws", progress=False)
    assert calls == [2 * 6]  # the whole queue was leased by the first batch's transaction
    cache = PromptCache(tmp_path / "ws" / "cache")
    keys = _keys(model, 12)
    committed = cache.get_many(keys)
    assert len(committed) == 2 * (len(counters.SUBMISSIONS) - 1) < 12  # the batch that raised was not committed
    assert cache.leased_elsewhere(keys, "another-host:1:x") == set()  # nothing left leased: no one waits
    assert cache.lease(keys, "another-host:1:x").acquired == [k for k in keys if k not in committed]
