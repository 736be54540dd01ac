"""The LMDB prompt cache, on real LMDB."""

from __future__ import annotations

import multiprocessing as mp

import msgpack
import pytest

from lazyllm.backends.protocols import Message, Request, Response, SamplingParams
from lazyllm.errors import CacheError
from lazyllm.planner.cache import PromptCache, request_key


def req(text="hi", **params):
    return Request(messages=(Message("user", text),), params=SamplingParams(**params))


def test_key_covers_model_request_params_seed_and_sample_index():
    base = request_key("m", req())
    assert base == request_key("m", req())
    assert len(base) == 32
    assert request_key("m2", req()) != base
    assert request_key("m", req("hello")) != base
    assert request_key("m", req(temperature=0.5)) != base
    assert request_key("m", req(seed=1)) != base
    assert request_key("m", Request(messages=(Message("user", "hi"),), sample_index=1)) != base
    assert request_key("m", Request(messages=(Message("user", "hi"),), choices=("a", "b"))) != base


def test_put_get_and_errors_are_not_cached(tmp_path):
    cache = PromptCache(tmp_path / "c")
    ok = Response(text="hello", input_tokens=3, output_tokens=1)
    bad = Response(text=None, finish_reason="error", error="boom")
    assert cache.put_many([(b"k" * 32, ok), (b"e" * 32, bad)]) == 1
    assert cache.get(b"k" * 32) == ok
    assert cache.get(b"e" * 32) is None
    assert len(cache) == 1
    assert cache.clear() == 1 and len(cache) == 0


def test_values_are_msgpack_not_pickle(tmp_path):
    cache = PromptCache(tmp_path / "c")
    cache.put_many([(b"k" * 32, Response(text="x"))])
    [(key, record)] = list(cache.items())
    assert record["text"] == "x" and record["v"] == 1
    with cache._env.begin(db=cache._db) as txn:
        raw = txn.get(b"k" * 32)
    assert msgpack.unpackb(raw)["text"] == "x"


def test_unknown_format_is_a_clear_error(tmp_path):
    cache = PromptCache(tmp_path / "c")
    with cache._env.begin(db=cache._db, write=True) as txn:
        txn.put(b"z" * 32, msgpack.packb({"v": 99}))
    with pytest.raises(CacheError, match="lazyllm cache clear"):
        cache.get(b"z" * 32)


def _writer(path: str, start: int) -> None:
    cache = PromptCache(path)
    for i in range(start, start + 50):
        cache.put_many([(i.to_bytes(32, "big"), Response(text=str(i)))])


def test_several_processes_share_one_cache(tmp_path):
    path = str(tmp_path / "shared")
    PromptCache(path)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, s)) for s in (0, 50)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cache = PromptCache(path)
    assert len(cache) == 100
    assert cache.get((77).to_bytes(32, "big")).text == "77"


def test_map_full_grows(tmp_path):
    cache = PromptCache(tmp_path / "small", map_size=64 * 1024)
    big = "x" * 4000
    cache.put_many([(i.to_bytes(32, "big"), Response(text=big)) for i in range(100)])
    assert len(cache) == 100
