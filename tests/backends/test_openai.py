"""OpenAIEngine: request bodies and answers, retries under injected faults, batch mode, a real server.

Servers used here, all on 127.0.0.1 and stopped by the tests:

- ``FakeAPI``: a small stdlib server for the protocol parts no local server implements
  (the files and batches endpoints of the Batch API), plus an echoing
  ``/v1/chat/completions`` used as an upstream when vLLM is not installed.
- ``FaultProxy``: sits in front of an upstream and answers 429/500/503/400, delays
  past the timeout or drops the connection, on a deterministic schedule keyed by the
  row number in the prompt and the attempt; it counts every request it sees.
- a real ``vLLM`` OpenAI-compatible server (``python -m vllm.entrypoints.openai.api_server``
  from ``.venv-vllm``) serving SmolLM2-135M-Instruct, started once per session; the
  tests that need it are marked ``server`` and skip when ``.venv-vllm`` has no vLLM
  (install it with ``bash scripts/install_vllm.sh``).
"""

from __future__ import annotations

import doctest
import email.parser
import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("openai", reason="the OpenAI engine needs the openai package: pip install -e '.[openai]'")

import polars as pl  # noqa: E402

import lazyllm  # noqa: E402
from lazyllm.backends import answers as answers_module  # noqa: E402
from lazyllm.core import prices as prices_module  # noqa: E402
from lazyllm.core.errors import EngineError, LazyLLMError, PlanError  # noqa: E402
from lazyllm.backends.openai_api import (  # noqa: E402
    CHOICE_WRAPPER_TOKENS,
    OpenAIEngine,
    _logprob_response,
    batch_record_path,
)
from lazyllm.core.protocols import Engine, Message, Request, Response, SamplingParams  # noqa: E402
from lazyllm.backends.registry import engine_factory  # noqa: E402
from lazyllm.backends.vllm_server import serve  # noqa: E402
from lazyllm.models import OpenAI, Transformers  # noqa: E402
from lazyllm.planner.executor import model_fingerprint  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SECRET = "sk-lazyllm-test-secret-0123456789"


def ask(question: str, **params: Any) -> Request:
    return Request(messages=(Message("user", question),), params=SamplingParams(**params))


def run(engine: Any, requests: list[Request]) -> dict[int, Response]:
    out: dict[int, Response] = {}
    for group in engine.generate(requests):
        for i, response in group:
            assert i not in out, "every index is yielded exactly once"
            out[i] = response
    assert sorted(out) == list(range(len(requests)))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- test servers


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: Any = None

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.owner.handle(self, "GET", self.path, b"")

    def do_POST(self) -> None:
        self.owner.handle(self, "POST", self.path, self.body())


