"""The LMDB prompt cache, on real LMDB."""

from __future__ import annotations

import hashlib
import multiprocessing as mp

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lazyllm.core.protocols import Message, Request, Response, SamplingParams
from lazyllm.errors import CacheError
from lazyllm.planner.cache import CACHE_FORMAT, PromptCache, message_key, repair_cache, request_key, verify_cache


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


# -- damage, verify, repair -----------------------------------------------------------------

def _key(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest()  # spread like real request keys


def _fill(path, n=400):
    cache = PromptCache(path)
    cache.put_many([(_key(i), Response(text=f"answer {i} " + "x" * 200)) for i in range(n)])
    return cache


def test_verify_of_a_sound_cache_is_ok(tmp_path):
    _fill(tmp_path / "c", 50)
    check = verify_cache(tmp_path / "c")
    assert check.ok and check.expected == check.readable == 50 and check.lost == 0


def test_a_damaged_page_is_a_cache_error_that_names_repair(tmp_path, damage_cache):
    _fill(tmp_path / "c")
    damage_cache(tmp_path / "c")
    cache = PromptCache(tmp_path / "c")
    with pytest.raises(CacheError, match="lazyllm cache repair") as info:
        cache.get_many([_key(i) for i in range(400)])
    assert "permissions" not in str(info.value)


def test_verify_and_repair_salvage_every_readable_entry(tmp_path, damage_cache):
    path = tmp_path / "c"
    _fill(path)
    damage_cache(path)
    check = verify_cache(path)
    assert not check.ok and check.errors
    assert check.expected == 400 and check.readable + check.lost == 400
    assert 0 < check.lost <= 40  # about one leaf page of entries
    repaired = repair_cache(path)
    assert repaired.salvaged == check.readable and repaired.lost == check.lost
    assert repaired.kept_at is not None and (repaired.kept_at / "data.mdb").is_file()
    after = verify_cache(path)
    assert after.ok and after.expected == after.readable == repaired.salvaged
    cache = PromptCache(path)
    found = cache.get_many([_key(i) for i in range(400)])
    assert len(found) == repaired.salvaged
    assert all(r.text.startswith(f"answer {i} ") for i in range(400) if (r := found.get(_key(i))))


def test_repair_drops_values_of_an_unknown_format(tmp_path):
    cache = _fill(tmp_path / "c", 10)
    with cache._env.begin(db=cache._db, write=True) as txn:
        txn.put(b"z" * 32, b"\xc1 not msgpack")
    check = verify_cache(tmp_path / "c")
    assert not check.ok and check.bad_values == 1 and check.readable == 10 and not check.errors
    repaired = repair_cache(tmp_path / "c")
    assert repaired.salvaged == 10 and repaired.lost == 1
    assert len(PromptCache(tmp_path / "c")) == 10


# -- growing the map while another process has the environment open -------------------------


def _grow_in_another_process(path: str) -> None:
    cache = PromptCache(path, map_size=64 * 1024)
    cache.put_many([((1000 + i).to_bytes(32, "big"), Response(text="y" * 4000)) for i in range(200)])


def test_a_map_grown_by_another_process_is_adopted(tmp_path):
    path = tmp_path / "shared"
    cache = PromptCache(path, map_size=64 * 1024)
    cache.put_many([(b"a" * 32, Response(text="first"))])
    proc = mp.get_context("spawn").Process(target=_grow_in_another_process, args=(str(path),))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    assert cache._env.info()["map_size"] == 64 * 1024  # this process still has the old size
    assert len(cache) == 201
    assert cache.get((1199).to_bytes(32, "big")).text == "y" * 4000
    cache.put_many([(i.to_bytes(32, "big"), Response(text="z" * 4000)) for i in range(100)])
    assert len(cache) == 301 and cache._env.info()["map_size"] > 64 * 1024


def test_a_damaged_header_is_a_cache_error_and_repair_starts_afresh(tmp_path):
    from lazyllm.planner.cache import _close_env

    path = tmp_path / "ws" / "cache"
    _fill(path, 20)
    _close_env(path)
    data = bytearray((path / "data.mdb").read_bytes())
    data[: 2 * 4096] = b"\xab" * (2 * 4096)  # both meta pages
    (path / "data.mdb").write_bytes(bytes(data))
    with pytest.raises(CacheError, match="lazyllm cache repair --workspace /") as info:
        PromptCache(path)
    assert str(tmp_path / "ws") in str(info.value)
    check = verify_cache(path)
    assert not check.ok and check.expected is None and check.lost is None and check.errors
    repaired = repair_cache(path)
    assert repaired.salvaged == 0 and repaired.lost is None and repaired.kept_at.is_dir()
    assert len(PromptCache(path)) == 0 and verify_cache(path).ok


def test_a_value_without_a_response_record_names_repair(tmp_path):
    cache = PromptCache(tmp_path / "c")
    with cache._env.begin(db=cache._db, write=True) as txn:
        txn.put(b"y" * 32, msgpack.packb({"v": CACHE_FORMAT, "input_tokens": 1}))  # no "text"
    with pytest.raises(CacheError, match="is not a response record.*lazyllm cache repair"):
        cache.get_many([b"y" * 32])


def test_get_many_decodes_each_value_once(tmp_path, monkeypatch):
    import lazyllm.planner.cache as cache_module

    cache = PromptCache(tmp_path / "c")
    keys = [i.to_bytes(32, "big") for i in range(5)]
    cache.put_many([(k, Response(text=f"t{i}", output_tokens=i)) for i, k in enumerate(keys)])
    calls = []
    real = cache_module.msgpack.unpackb
    monkeypatch.setattr(cache_module.msgpack, "unpackb", lambda raw, **kw: calls.append(1) or real(raw, **kw))
    got = cache.get_many(keys + [b"\xff" * 32])
    assert [got[k].text for k in keys] == [f"t{i}" for i in range(5)] and b"\xff" * 32 not in got
    assert [got[k].output_tokens for k in keys] == list(range(5))
    assert len(calls) == 5


_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ["", "\n", '"quoted"', "back\\slash", "tab\tand\r\n", "\x00\x1f\x7f", "é ü 中文 🙂", "\u2028\u2029", "\ud7ff"])


