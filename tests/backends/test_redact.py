"""Credentials never reach disk or an error message.

Two kinds of credential, each checked in the error column, the workspace's files
(run logs, batch records, the cache), exception messages and cards:

- an API key (``OpenAI(api_key=...)`` and a key read from an environment variable of
  any name), which a misbehaving server echoes back in its error text;
- ``user:password@`` in the ``base_url``.

The servers are the local test servers of ``test_openai`` (127.0.0.1, stopped by
each test).
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("openai", reason="the OpenAI engine needs the openai package: pip install -e '.[openai]'")

import lazyllm  # noqa: E402
from lazyllm.core.errors import ColumnNotFoundError, EngineError, PlanError  # noqa: E402
from lazyllm.core.redact import REDACTED, redact, redact_url, scrub  # noqa: E402
from lazyllm.models import OpenAI  # noqa: E402
from test_openai import SECRET, FakeAPI, _Handler, _Running  # noqa: E402

PASSWORD = "hunter2-url-password"
ENV_KEY = "plain-looking-key-from-env-42"


class _Leaky:
    """A server that answers every completion with HTTP ``status`` and echoes the request's
    headers (the Authorization header included) and a URL with credentials in its error text."""

    def __init__(self, status: int = 400) -> None:
        self.status = status
        self.requests = 0
        self.running = _Running(self)

    def handle(self, h: _Handler, method: str, path: str, body: bytes) -> None:
        self.requests += 1
        headers = "; ".join(f"{k}: {v}" for k, v in h.headers.items())
        h.send(self.status, {"error": {"message": f"bad request from http://alice:{PASSWORD}@proxy/v1 with "
                                                  f"headers {headers}", "type": "invalid_request_error"}})

    def url(self, credentials: bool) -> str:
        return f"http://alice:{PASSWORD}@127.0.0.1:{self.running.port}/v1" if credentials else self.running.url


@pytest.fixture
def leaky():
    server = _Leaky()
    yield server
    server.running.stop()


def _assert_clean(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text


def _workspace_files_are_clean(ws, *secrets: str) -> int:
    files = [p for p in ws.rglob("*") if p.is_file()]
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, path
    return len(files)


@pytest.mark.parametrize("credentials", ["key", "url", "env"])
def test_server_error_text_is_redacted_in_the_error_column_run_log_and_card(leaky, tmp_path, monkeypatch,
                                                                          credentials):
    secrets: tuple[str, ...]
    if credentials == "key":
        spec, secrets = OpenAI("fake", base_url=leaky.url(False), api_key=SECRET, max_retries=0), (SECRET,)
    elif credentials == "url":
        spec, secrets = OpenAI("fake", base_url=leaky.url(True), max_retries=0), (PASSWORD,)
    else:  # a key in a variable whose name does not say "key"
        monkeypatch.setenv("LAZYLLM_TEST_CRED", ENV_KEY)
        spec, secrets = OpenAI("fake", base_url=leaky.url(False), api_key_env="LAZYLLM_TEST_CRED", max_retries=0), \
            (ENV_KEY,)
    frame = lazyllm.from_dicts([{"q": "row 1"}, {"q": "row 2"}]).generate("a", spec, prompt="{{ q }}", max_tokens=4)
    ws = tmp_path / "ws"
    out = frame.collect(workspace=ws, progress=False)
    assert leaky.requests == 2
    errors = out["a_error"].to_list()
    assert all(e is not None and "HTTP 400" in e and REDACTED in e for e in errors)
    for e in errors:
        _assert_clean(e, *secrets, PASSWORD)
    card = frame.card(workspace=ws)
    _assert_clean(card.to_json() + card.to_markdown(), *secrets)
    assert _workspace_files_are_clean(ws, *secrets, PASSWORD) >= 2  # the cache and a run log at least


@pytest.mark.parametrize("credentials", ["key", "url"])
def test_a_rejected_request_raises_without_credentials(tmp_path, credentials):
    server = _Leaky(status=401)
    try:
        spec = (OpenAI("fake", base_url=server.url(False), api_key=SECRET) if credentials == "key"
                else OpenAI("fake", base_url=server.url(True)))
        frame = lazyllm.from_dicts([{"q": "row 1"}]).generate("a", spec, prompt="{{ q }}", max_tokens=4)
        with pytest.raises(EngineError, match="HTTP 401") as info:
            frame.collect(workspace=tmp_path / "ws", progress=False)
        for text in (str(info.value), repr(info.value), str(info.value.__cause__ or "")):
            _assert_clean(text, SECRET, PASSWORD)
        _workspace_files_are_clean(tmp_path / "ws", SECRET, PASSWORD)
    finally:
        server.running.stop()


def test_batch_records_hold_no_url_credentials(tmp_path):
    api = FakeAPI()
    try:
        url = api.url.replace("http://", f"http://alice:{PASSWORD}@")
        spec = OpenAI("fake", base_url=url, batch=True, poll_interval=0.02, api_key=SECRET)
        out = lazyllm.from_dicts([{"q": f"row {k}"} for k in range(3)]).generate(
            "a", spec, prompt="{{ q }}", max_tokens=8).collect(workspace=tmp_path / "ws", progress=False)
        assert out["a"].to_list() == [f"echo: row {k}" for k in range(3)]
        assert api.calls["POST /v1/batches"] == 1
        records = list((tmp_path / "ws" / "batches").rglob("*.json"))
        assert records and all("127.0.0.1" in p.read_text() for p in records)
        _workspace_files_are_clean(tmp_path / "ws", SECRET, PASSWORD)
    finally:
        api.stop()


def test_lazyllm_errors_redact_their_message():
    url = f"http://bob:{PASSWORD}@host/v1"
    for exc in (EngineError(f"failed at {url} with {SECRET}"), PlanError(f"bad {url}")):
        _assert_clean(str(exc) + repr(exc), SECRET, PASSWORD)
        assert "host/v1" in str(exc)
    missing = ColumnNotFoundError("x", ["a", "b"], where="generate()")
    assert isinstance(missing, KeyError) and "'x'" in str(missing)


@pytest.mark.parametrize("text,expected", [
    ("Authorization: Bearer abc.def-123", "Authorization: Bearer <redacted>"),
    ("token hf_abcdefghijklmnopqrstu end", "token <redacted> end"),
    ("see https://u:p@example.com/x and ftp://anon@h/", "see https://<redacted>@example.com/x and ftp://<redacted>@h/"),
    ("max_tokens=5, no secret here", "max_tokens=5, no secret here"),
])
def test_redact_patterns(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_scrub_and_redact_url() -> None:
    data: Any = scrub({"api_key": "x" * 10, "hub_token": None, "urls": [f"https://u:{PASSWORD}@h/v1"], "n": 3})
    assert data == {"api_key": REDACTED, "hub_token": None, "urls": ["https://h/v1"], "n": 3}
    assert redact_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"


def test_the_cause_of_an_engine_failure_is_redacted_too(tmp_path):
    """An engine that raises with a credential in its message: neither the EngineError nor
    its chained cause (printed with every traceback) shows it."""
    import polars as pl

    import lazyllm
    from lazyllm.core.redact import register_secret
    from lazyllm.errors import EngineError

    secret = "sk-cause-secret-0123456789abcdef"
    register_secret(secret)
    model = lazyllm.TestModel(name="leaky", raise_on=(secret,))
    frame = lazyllm.from_polars(pl.DataFrame({"x": [secret]})).generate("y", model, prompt="{{ x }}")
    with pytest.raises(EngineError) as info:
        frame.collect(workspace=tmp_path / "ws", progress=False)
    assert secret not in str(info.value) and info.value.__cause__ is not None
    assert secret not in str(info.value.__cause__) and "raises on batches" in str(info.value.__cause__)
