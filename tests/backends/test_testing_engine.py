"""DeterministicEngine: scripted answers, failures, batches, the batch log and the counters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lazyllm.backends import testing
from lazyllm.core.protocols import Engine, Message, Request, Response, SamplingParams
from lazyllm.backends.registry import engine_factory
from lazyllm.backends.testing import DeterministicEngine, request_key
from lazyllm.models import TestModel


@pytest.fixture(autouse=True)
def _fresh_counters():
    testing.reset_counters()
    yield
    testing.reset_counters()


def chat(*contents: str, **params) -> Request:
    roles = ["system", "user"] if len(contents) == 2 else ["user"] * len(contents)
    return Request(messages=tuple(Message(r, c) for r, c in zip(roles, contents)), params=SamplingParams(**params))


def run(engine: DeterministicEngine, requests) -> dict[int, Response]:
    return {i: r for batch in engine.generate(requests) for i, r in batch}


def make(tmp_path: Path, **fields) -> DeterministicEngine:
    return DeterministicEngine(TestModel(**fields), workspace=tmp_path)


def test_registry_returns_the_engine_and_it_satisfies_the_protocol(tmp_path):
    factory = engine_factory("test")
    assert factory is DeterministicEngine
    engine = factory(TestModel(), workspace=tmp_path)
    assert isinstance(engine, Engine)


def test_echo_is_deterministic_and_depends_on_seed_only_when_sampling(tmp_path):
    engine = make(tmp_path)
    requests = [
        chat("Tell me about otters"),
        chat("Tell me about otters", temperature=0.7, seed=5),
        Request(prompt="Tell me about otters", params=SamplingParams(temperature=0.7, seed=5), sample_index=2),
        Request(prompt="Tell me about otters", params=SamplingParams(seed=5), sample_index=2),
    ]
    first, second = run(engine, requests), run(engine, requests)
    assert first == second
    assert [first[i].text for i in range(4)] == [
        "echo[0|greedy]: Tell me about otters",
        "echo[0|5]: Tell me about otters",
        "echo[2|5]: Tell me about otters",
        "echo[2|greedy]: Tell me about otters",
    ]
    assert first[0].input_tokens == 4 and first[0].output_tokens == 5
    assert all(r.finish_reason == "stop" and r.error is None for r in first.values())


def test_echo_keeps_the_first_60_characters_of_the_last_message(tmp_path):
    engine = make(tmp_path)
    long = "x" * 100
    [response] = run(engine, [chat("system prompt", long)]).values()
    assert response.text == "echo[0|greedy]: " + "x" * 60


def test_first_matching_rule_wins_and_rules_see_every_message(tmp_path):
    engine = make(tmp_path, rules=(("France", "Paris"), ("capital", "a city"), ("JUDGE", "score: 9")))
    out = run(engine, [
        chat("What is the capital of France?"),
        chat("What is the capital of Peru?"),
        chat("You are a JUDGE.", "Rate this answer."),
        chat("Nothing matches"),
    ])
    assert [out[i].text for i in range(4)] == ["Paris", "a city", "score: 9", "echo[0|greedy]: Nothing matches"]


def test_fail_on_gives_an_error_response_and_the_rest_of_the_batch_succeeds(tmp_path):
    engine = make(tmp_path, fail_on=("explode",), name="fragile")
    out = run(engine, [chat("fine"), chat("please explode now"), chat("also fine")])
    assert out[1].finish_reason == "error" and out[1].text is None
    assert "explode" in out[1].error and "fragile" in out[1].error
    assert out[0].text.endswith("fine") and out[2].text.endswith("also fine")


def test_stop_strings_and_max_tokens_shape_the_answer(tmp_path):
    engine = make(tmp_path, rules=(("story", "once upon a time there was a fox. The end"),))
    out = run(engine, [
        chat("story", stop=(".",)),
        chat("story", max_tokens=3),
        chat("story", stop=("The end",), max_tokens=100),
    ])
    assert (out[0].text, out[0].finish_reason) == ("once upon a time there was a fox", "stop")
    assert (out[1].text, out[1].output_tokens, out[1].finish_reason) == ("once upon a", 3, "length")
    assert out[2].text == "once upon a time there was a fox." and out[2].finish_reason == "stop"


def test_choices_are_not_enforced(tmp_path):
    engine = make(tmp_path, rules=(("Is it good?", "maybe"),))
    request = Request(messages=(Message("user", "Is it good?"),), choices=("yes", "no"))
    assert run(engine, [request])[0].text == "maybe"


def test_batches_follow_the_given_order_and_batch_size(tmp_path):
    engine = make(tmp_path, batch_size=2)
    requests = [chat(f"q{i}") for i in range(5)]
    batches = [[i for i, _ in batch] for batch in engine.generate(requests)]
    assert batches == [[0, 1], [2, 3], [4]]
    assert testing.BATCHES == [2, 2, 1]
    assert list(engine.generate([])) == []


def test_counters_count_requests_batches_and_submissions(tmp_path):
    engine = make(tmp_path, batch_size=3)
    run(engine, [chat(f"q{i}") for i in range(7)])
    run(engine, [chat("one more")])
    assert testing.CALLS == 8
    assert testing.BATCHES == [3, 3, 1, 1]
    assert testing.SUBMISSIONS == [7, 1]
    testing.reset_counters()
    assert (testing.CALLS, testing.BATCHES, testing.SUBMISSIONS) == (0, [], [])


def test_counters_only_count_batches_that_ran(tmp_path):
    engine = make(tmp_path, batch_size=2)
    stream = engine.generate([chat(f"q{i}") for i in range(6)])
    next(stream)
    stream.close()  # the consumer stopped (for example Ctrl-C) after one batch
    assert testing.CALLS == 2 and testing.BATCHES == [2] and testing.SUBMISSIONS == [6]


def test_delay_sleeps_once_per_batch(tmp_path, monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(testing.time, "sleep", slept.append)
    engine = make(tmp_path, batch_size=2, delay=0.25)
    run(engine, [chat(f"q{i}") for i in range(3)])
    assert slept == [0.25, 0.25]


def test_log_path_gets_one_complete_json_line_per_batch(tmp_path):
    log = tmp_path / "logs" / "calls.jsonl"
    engine = make(tmp_path, batch_size=2, log_path=str(log))
    requests = [chat(f"q{i}") for i in range(3)]
    run(engine, requests)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["n"] for line in lines] == [2, 1]
    assert all(line["pid"] == os.getpid() for line in lines)
    assert [k for line in lines for k in line["keys"]] == [request_key(r) for r in requests]
    assert log.read_text().endswith("\n")


def test_request_key_is_a_hash_of_the_canonical_request():
    a = chat("same", temperature=0.5, seed=1)
    assert request_key(a) == request_key(chat("same", temperature=0.5, seed=1))
    assert request_key(a) != request_key(chat("same", temperature=0.5, seed=2))
    assert len(request_key(a)) == 64


def test_log_lines_from_two_processes_append_to_one_file(tmp_path):
    log = tmp_path / "calls.jsonl"
    script = (
        "from pathlib import Path\n"
        "from lazyllm.backends.testing import DeterministicEngine\n"
        "from lazyllm.core.protocols import Request\n"
        "from lazyllm.models import TestModel\n"
        f"engine = DeterministicEngine(TestModel(batch_size=1, log_path={str(log)!r}), workspace=Path('.'))\n"
        "for _ in engine.generate([Request(prompt='child a'), Request(prompt='child b')]): pass\n"
    )
    make(tmp_path, log_path=str(log)).generate([Request(prompt="parent")]).__next__()
    subprocess.run([sys.executable, "-c", script], check=True)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["n"] for line in lines] == [1, 1, 1]
    assert len({line["pid"] for line in lines}) == 2
    assert lines[1]["keys"] == [request_key(Request(prompt="child a"))]


def test_close_marks_the_engine_closed(tmp_path):
    engine = make(tmp_path)
    engine.close()
    assert engine.closed