class _Running:
    """Serve ``owner.handle`` on 127.0.0.1 in a thread; ``stop()`` shuts it down."""

    def __init__(self, owner: Any) -> None:
        handler = type("Handler", (_Handler,), {"owner": owner})
        self.server = _Server(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def chat_completion(text: str, prompt_tokens: int, completion_tokens: int, finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": "fake",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def echo_answer(body: dict[str, Any]) -> dict[str, Any]:
    """The fake model: ``echo: <last message>``, one token per word; honours choices in both dialects."""
    last = body["messages"][-1]["content"]
    structured = (body.get("structured_outputs") or {}).get("choice")
    fmt = body.get("response_format") or {}
    if structured:
        text = structured[-1]
    elif fmt.get("type") == "json_schema" and fmt["json_schema"]["name"] == "lazyllm_choice":
        text = json.dumps({"answer": fmt["json_schema"]["schema"]["properties"]["answer"]["enum"][0]})
    else:
        text = f"echo: {last}"
    return chat_completion(text, len(last.split()), len(text.split()))


class FakeAPI:
    """Files + batches endpoints of the OpenAI Batch API, an echo chat endpoint and /v1/models.

    A batch goes validating -> in_progress -> completed, one step per retrieve, while
    ``hold`` is False; ``fail_batches`` ends batches as ``failed``; custom ids in
    ``line_errors`` get an HTTP 500 line in the error file.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.calls: Counter[str] = Counter()
        self.hold = False
        self.fail_batches = False
        self.line_errors: set[str] = set()
        self.running = _Running(self)

    @property
    def url(self) -> str:
        return self.running.url

    def handle(self, h: _Handler, method: str, path: str, body: bytes) -> None:
        route = re.sub(r"(file|batch)-\d+", r"\1-ID", path)
        with self.lock:
            self.calls[f"{method} {route}"] += 1
        if method == "GET" and path == "/v1/models":
            return h.send(200, {"object": "list", "data": [{"id": "fake", "object": "model", "created": 0,
                                                             "owned_by": "lazyllm-tests"}]})
        if method == "POST" and path == "/v1/chat/completions":
            return h.send(200, echo_answer(json.loads(body)))
        if method == "POST" and path == "/v1/files":
            message = email.parser.BytesParser().parsebytes(
                b"Content-Type: " + h.headers["Content-Type"].encode() + b"\r\n\r\n" + body)
            parts = {p.get_param("name", header="content-disposition"): p for p in message.get_payload()}
            assert parts["purpose"].get_payload(decode=True) == b"batch"
            with self.lock:
                file_id = f"file-{len(self.files) + 1}"
                self.files[file_id] = parts["file"].get_payload(decode=True)
            return h.send(200, self._file(file_id, parts["file"].get_filename() or "upload.jsonl"))
        if method == "POST" and path == "/v1/batches":
            request = json.loads(body)
            assert request["endpoint"] == "/v1/chat/completions" and request["completion_window"] == "24h"
            with self.lock:
                batch_id = f"batch-{len(self.batches) + 1}"
                self.batches[batch_id] = {
                    "id": batch_id, "object": "batch", "endpoint": request["endpoint"],
                    "input_file_id": request["input_file_id"], "completion_window": "24h", "status": "validating",
                    "created_at": int(time.time()), "metadata": request.get("metadata"),
                }
                return h.send(200, self.batches[batch_id])
        match = re.fullmatch(r"/v1/batches/(batch-\d+)", path)
        if method == "GET" and match:
            with self.lock:
                batch = self.batches.get(match.group(1))
                if batch is None:
                    return h.send(404, {"error": {"message": "no such batch", "type": "invalid_request_error"}})
                if not self.hold and batch["status"] not in ("completed", "failed"):
                    batch["status"] = {"validating": "in_progress"}.get(batch["status"], "completed")
                    if batch["status"] == "completed":
                        self._finish(batch)
                return h.send(200, batch)
        match = re.fullmatch(r"/v1/files/(file-\d+)/content", path)
        if method == "GET" and match and match.group(1) in self.files:
            return h.send(200, self.files[match.group(1)])
        h.send(404, {"error": {"message": f"not found: {method} {path}", "type": "invalid_request_error"}})

    def _file(self, file_id: str, name: str) -> dict[str, Any]:
        return {"id": file_id, "object": "file", "bytes": len(self.files[file_id]), "created_at": 0,
                "filename": name, "purpose": "batch", "status": "processed"}

    def _finish(self, batch: dict[str, Any]) -> None:
        lines = [json.loads(x) for x in self.files[batch["input_file_id"]].decode().splitlines() if x.strip()]
        out, errors = [], []
        for k, line in enumerate(lines):
            if self.fail_batches and k % 2:  # a failed batch still has some results
                continue
            if line["custom_id"] in self.line_errors:
                errors.append({"id": f"r{k}", "custom_id": line["custom_id"], "response": {
                    "status_code": 500, "body": {"error": {"message": "injected line error"}}}, "error": None})
                continue
            out.append({"id": f"r{k}", "custom_id": line["custom_id"],
                        "response": {"status_code": 200, "body": echo_answer(line["body"])}, "error": None})
        if self.fail_batches:
            batch["status"] = "failed"
        for key, rows in (("output_file_id", out), ("error_file_id", errors)):
            if rows:
                file_id = f"file-{len(self.files) + 1}"
                self.files[file_id] = "".join(json.dumps(r) + "\n" for r in rows).encode()
                batch[key] = file_id

    def stop(self) -> None:
        self.running.stop()


class FaultProxy:
    """Forwards to ``upstream``, injecting faults on a deterministic schedule.

    ``schedule(row, attempt)`` returns None (forward) or one of ``"429"``, ``"500"``,
    ``"503"``, ``"400"`` (answer that status), ``"delay"`` (wait ``delay`` seconds, past
    the client's timeout, then close without answering) and ``"drop"`` (close the
    connection without answering). The row is the number in ``row <k>`` in the last
    message; ``attempt`` counts from 1 per row. Every request is recorded.
    """

    def __init__(self, upstream: str, schedule: Any = None, delay: float = 0.0, headers: Any = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.schedule = schedule or (lambda row, attempt: None)
        self.headers = headers  # optional: () -> headers added to every forwarded answer
        self.delay = delay
        self.lock = threading.Lock()
        self.attempts: Counter[int] = Counter()
        self.log: list[tuple[int | None, int, str | None]] = []  # (row, attempt, fault)
        self.forwarded: dict[int, list[str]] = {}  # row -> texts of the answers passed back
        self.requests = 0
        self.running = _Running(self)

    @property
    def url(self) -> str:
        return self.running.url

    def handle(self, h: _Handler, method: str, path: str, body: bytes) -> None:
        row, attempt, fault = None, 0, None
        if method == "POST":
            found = re.search(r"\brow (\d+)\b", json.dumps(json.loads(body).get("messages", "")))
            with self.lock:
                self.requests += 1
                if found:
                    row = int(found.group(1))
                    self.attempts[row] += 1
                    attempt = self.attempts[row]
                    fault = (self.schedule(row, attempt, json.loads(body)) if getattr(self.schedule, "reads_body", False)
                             else self.schedule(row, attempt))
                self.log.append((row, attempt, fault))
        if fault in ("429", "500", "503", "400"):
            return h.send(int(fault), {"error": {"message": f"injected {fault}", "type": "injected"}},
                          {"Retry-After": "0"} if fault == "429" else None)
        if fault in ("delay", "drop"):
            if fault == "delay":
                time.sleep(self.delay)
            h.close_connection = True
            return None
        request = urllib.request.Request(self.upstream + path[len("/v1"):], data=body if method == "POST" else None,
                                         method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as answer:
                status, data = answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            status, data = exc.code, exc.read()
        if row is not None and status == 200:
            with self.lock:
                self.forwarded.setdefault(row, []).append(json.loads(data)["choices"][0]["message"]["content"])
                if hasattr(self.schedule, "settle"):  # a limit that settles on the reported usage
                    self.schedule.settle(row, json.loads(data)["usage"])
        h.send(status, data, self.headers() if self.headers is not None else None)

    def stop(self) -> None:
        self.running.stop()


@pytest.fixture
def fake_api() -> Iterator[FakeAPI]:
    api = FakeAPI()
    yield api
    api.stop()


# --------------------------------------------------------------------------- the real vLLM server


def _vllm_python() -> Path | None:
    from lazyllm.backends.vllm_engine import find_vllm_python

    return find_vllm_python()


@pytest.fixture(scope="session")
def vllm_server(model_workspace) -> Iterator[str]:
    """A local vLLM OpenAI-compatible server (:func:`lazyllm.backends.vllm_server.serve`, from
    .venv-vllm) serving SmolLM2 (float32) on 127.0.0.1 as ``smollm2``.

    Started once per session (about 30-60 s on 2 cores) and stopped at the end; its
    log tail is in the error when it fails to start.
    """
    if _vllm_python() is None:
        pytest.skip("vLLM is not installed in .venv-vllm (or $LAZYLLM_VLLM_PYTHON): run bash scripts/install_vllm.sh")
    from lazyllm.core.model_store import resolve_model_dir

    folder = resolve_model_dir(Transformers(), model_workspace.path)
    with serve(folder, dtype="float32", served_model_name="smollm2", gpu_memory_utilization=0.5,
               log_path=model_workspace.path / f"vllm-server-{os.getpid()}.log", timeout_s=300) as url:
        yield url


# --------------------------------------------------------------------------- spec, secrets, registry


def test_registry_and_construction_connect_nothing(tmp_path):
    assert engine_factory("openai") is OpenAIEngine
    engine = OpenAIEngine(OpenAI("gpt-4o-mini", base_url="http://127.0.0.1:9/v1"), workspace=tmp_path)
    assert isinstance(engine, Engine)
    assert list(engine.generate([])) == []
    assert engine._loop is None  # nothing started, nothing connected
    engine.close()  # idempotent, also before any start


def test_api_key_never_enters_identity_repr_or_fingerprint(monkeypatch):
    with_key = OpenAI("gpt-4o-mini", api_key=SECRET)
    other_key = OpenAI("gpt-4o-mini", api_key="sk-another", api_key_env="OTHER", concurrency=2, timeout=5.0,
                       max_retries=0, batch=True, price_per_million=(1, 2))
    assert SECRET not in repr(with_key) and SECRET not in str(with_key.identity())
    assert model_fingerprint(with_key) == model_fingerprint(other_key) == model_fingerprint(OpenAI("gpt-4o-mini"))
    assert model_fingerprint(OpenAI("gpt-4o-mini", base_url="http://127.0.0.1:8000/v1/")) != model_fingerprint(with_key)
    assert model_fingerprint(OpenAI("gpt-4o-mini", guided="vllm")) != model_fingerprint(with_key)
    assert OpenAI("m", base_url="http://h/v1/").base_url == "http://h/v1"


def test_api_key_stays_out_of_logs_cache_and_run_logs(fake_api, tmp_path, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    spec = OpenAI("fake", base_url=fake_api.url, api_key=SECRET)
    df = lazyllm.from_dicts([{"q": "row 1 hello"}]).generate("a", spec, prompt="{{ q }}", max_tokens=8)
    out = df.collect(workspace=tmp_path / "ws")
    assert out["a"].to_list() == ["echo: row 1 hello"]
    for path in (tmp_path / "ws").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in caplog.text


def test_spec_validation_names_the_problem():
    with pytest.raises(PlanError, match="guided must be one of"):
        OpenAI("m", guided="outlines")
    with pytest.raises(PlanError, match="http"):
        OpenAI("m", base_url="localhost:8000")
    with pytest.raises(PlanError, match="concurrency"):
        OpenAI("m", concurrency=0)
    with pytest.raises(PlanError, match="price_per_million"):
        OpenAI("m", price_per_million=(1.0,))
    assert OpenAI("m").batch_size == 256 and OpenAI("m", batch=True).batch_size == 50_000


def test_prices_are_data_and_overridable():
    assert prices_module.lookup_price("gpt-4o-mini-2024-07-18") == prices_module.PRICES["gpt-4o-mini"]
    assert OpenAI("gpt-4o").prices() == prices_module.PRICES["gpt-4o"]
    assert OpenAI("gpt-4o", price_per_million=(1, 3)).prices() == (1.0, 3.0)
    assert OpenAI("gpt-4o", base_url="http://127.0.0.1:8000/v1").prices() is None
    assert OpenAI("unknown-model").prices() is None
    for module in (prices_module, answers_module):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0


def test_missing_key_for_openai_raises_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    engine = OpenAIEngine(OpenAI("gpt-4o-mini"), workspace=tmp_path)
    with pytest.raises(EngineError, match="OPENAI_API_KEY") as info:
        next(iter(engine.generate([ask("hi")])))
    assert isinstance(info.value, LazyLLMError)


# --------------------------------------------------------------------------- request bodies and answers


def test_request_bodies(tmp_path):
    engine = OpenAIEngine(OpenAI("m", base_url="http://127.0.0.1:9/v1"), workspace=tmp_path)
    sampled = Request(messages=(Message("system", "s"), Message("user", "u")), sample_index=2,
                      params=SamplingParams(temperature=0.7, top_p=0.9, max_tokens=12, seed=5, stop=("\n",)))
    endpoint, body, extra = engine._body(sampled, None)
    assert endpoint == "chat" and extra == {}
    assert body == {"model": "m", "temperature": 0.7, "top_p": 0.9, "n": 1, "seed": sampled.seed(),
                    "stop": ["\n"], "max_tokens": 12,
                    "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}
    _, greedy, _ = engine._body(ask("u", max_tokens=3), None)
    assert "seed" not in greedy and "top_p" not in greedy and greedy["temperature"] == 0.0
    endpoint, raw, _ = engine._body(Request(prompt="The capital is"), None)
    assert endpoint == "completions" and raw["prompt"] == "The capital is"
    official = OpenAIEngine(OpenAI("gpt-4o-mini"), workspace=tmp_path)
    assert official._body(ask("u", max_tokens=3), None)[1]["max_completion_tokens"] == 3


def test_constraint_dialects(tmp_path):
    engine = OpenAIEngine(OpenAI("m", base_url="http://127.0.0.1:9/v1"), workspace=tmp_path)
    choice = Request(messages=(Message("user", "ok?"),), choices=("yes", "no"), params=SamplingParams(max_tokens=4))
    schema = '{"properties":{"x":{"type":"integer"}},"required":["x"],"type":"object"}'
    shaped = Request(messages=(Message("user", "x?"),), json_schema=schema, params=SamplingParams(max_tokens=20))
    _, body, extra = engine._body(choice, "vllm")
    assert extra == {"structured_outputs": {"choice": ["yes", "no"]}} and "response_format" not in body
    _, body, extra = engine._body(shaped, "vllm")
    assert extra == {"structured_outputs": {"json": json.loads(schema)}}
    _, body, extra = engine._body(choice, "openai")
    assert extra == {} and body["max_tokens"] == 4 + CHOICE_WRAPPER_TOKENS
    assert body["response_format"]["json_schema"]["schema"]["properties"]["answer"]["enum"] == ["yes", "no"]
    _, body, _ = engine._body(shaped, "openai")
    assert body["response_format"]["json_schema"]["schema"] == json.loads(schema)
    legacy = OpenAIEngine(OpenAI("m", base_url="http://127.0.0.1:9/v1", guided_legacy_fields=True), workspace=tmp_path)
    assert legacy._body(choice, "vllm")[2]["guided_choice"] == ["yes", "no"]
    with pytest.raises(ValueError, match="need chat messages"):
        engine._body(Request(prompt="x", choices=("a",)), "openai")


def test_answers_are_checked_against_their_constraint(tmp_path):
    engine = OpenAIEngine(OpenAI("m", base_url="http://127.0.0.1:9/v1"), workspace=tmp_path)
    choice = Request(messages=(Message("user", "ok?"),), choices=("yes", "no"))
    shaped = Request(messages=(Message("user", "x?"),), json_schema='{"type":"object","required":["x"]}')
    usage = {"prompt_tokens": 3, "completion_tokens": 2}
    assert engine._response(choice, '{"answer": "no"}', "stop", usage, "openai").text == "no"
    assert engine._response(choice, "yes", "stop", usage, "vllm") == Response(
        text="yes", input_tokens=3, output_tokens=2, finish_reason="stop")
    bad = engine._response(choice, "maybe", "stop", usage, "vllm")
    assert bad.finish_reason == "error" and "not one of the choices" in bad.error and bad.output_tokens == 2
    assert "does not match" in engine._response(shaped, '{"y": 1}', "stop", usage, "openai").error
    assert engine._response(shaped, '{"x": 1}', "stop", usage, "openai").text == '{"x": 1}'
    cut = engine._response(shaped, '{"x": ', "length", usage, "openai")
    assert (cut.text, cut.finish_reason) == ('{"x": ', "length")  # partial, as the transformers engine
    assert engine._response(ask("q"), "  free text \n", "stop", usage, None).text == "free text"
    assert engine._response(ask("q"), None, "content_filter", usage, None).finish_reason == "error"


def test_logprob_requests_are_greedy_unconstrained_with_top_logprobs(tmp_path):
    engine = OpenAIEngine(OpenAI("m", base_url="http://127.0.0.1:9/v1"), workspace=tmp_path)
    scored = Request(messages=(Message("user", "rate"),), choices=("1", "2", "10"), logprobs=True,
                     params=SamplingParams(temperature=0.7, max_tokens=4, seed=3))
    endpoint, body, extra = engine._body(scored, "vllm")
    assert endpoint == "chat" and extra == {} and "response_format" not in body and "seed" not in body
    assert body["logprobs"] is True and body["top_logprobs"] == 20 and body["temperature"] == 0.0
    _, raw, _ = engine._body(Request(prompt="rate", choices=("1", "2"), logprobs=True), None)
    assert raw["logprobs"] == 20
    top = lambda **kv: [{"token": k, "logprob": math.log(v)} for k, v in kv.items()]  # noqa: E731
    result = {"content": [{"token": "1", "logprob": math.log(0.6), "top_logprobs": top(**{"1": 0.6, "2": 0.2})},
                          {"token": "0", "logprob": math.log(0.25), "top_logprobs": top(**{"0": 0.25, ".": 0.2})}]}
    r = _logprob_response(scored, result, "chat", {"prompt_tokens": 5, "completion_tokens": 2})
    assert [round(math.exp(v), 3) for v in r.choice_logprobs] == [0.45, 0.2, 0.15] and r.text == "1"
    missing = _logprob_response(scored, {"content": []}, "chat", {})
    assert missing.finish_reason == "error" and "no log-probabilities" in missing.error


def test_a_model_without_logprobs_is_refused_when_the_plan_is_built(tmp_path):
    frame = lazyllm.from_dicts([{"q": "x", "a": "y", "b": "z"}])
    reasoning = OpenAI("o3-mini", api_key="sk-x")
    assert not reasoning.supports_logprobs() and OpenAI("gpt-4o-mini").supports_logprobs()
    assert not OpenAI("smollm2", base_url="http://127.0.0.1:9/v1", logprobs=False).supports_logprobs()
    with pytest.raises(PlanError, match="needs log-probabilities.*method='argmax'"):
        frame.judge("s", reasoning, question="q", answer="a", method="expected")
    with pytest.raises(PlanError, match="method='strict'"):
        frame.judge_pairwise("w", reasoning, a="a", b="b", question="q")
    frame.judge_pairwise("w", reasoning, a="a", b="b", question="q", method="strict")  # no logprobs needed
    assert reasoning.identity() == OpenAI("o3-mini", logprobs=False).identity()  # not fingerprinted


# --------------------------------------------------------------------------- faults, against a stub or vLLM


def _schedule(row: int, attempt: int) -> str | None:
    """Faults per row: most rows fail once then pass; row 9 twice; row 10 always; row 11 is a bad request."""
    first = {1: "429", 2: "500", 3: "delay", 4: "drop", 7: "503", 8: "429"}
    if row == 9:
        return {1: "drop", 2: "429"}.get(attempt)
    if row == 10:
        return "500"
    if row == 11:
        return "400"
    return first.get(row) if attempt == 1 else None


EXPECTED_RETRIES = {"429": 3, "500": 3, "503": 1, "timeout": 1, "connection": 2}
EXPECTED_ATTEMPTS = {0: 1, 1: 2, 2: 2, 3: 2, 4: 2, 5: 1, 6: 1, 7: 2, 8: 2, 9: 3, 10: 3, 11: 1}


@pytest.fixture(params=["stub", pytest.param("vllm", marks=pytest.mark.server)])
def upstream(request, fake_api) -> tuple[str, str]:
    """(base_url, model id) of the server behind the fault proxy: the echo stub, or real vLLM."""
    if request.param == "stub":
        return fake_api.url, "fake"
    return request.getfixturevalue("vllm_server"), "smollm2"


def test_faults_every_row_ends_with_a_result_or_an_error_and_retries_are_counted(upstream, tmp_path):
    base_url, model = upstream
    timeout = 4.0
    proxy = FaultProxy(base_url, _schedule, delay=timeout + 1.5)
    try:
        spec = OpenAI(model, base_url=proxy.url, concurrency=6, timeout=timeout, max_retries=2,
                      backoff=0.05, max_backoff=0.2)
        requests = [ask(f"Say one word about row {k}.", max_tokens=8) for k in range(12)]
        with OpenAIEngine(spec, workspace=tmp_path) as engine:
            out = run(engine, requests)
        # every row: one answer from the server (rows 0-9) or a recorded error (rows 10, 11)
        for k in range(10):
            assert out[k].error is None and out[k].text, (k, out[k])
            assert proxy.forwarded[k] == [proxy.forwarded[k][0]], "answered once: nothing duplicated"
            assert out[k].text == proxy.forwarded[k][0].strip(), "the row got its own answer"
        assert 10 not in proxy.forwarded and 11 not in proxy.forwarded
        assert "after 3 attempts" in out[10].error and "HTTP 500" in out[10].error
        assert "HTTP 400" in out[11].error and out[11].text is None
        # nothing lost: the proxy saw exactly the attempts the schedule implies
        assert dict(proxy.attempts) == EXPECTED_ATTEMPTS
        assert proxy.requests == sum(EXPECTED_ATTEMPTS.values())
        assert dict(engine.stats["retries"]) == EXPECTED_RETRIES
        assert engine.stats["http_calls"] == proxy.requests
        assert engine.stats["requests"] == 12 and engine.stats["errors"] == 2
        assert engine.stats["output_tokens"] == sum(r.output_tokens for r in out.values()) > 0
    finally:
        proxy.stop()


class _RejectKeys:
    """A server that answers every completion with HTTP 401."""

    def __init__(self) -> None:
        self.requests = 0
        self.running = _Running(self)

    def handle(self, h: _Handler, method: str, path: str, body: bytes) -> None:
        self.requests += 1
        h.send(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})


def test_a_rejected_key_stops_the_engine(tmp_path):
    server = _RejectKeys()
    try:
        engine = OpenAIEngine(OpenAI("fake", base_url=server.running.url, api_key=SECRET, concurrency=1),
                              workspace=tmp_path)
        with pytest.raises(EngineError, match="HTTP 401") as info:
            run(engine, [ask(f"row {k}") for k in range(3)])
        assert SECRET not in str(info.value) and "API key" in str(info.value)
        assert engine.stats["retries"] == Counter()  # not retried
        engine.close()
    finally:
        server.running.stop()


def test_results_are_yielded_as_they_complete(fake_api, tmp_path):
    spec = OpenAI("fake", base_url=fake_api.url, concurrency=2)
    with OpenAIEngine(spec, workspace=tmp_path) as engine:
        groups = [len(g) for g in engine.generate([ask(f"row {k}") for k in range(7)])]
    assert sum(groups) == 7 and max(groups) <= 2 and len(groups) >= 4


def test_a_session_takes_requests_while_others_run(fake_api, tmp_path):
    spec = OpenAI("fake", base_url=fake_api.url, concurrency=2)
    with OpenAIEngine(spec, workspace=tmp_path) as engine:
        session = engine.session()
        assert session.continuous and session.capacity == spec.batch_size
        first = session.submit([ask(f"row {k}") for k in range(3)])
        got = []
        while not got:
            got += session.poll()
        later = session.submit([ask(f"row {k}") for k in range(3, 5)])  # while the first ones run
        while len(got) < 5:
            got += session.poll(timeout=5)
        session.close()
    assert sorted(t for t, _ in got) == sorted(first + later)
    assert all(r.error is None and r.text for _, r in got)
    assert session.poll() == []
    assert OpenAIEngine(_batch_spec(fake_api.url), workspace=tmp_path).session() is None  # batch mode: generate


# --------------------------------------------------------------------------- batch mode


def _batch_spec(url: str) -> OpenAI:
    return OpenAI("fake", base_url=url, batch=True, poll_interval=0.02, api_key=SECRET)


def test_batch_mode_uploads_polls_and_maps_results_by_custom_id(fake_api, tmp_path):
    requests = [ask(f"row {k}", max_tokens=8) for k in range(5)] + [ask("row 1", max_tokens=8)]  # a duplicate
    with OpenAIEngine(_batch_spec(fake_api.url), workspace=tmp_path) as engine:
        out = run(engine, requests)
    assert [out[k].text for k in range(6)] == [f"echo: row {k}" for k in range(5)] + ["echo: row 1"]
    assert out[0].input_tokens == 2 and out[0].output_tokens == 3
    uploaded = [json.loads(x) for x in fake_api.files["file-1"].decode().splitlines()]
    assert len(uploaded) == 5  # one line per distinct request
    assert {line["url"] for line in uploaded} == {"/v1/chat/completions"}
    assert fake_api.calls["POST /v1/batches"] == 1 and engine.stats["batches_created"] == 1
    records = list((tmp_path / "batches").glob("*.json"))
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert record["batch_id"] == "batch-1" and record["status"] == "completed"
    assert SECRET not in records[0].read_text()

    # the same requests again (say, after `lazyllm cache clear`): the recorded batch is read, not paid twice
    with OpenAIEngine(_batch_spec(fake_api.url), workspace=tmp_path) as engine:
        again = run(engine, requests)
    assert again == out
    assert fake_api.calls["POST /v1/batches"] == 1 and fake_api.calls["POST /v1/files"] == 1
    assert engine.stats["batches_resumed"] == 1 and engine.stats["batches_created"] == 0


_CRASHING_RUN = """
import sys
from pathlib import Path
from lazyllm.models import OpenAI
from lazyllm.backends.openai_api import OpenAIEngine
from lazyllm.core.protocols import Message, Request, SamplingParams
spec = OpenAI("fake", base_url=sys.argv[1], batch=True, poll_interval=0.05)
requests = [Request(messages=(Message("user", f"row {k}"),), params=SamplingParams(max_tokens=8)) for k in range(4)]
for group in OpenAIEngine(spec, workspace=Path(sys.argv[2])).generate(requests):
    print(group)
"""


def test_batch_mode_resumes_the_recorded_batch_after_a_kill(fake_api, tmp_path):
    fake_api.hold = True  # the batch stays in progress: the first run polls until it is killed
    workspace = tmp_path / "ws"
    env = {**os.environ, "OPENAI_API_KEY": SECRET}
    proc = subprocess.Popen([sys.executable, "-c", _CRASHING_RUN, fake_api.url, str(workspace)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not list((workspace / "batches").glob("*.json")) or fake_api.calls["GET /v1/batches/batch-ID"] < 2:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "the first run never recorded its batch"
            time.sleep(0.05)
    finally:
        proc.kill()  # kill -9 while polling
        proc.wait(timeout=30)
    assert fake_api.calls["POST /v1/batches"] == 1
    fake_api.hold = False
    requests = [ask(f"row {k}", max_tokens=8) for k in range(4)]
    with OpenAIEngine(_batch_spec(fake_api.url), workspace=workspace) as engine:
        out = run(engine, requests)
    assert [out[k].text for k in range(4)] == [f"echo: row {k}" for k in range(4)]
    assert fake_api.calls["POST /v1/batches"] == 1 and fake_api.calls["POST /v1/files"] == 1  # not paid twice
    assert engine.stats["batches_resumed"] == 1 and engine.stats["batches_created"] == 0


def test_a_failed_batch_yields_what_it_has_and_is_submitted_again_next_time(fake_api, tmp_path):
    fake_api.fail_batches = True
    requests = [ask(f"row {k}", max_tokens=8) for k in range(4)]
    spec = _batch_spec(fake_api.url)
    line_error = OpenAIEngine(spec, workspace=tmp_path)
    fake_api.line_errors = {__import__("lazyllm.backends.openai_batch", fromlist=["x"])._request_id(
        spec.identity(), requests[2])}
    out = run(line_error, requests)
    line_error.close()
    assert out[0].text == "echo: row 0" and out[2].error and "HTTP 500" in out[2].error
    assert "status 'failed'" in out[1].error and "status 'failed'" in out[3].error
    assert list((tmp_path / "batches").glob("*.json")) == []  # the next run submits a new batch
    fake_api.fail_batches = False
    fake_api.line_errors = set()
    with OpenAIEngine(spec, workspace=tmp_path) as engine:
        again = run(engine, requests)
    assert all(again[k].text == f"echo: row {k}" for k in range(4))
    assert fake_api.calls["POST /v1/batches"] == 2


def test_batch_record_path_is_in_the_workspace(tmp_path):
    assert batch_record_path(tmp_path, "abc") == tmp_path / "batches" / "abc.json"


# --------------------------------------------------------------------------- the real server


@pytest.mark.server
def test_vllm_server_answers_in_the_shape_of_the_transformers_engine(vllm_server, model_workspace):
    from lazyllm.backends.transformers import TransformersEngine

    requests = [ask("What is the capital of France?", max_tokens=24), ask("Name three colors.", max_tokens=24),
                ask("Write a long essay about the history of the Roman Empire.", max_tokens=6),
                ask("Name three colors.", max_tokens=24, temperature=0.8, seed=3)]
    with OpenAIEngine(OpenAI("smollm2", base_url=vllm_server), workspace=model_workspace.path) as api:
        served = run(api, requests)
        assert run(api, requests[3:]) == {0: served[3]}  # a seeded sample is reproducible on vLLM
    with TransformersEngine(Transformers(batch_size=4), workspace=model_workspace.path) as local:
        offline = run(local, requests)
    for k in range(len(requests)):
        a, b = served[k], offline[k]
        assert a.error is None and a.text and a.text == a.text.strip()
        assert a.input_tokens == b.input_tokens  # the same chat template and tokenizer
        assert 1 <= a.output_tokens <= requests[k].params.max_tokens
        assert a.finish_reason in ("stop", "length")
    assert "Paris" in served[0].text and "Paris" in offline[0].text
    assert (served[2].output_tokens, served[2].finish_reason) == (6, "length") == (
        offline[2].output_tokens, offline[2].finish_reason)


@pytest.mark.server
def test_vllm_server_frames_share_the_cache_across_runs(vllm_server, tmp_path):
    proxy = FaultProxy(vllm_server)  # no faults: counts the HTTP calls
    try:
        spec = OpenAI("smollm2", base_url=proxy.url)
        rows = [{"q": f"row {k}: name a fruit."} for k in range(3)]
        frame = lazyllm.from_dicts(rows).generate("answer", spec, prompt="{{ q }}", max_tokens=12)
        first = frame.collect(workspace=tmp_path / "ws")
        assert proxy.requests == 3
        assert first["answer_error"].null_count() == 3 and all(first["answer"].to_list())
        again = lazyllm.from_dicts(rows).generate("answer", spec, prompt="{{ q }}", max_tokens=12)
        second = again.collect(workspace=tmp_path / "ws")
        assert proxy.requests == 3, "the second collect is served from the cache: no HTTP call"
        assert second.equals(first)
    finally:
        proxy.stop()


@pytest.mark.server
@pytest.mark.parametrize("guided", ["auto", "openai"])
def test_vllm_server_honours_choices_and_json_schema(vllm_server, tmp_path, guided):
    spec = OpenAI("smollm2", base_url=vllm_server, guided=guided)
    rows = [{"q": "Is the sky blue?"}, {"q": "Is fire cold?"}, {"q": "Do fish swim?"}]
    frame = (lazyllm.from_dicts(rows)
             .generate("label", spec, prompt="{{ q }} Answer yes or no.", choices=["yes", "no"], max_tokens=4)
             .generate("person", spec, prompt="Describe a person as JSON.", max_tokens=48,
                       json_schema={"type": "object", "properties": {"name": {"type": "string"}},
                                    "required": ["name"], "additionalProperties": False}))
    out = frame.collect(workspace=tmp_path / "ws")
    assert set(out["label"].to_list()) <= {"yes", "no"} and out["label_error"].null_count() == 3
    assert out["person_error"].null_count() == 3
    assert all(isinstance(p["name"], str) for p in out["person"].to_list())
    assert isinstance(out.schema["person"], pl.Struct)


# --------------------------------------------------------------------------- provider rate limits


class RateLimit:
    """A fault schedule that enforces a requests-per-second limit as the provider would:
    a token bucket (``rate`` per second, holding ``burst`` requests), 429 past it. It
    records when each request arrived and which were refused."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.capacity, self.level = rate, burst, burst
        self.stamp = time.monotonic()
        self.arrivals: list[float] = []
        self.refused = 0

    def __call__(self, row: int, attempt: int) -> str | None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.level < 1:
            self.refused += 1
            return "429"
        self.level -= 1
        self.arrivals.append(now)
        return None


def test_requests_per_minute_keep_a_limited_server_from_answering_429(upstream, tmp_path):
    base_url, model = upstream
    requests = [ask(f"Say one word about row {k}.", max_tokens=4) for k in range(30)]
    # without a limit on the client, the server's limit (4 requests/s) answers 429s
    limit = RateLimit(rate=4.0, burst=5.0)
    proxy = FaultProxy(base_url, limit)
    try:
        spec = OpenAI(model, base_url=proxy.url, concurrency=8, max_retries=8, backoff=0.05, max_backoff=0.5)
        with OpenAIEngine(spec, workspace=tmp_path) as engine:
            run(engine, requests)
            assert limit.refused > 0 and engine.stats["retries"]["429"] > 0, "the proxy enforces its limit"
    finally:
        proxy.stop()
    # with the limit set right (240 RPM = 4/s): no 429, and the steady throughput is the limit
    limit = RateLimit(rate=4.0, burst=5.0)
    proxy = FaultProxy(base_url, limit)
    try:
        spec = OpenAI(model, base_url=proxy.url, concurrency=8, requests_per_minute=240)
        with OpenAIEngine(spec, workspace=tmp_path) as engine:
            limited = run(engine, requests)
            assert engine._limiter is not None and engine._limiter.stats["waits"] > 0
        assert limit.refused == 0 and proxy.requests == len(requests)
        assert all(r.error is None and r.text for r in limited.values())
        burst = 4  # the client's bucket holds one second's worth
        steady = (len(limit.arrivals) - 1 - burst) / (limit.arrivals[-1] - limit.arrivals[burst])
        assert steady == pytest.approx(4.0, rel=0.10), steady
    finally:
        proxy.stop()


class WindowLimit:
    """A fault schedule that allows ``n`` requests per fixed window of ``window`` seconds (429
    past it) and reports what is left in OpenAI's headers (``x-ratelimit-remaining-requests``,
    ``x-ratelimit-reset-requests``) on every forwarded answer."""

    def __init__(self, n: int, window: float) -> None:
        self.n, self.window = n, window
        self.start = time.monotonic()
        self.count = self.refused = 0

    def __call__(self, row: int, attempt: int) -> str | None:
        now = time.monotonic()
        if now - self.start >= self.window:
            self.start, self.count = now, 0
        if self.count >= self.n:
            self.refused += 1
            return "429"
        self.count += 1
        return None

    def headers(self) -> dict[str, str]:
        reset = max(self.start + self.window - time.monotonic(), 0.0)
        return {"x-ratelimit-remaining-requests": str(self.n - self.count),
                "x-ratelimit-reset-requests": f"{reset * 1000:.0f}ms"}


def test_the_providers_rate_limit_headers_are_read_without_limits_set(fake_api, tmp_path):
    """No requests_per_minute on the spec: only the proxy's headers keep the client from 429s."""
    requests = [ask(f"Say one word about row {k}.", max_tokens=4) for k in range(9)]
    def spec(url: str) -> OpenAI:
        return OpenAI("fake", base_url=url, concurrency=1, max_retries=8, backoff=0.05, max_backoff=0.5)

    blind = WindowLimit(n=3, window=0.5)  # the same limit, no headers: the client runs into it
    proxy = FaultProxy(fake_api.url, blind)
    try:
        with OpenAIEngine(spec(proxy.url), workspace=tmp_path) as engine:
            run(engine, requests)
        assert blind.refused > 0
    finally:
        proxy.stop()
    told = WindowLimit(n=3, window=0.5)
    proxy = FaultProxy(fake_api.url, told, headers=told.headers)
    try:
        with OpenAIEngine(spec(proxy.url), workspace=tmp_path) as engine:
            answers = run(engine, requests)
            assert engine._limiter is not None and engine._limiter.stats["header_pauses"] >= 2
        assert told.refused == 0 and proxy.requests == len(requests)
        assert all(r.error is None and r.text for r in answers.values())
    finally:
        proxy.stop()


class TokenLimit:
    """A fault schedule that enforces a tokens-per-second limit as OpenAI describes its TPM limit:
    a request is charged its prompt estimate plus ``max_tokens`` when it arrives (429 when the
    bucket of ``rate`` tokens per second, holding ``burst`` tokens, has less) and settled on
    the usage the upstream reports. It records each admitted request's arrival and usage."""

    reads_body = True

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.capacity, self.level = rate, burst, burst
        self.stamp = time.monotonic()
        self.charged: dict[int, int] = {}
        self.arrivals: list[tuple[float, int]] = []  # (time, row)
        self.used: dict[int, int] = {}
        self.refused = 0

    @staticmethod
    def cost(body: dict[str, Any]) -> int:
        prompt = sum(len(m["content"]) // 4 + 4 for m in body["messages"])
        return prompt + int(body.get("max_tokens") or body.get("max_completion_tokens") or 0)

    def _refill(self) -> float:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        return now

    def __call__(self, row: int, attempt: int, body: dict[str, Any]) -> str | None:
        now, cost = self._refill(), self.cost(body)
        if self.level < cost:
            self.refused += 1
            return "429"
        self.level -= cost
        self.charged[row] = cost
        self.arrivals.append((now, row))
        return None

    def settle(self, row: int, usage: dict[str, int]) -> None:
        self._refill()
        self.used[row] = usage["prompt_tokens"] + usage["completion_tokens"]
        self.level = min(self.capacity, self.level + self.charged[row] - self.used[row])


def test_tokens_per_minute_keep_a_token_limited_server_from_answering_429(fake_api, tmp_path):
    requests = [ask(f"Say one word about row {k}.", max_tokens=4) for k in range(40)]
    rate = 100.0  # tokens per second: about 7 of these requests per second
    # a quarter second of slack over the client's one-second bucket, as for requests above: the
    # client's bucket starts refilling when it sends, the server's only when the request arrives
    limit = TokenLimit(rate, burst=1.25 * rate)  # without a limit on the client, it answers 429s
    proxy = FaultProxy(fake_api.url, limit)
    try:
        spec = OpenAI("fake", base_url=proxy.url, concurrency=8, max_retries=8, backoff=0.05, max_backoff=0.5)
        with OpenAIEngine(spec, workspace=tmp_path) as engine:
            run(engine, requests)
        assert limit.refused > 0
    finally:
        proxy.stop()
    limit = TokenLimit(rate, burst=1.25 * rate)  # with the limit set right (6,000 TPM): no 429, at the limit
    proxy = FaultProxy(fake_api.url, limit)
    try:
        spec = OpenAI("fake", base_url=proxy.url, concurrency=8, tokens_per_minute=rate * 60)
        with OpenAIEngine(spec, workspace=tmp_path) as engine:
            answers = run(engine, requests)
            assert engine._limiter is not None and engine._limiter.stats["waits"] > 0
        assert limit.refused == 0 and proxy.requests == len(requests)
        assert all(r.error is None and r.text for r in answers.values())
        # after the first second's bucket, the usage admitted per second is the limit
        burst = next(k for k, (t, _) in enumerate(limit.arrivals) if t - limit.arrivals[0][0] > 1.0)
        (t0, _), (t1, _) = limit.arrivals[burst], limit.arrivals[-1]
        steady = sum(limit.used[row] for _, row in limit.arrivals[burst + 1:]) / (t1 - t0)
        assert steady == pytest.approx(rate, rel=0.10), steady
    finally:
        proxy.stop()


def test_rate_limits_are_checked_when_the_spec_is_made():
    with pytest.raises(PlanError, match="requests_per_minute must be a positive number"):
        OpenAI("m", base_url="http://127.0.0.1:1/v1", requests_per_minute=0)
    with pytest.raises(PlanError, match="tokens_per_minute"):
        OpenAI("m", base_url="http://127.0.0.1:1/v1", tokens_per_minute="lots")
    spec = OpenAI("m", base_url="http://127.0.0.1:1/v1", requests_per_minute=60, tokens_per_minute=1000)
    assert model_fingerprint(spec) == model_fingerprint(OpenAI("m", base_url="http://127.0.0.1:1/v1"))


@pytest.mark.server
def test_vllm_server_logprobs_give_expected_scores_like_the_transformers_engine(vllm_server, model_workspace):
    """judge(method="expected") through the OpenAI-compatible API of a real vLLM server: the
    distribution over single-token scores matches the transformers engine's."""
    rows = [{"q": "What is 2 + 2?", "a": "2 + 2 equals 4."}, {"q": "What is 2 + 2?", "a": "Bananas are yellow."}]
    spec = OpenAI("smollm2", base_url=vllm_server)
    served = (lazyllm.from_dicts(rows).judge("s", spec, question="q", answer="a", method="expected", scale=(1, 5))
              .collect(workspace=model_workspace, progress=False))
    local = (lazyllm.from_dicts(rows).judge("s", Transformers(), question="q", answer="a", method="expected",
                                            scale=(1, 5)).collect(workspace=model_workspace, progress=False))
    assert served["s_error"].is_null().all() and served["s"].is_between(1, 5).all()
    for a, b in zip(served["s_probs"].to_list(), local["s_probs"].to_list()):
        assert a == pytest.approx(b, abs=0.02)
    verdict = (lazyllm.from_dicts([{"q": "What is 2 + 2?", "x": "4", "y": "Bananas."}])
               .judge_pairwise("w", spec, a="x", b="y", question="q").collect(workspace=model_workspace,
                                                                               progress=False))
    assert verdict["w_error"].is_null().all() and verdict["w_margin"].is_between(-1, 1).all()


@pytest.mark.server
def test_vllm_server_takes_a_conversation_through_the_models_chat_template(vllm_server, model_workspace, tmp_path):
    """``generate(messages=...)`` on the real server: every turn goes through the served model's
    chat template (the same prompt tokens as the transformers engine), and ``append_to`` chains turns."""
    from lazyllm.backends.transformers import TransformersEngine

    dialogue = [{"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": "Hello Ada!"},
                {"role": "user", "content": "What is the capital of France?"}]
    spec = OpenAI("smollm2", base_url=vllm_server)
    out = (lazyllm.from_dicts([{"conv": dialogue}])
           .generate("r1", spec, messages="conv", system="Be brief.", max_tokens=16, append_to="conv2")
           .generate("r2", spec, messages="conv2", prompt="And of Spain?", max_tokens=16, append_to="conv3")
           .collect(workspace=tmp_path, progress=False))
    assert out["r1_error"][0] is None and out["r2_error"][0] is None
    assert [m["role"] for m in out["conv3"][0]] == ["user", "assistant", "user", "assistant", "user", "assistant"]
    assert out["conv3"][0][3]["content"] == out["r1"][0]
    request = Request(messages=(Message("system", "Be brief."),) + tuple(Message(m["role"], m["content"])
                                                                         for m in dialogue),
                      params=SamplingParams(max_tokens=16))
    with OpenAIEngine(spec, workspace=model_workspace.path) as api:
        served = run(api, [request])[0]
    with TransformersEngine(Transformers(), workspace=model_workspace.path) as local:
        offline = run(local, [request])[0]
    assert served.text == out["r1"][0]  # the frame sent exactly this conversation
    assert served.input_tokens == offline.input_tokens  # the same chat template over every turn