@settings(max_examples=300, deadline=None)
@given(
    messages=st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), _text), max_size=3),
    prompt=st.none() | _text,
    temperature=st.sampled_from([0, 0.0, -0.0, 0.7, 1, 1e-9]),
    top_p=st.sampled_from([1, 1.0, 0.9]),
    max_tokens=st.integers(1, 10**6),
    seed=st.integers(-(2**63), 2**63),
    stop=st.lists(_text.filter(bool), max_size=2).map(tuple),
    sample_index=st.integers(0, 5) | st.just(True),
    choices=st.none() | st.lists(_text.filter(bool), min_size=1, max_size=3).map(tuple),
    json_schema=st.none() | st.sampled_from(['{"type":"object"}', '{"enum":["a","b"]}']),
    model=st.sampled_from(["m" * 64, "", '"\\x\u00e9"', "\x00lazyllm-messages\x00"]),
)
def test_request_key_is_byte_identical_to_dumping_the_whole_payload(messages, prompt, temperature, top_p, max_tokens,
                                                                     seed, stop, sample_index, choices, json_schema,
                                                                     model):
    from lazyllm.planner.cache import _request_key_reference

    params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed, stop=stop)
    for logprobs in ([False, True] if choices else [False]):
        request = Request(messages=tuple(Message(r, c) for r, c in messages), prompt=prompt, params=params,
                          sample_index=sample_index, choices=choices, json_schema=json_schema, logprobs=logprobs)
        assert request_key(model, request) == _request_key_reference(model, request)
        shape = Request(messages=(Message("user", "other"),), prompt=prompt, params=params, sample_index=sample_index,
                        choices=choices, json_schema=json_schema, logprobs=logprobs)
        assert message_key(model, shape, request.messages) == _request_key_reference(model, request)


def test_request_key_of_existing_caches_is_unchanged():
    # the key of a fixed request, as written by every earlier version: existing caches keep hitting
    request = Request(messages=(Message("system", "Be brief."), Message("user", "Say é\n\"x\"")),
                      params=SamplingParams(temperature=0.0, max_tokens=8, seed=3, stop=("\n",)), sample_index=1)
    expected = hashlib.sha256(
        ('{"format":1,"model":"fp","request":{"choices":null,"json_schema":null,"messages":[["system","Be brief."],'
         '["user","Say é\\n\\"x\\""]],"params":{"max_tokens":8,"seed":3,"stop":["\\n"],"temperature":0.0,'
         '"top_p":1.0},"prompt":null,"sample_index":1}}').encode()).digest()
    assert request_key("fp", request) == expected
    assert request_key("fp", Request(messages=request.messages, params=SamplingParams(temperature=0, max_tokens=8,
                                                                                      seed=3, stop=("\n",)),
                                     sample_index=1)) != expected  # 0 and 0.0 are different JSON
