"""The OpenAI-compatible HTTP engine: OpenAI, ``vllm serve``, llama.cpp server, SGLang.

:class:`OpenAIEngine` runs the spec :class:`lazyllm.core.specs.OpenAI` with the ``openai``
package's ``AsyncOpenAI`` client, on an event loop in a thread of its own, so that the
planner's synchronous ``generate()`` loop keeps committing results to the cache while
requests are in flight.

Online mode (default)
---------------------
One HTTP request per :class:`~lazyllm.core.protocols.Request` (``n=1``: the
planner sends one request per sample index), at most ``spec.concurrency`` at a time
(an ``asyncio.Semaphore``). Chat requests go to ``/chat/completions``; raw prompts
(``Request.prompt`` without messages) to ``/completions``.

- Retries: HTTP 408, 409, 429 and 5xx, timeouts and dropped connections are retried
  up to ``spec.max_retries`` times, after an exponential backoff with full jitter
  (``uniform(0, min(max_backoff, backoff * 2**attempt))`` seconds, or the server's
  ``Retry-After`` when it is longer and at most ``max_backoff``). The client's own
  retries are turned off, so every attempt is counted in :attr:`OpenAIEngine.stats`.
  A request keeps its concurrency slot while it waits, which slows the whole engine
  down when the server says it is overloaded.
- Rate limits: with ``spec.requests_per_minute`` / ``spec.tokens_per_minute``, each
  attempt first takes one request and its estimated tokens (prompt characters / 4 plus
  4 per message, plus ``max_tokens``) from a :class:`~lazyllm.backends.ratelimit.RateLimiter`;
  the reported usage settles the estimate. With or without those limits, the provider's
  ``x-ratelimit-remaining-*`` headers at 0 pause every request until their reset. A
  request waiting for the limiter holds no concurrency slot (one backing off after a
  failure does, as above).
- Timeout: ``spec.timeout`` seconds per HTTP attempt.
- Failures: a request that fails for good (other 4xx, retries exhausted, an answer
  that breaks its constraint) becomes an error response with the reason; it never
  raises. Only a rejected API key (HTTP 401/403) or an unknown model (HTTP 404),
  which would fail every request alike, raise :class:`EngineError`.
- Results are yielded as they complete, in groups of up to ``spec.concurrency``
  responses (or whatever has completed when no response came for half a second),
  so a crash loses at most the requests in flight.
- Determinism: a sampled request sends ``seed=request.seed()`` (the base seed and
  the sample index); servers that honour seeds (vLLM does) then return the same text
  for the same request. OpenAI documents its seeds as best effort.

Constraints
-----------
``choices`` and ``json_schema`` are sent in one of two dialects, chosen by
``spec.guided``:

- ``"openai"``: OpenAI structured outputs, ``response_format={"type": "json_schema",
  ...}``. A JSON schema is sent as is (``strict`` true: OpenAI requires its subset of
  JSON Schema, e.g. every property required and ``additionalProperties: false``; a
  schema outside it fails with HTTP 400, reported per row). OpenAI has no choice
  constraint, so ``choices`` is sent as the schema ``{"answer": {"enum": choices}}``
  and the answer is unwrapped; that wrapper costs about 8 output tokens, so
  ``max_tokens`` is raised by :data:`CHOICE_WRAPPER_TOKENS` for those requests.
- ``"vllm"``: vLLM's structured outputs in the request body,
  ``{"structured_outputs": {"choice": [...]}}`` or ``{"structured_outputs": {"json": schema}}``
  (vLLM 0.10.2 and later; older servers took ``guided_choice`` / ``guided_json``,
  sent too when ``spec.guided_legacy_fields`` is set).
- ``"auto"`` (default): ``"openai"`` for api.openai.com; otherwise one
  ``GET /models`` on the first constrained request: ``"vllm"`` when a model is
  ``owned_by: "vllm"``, else ``"openai"`` (llama.cpp server and SGLang accept
  ``response_format``).

Whatever the server, the answer is checked: a choice must be one of ``choices`` and
JSON must parse and match the schema (``jsonschema``), else the row is an error, never
an unconstrained answer. An answer cut by ``max_tokens`` is returned as is with
``finish_reason="length"`` (as the transformers engine does).

Log-probabilities
-----------------
A ``Request(logprobs=True)`` (``judge(method="expected")``, calibrated pairwise
verdicts) is sent greedy and unconstrained with ``logprobs=true,
top_logprobs=20`` (completions: ``logprobs=20``) and ``max_tokens=3``; each
choice's log-probability is read from the alternatives along the answer
(:func:`lazyllm.backends.logprobs.choice_logprobs_from_top`): exact for choices of
one token, a lower bound for a longer choice whose path the answer did not take.
A model that gives no log-probabilities (``spec.supports_logprobs()`` is False:
OpenAI's reasoning models, or ``OpenAI(logprobs=False)``) is refused when the plan
is built, before any call.

Batch mode (``spec.batch=True``)
--------------------------------
The OpenAI Batch API (about half price, results within 24 h): the requests are
written as a JSONL file (one line per distinct request, ``custom_id`` a hash of the
request), uploaded with ``files.create(purpose="batch")``, and submitted with
``batches.create(endpoint="/v1/chat/completions", completion_window="24h")``. The
batch id is written to ``<workspace>/batches/<sha256 of the request keys>.json``
right after the batch is created and before any polling, so a rerun of the same
requests after a crash or Ctrl-C polls the recorded batch instead of paying for a
second one. A completed batch's record is kept: rerunning the same requests (after
``lazyllm cache clear``, say) downloads the same output again. A batch that failed,
expired or was cancelled yields the results it has and errors for the rest, and its
record is removed so the next run submits the failed rows again.

Secrets: the API key comes from ``spec.api_key`` or the environment variable named
by ``spec.api_key_env``; it is never part of a fingerprint, a cache key, a log line,
a batch record or a card (the spec leaves it out of ``identity()`` and ``repr``).
Every per-row error message (including the text a server returned) and every
exception message passes through :func:`lazyllm.core.redact.redact` first, and
URLs are written without ``user:password@``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import math
import os
import queue
import random
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import openai

from .answers import check_constraint
from lazyllm.core.errors import EngineError
from .logprobs import choice_logprobs_from_top
from lazyllm.core.protocols import Request, Response
from .ratelimit import RateLimiter
from .reasoning import share_of_tokens, split_response
from lazyllm.core.redact import redact, redact_url, register_secret
from lazyllm.core.specs import OpenAI

from .openai_batch import BatchSubmission, batch_record_path

__all__ = ["OpenAIEngine", "OpenAISession", "CHOICE_WRAPPER_TOKENS", "RETRY_STATUSES", "batch_record_path"]

log = logging.getLogger(__name__)

#: HTTP statuses that are retried (besides timeouts and dropped connections).
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
#: Alternatives per position asked for with ``Request(logprobs=True)`` (OpenAI's maximum).
TOP_LOGPROBS = 20
#: Tokens generated for ``Request(logprobs=True)``: enough to follow a multi-token choice.
LOGPROB_TOKENS = 3
#: Extra output tokens allowed for the ``{"answer": ...}`` JSON wrapper of choices (OpenAI dialect).
CHOICE_WRAPPER_TOKENS = 16
_FATAL_STATUSES = {401: "the API key was rejected", 403: "the API key may not use this model or endpoint",
                   404: "the model or the endpoint does not exist on this server"}
_PLACEHOLDER_KEY = "EMPTY"  # what self-hosted servers accept when they check no key


class _Fatal(Exception):
    """A failure every request would share (bad key, unknown model): stops the engine."""



def _is_openai_host(base_url: str) -> bool:
    return (urlparse(base_url).hostname or "").lower() in ("api.openai.com",)


class OpenAIEngine:
    """Run requests on an OpenAI-compatible HTTP server (see the module docstring).

    Parameters
    ----------
    spec : lazyllm.core.specs.OpenAI
        The model id, ``base_url`` and the engine options (concurrency, timeout,
        retries, constraint dialect, batch mode).
    workspace : pathlib.Path
        The lazyllm workspace; batch mode records batch ids in ``workspace/batches/``.

    Attributes
    ----------
    stats : dict
        Counters since the engine was created, for tests and run logs:
        ``requests`` (requests answered, errors included), ``http_calls`` (HTTP
        attempts of online requests), ``retries`` (a ``Counter`` keyed by ``"429"``,
        ``"500"``, ..., ``"timeout"``, ``"connection"``), ``errors`` (error responses),
        ``input_tokens``, ``output_tokens``, ``cost_usd`` (0.0 for unpriced models),
        ``guided`` (the resolved constraint dialect or None), ``batches_created``,
        ``batches_resumed`` and ``batch_polls``.

    Notes
    -----
    Nothing connects in ``__init__``; the client and its event loop thread start on
    the first ``generate()`` and stop in :meth:`close`. Cost: one HTTP call per
    request and attempt (plus one ``GET /models`` when ``guided="auto"`` meets the
    first constraint); batch mode makes four calls per batch plus one per poll.
    """

    def __init__(self, spec: OpenAI, *, workspace: Path) -> None:
        self.spec = spec
        self.workspace = Path(workspace)
        self.stats: dict[str, Any] = {
            "requests": 0, "http_calls": 0, "retries": Counter(), "errors": 0,
            "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0, "guided": None,
            "batches_created": 0, "batches_resumed": 0, "batch_polls": 0,
        }
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._semaphore: asyncio.Semaphore | None = None
        self._guided_lock: asyncio.Lock | None = None
        self._limiter: RateLimiter | None = None
        self._lock = threading.Lock()

    # -- lifecycle

    def _api_key(self) -> str:
        key = self.spec.api_key or os.environ.get(self.spec.api_key_env or "", "")
        if key:
            register_secret(key)  # whatever the variable's name, the key is redacted everywhere
            return key
        if _is_openai_host(self.spec.base_url):
            raise EngineError(
                f"No API key for {redact_url(self.spec.base_url)}: OpenAI(api_key=...) is unset and the environment "
                f"variable {self.spec.api_key_env!r} is empty. Export {self.spec.api_key_env}=sk-... "
                "(or pass api_key=, or api_key_env= naming another variable)."
            )
        return _PLACEHOLDER_KEY

    def start(self) -> None:
        """Create the client and its event loop thread (no-op when started).

        Raises
        ------
        EngineError
            No API key is set for api.openai.com.
        """
        with self._lock:
            if self._loop is not None:
                return
            key = self._api_key()
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="lazyllm-openai", daemon=True)
            thread.start()

            async def setup() -> None:
                self._client = openai.AsyncOpenAI(
                    api_key=key, base_url=self.spec.base_url, max_retries=0, timeout=self.spec.timeout
                )
                self._semaphore = asyncio.Semaphore(self.spec.concurrency)
                self._guided_lock = asyncio.Lock()
                limiter = RateLimiter(self.spec.requests_per_minute, self.spec.tokens_per_minute)
                self._limiter = limiter  # without limits set, it still reads the rate-limit headers

            asyncio.run_coroutine_threadsafe(setup(), loop).result()
            self._loop, self._thread = loop, thread

    def close(self) -> None:
        """Close the HTTP client and stop the event loop thread; a later generate() restarts them."""
        with self._lock:
            loop, thread, client = self._loop, self._thread, self._client
            self._loop = self._thread = self._client = None
            if loop is None:
                return
            try:
                if client is not None:
                    asyncio.run_coroutine_threadsafe(client.close(), loop).result(timeout=10)
            except Exception as exc:  # noqa: BLE001 - closing must not hide the real error
                log.debug("closing the OpenAI client failed: %s", exc)
            loop.call_soon_threadsafe(loop.stop)
            if thread is not None:
                thread.join(timeout=10)
            if not loop.is_running():
                loop.close()

    def __enter__(self) -> OpenAIEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- generation

    def generate(self, requests: Sequence[Request]) -> Iterator[list[tuple[int, Response]]]:
        """Run ``requests`` on the server; yield ``(index, Response)`` groups as they complete.

        Parameters
        ----------
        requests : sequence of Request
            Chat messages or raw prompts, with sampling params and optional
            ``choices`` / ``json_schema`` constraints; any mix.

        Yields
        ------
        list of (int, Response)
            Online: the responses that completed since the last group, as they complete
            (through :class:`OpenAISession`).
            Batch mode: groups of up to ``spec.concurrency`` responses once the batch
            has completed. Every index is yielded exactly once.

        Raises
        ------
        EngineError
            No API key for api.openai.com; the server rejected the key (401/403) or
            does not know the model (404); batch mode: the upload or the batch
            creation failed. Raised by ``next()``; groups yielded before stay valid.

        Notes
        -----
        Responses: ``text`` the answer (unconstrained text stripped; a stop string is
        cut by the server and not included), ``input_tokens`` and ``output_tokens``
        from the server's ``usage``, ``finish_reason`` ``"stop"`` or ``"length"``.
        Cost: one HTTP call per request and attempt; tokens are billed by the server
        (``stats["cost_usd"]`` adds them up at ``spec.prices()``).
        """
        if not requests:
            return
        self.start()
        if self.spec.batch:
            yield from BatchSubmission(self).generate(requests)
            return
        session = OpenAISession(self)
        index = {t: i for i, t in enumerate(session.submit(requests))}
        try:
            left = len(requests)
            while left:
                part = session.poll()
                left -= len(part)
                if part:
                    yield [(index[t], r) for t, r in part]
        finally:
            session.close()

    def session(self) -> OpenAISession | None:
        """A streaming session: each submitted request starts at once on the async pool
        (``spec.concurrency`` HTTP calls at a time); None in batch mode (``spec.batch``),
        whose requests go to the server together.

        Returns
        -------
        OpenAISession or None
        """
        return None if self.spec.batch else OpenAISession(self)

    def _account(self, response: Response) -> Response:
        stats = self.stats
        stats["requests"] += 1
        stats["errors"] += response.error is not None
        stats["input_tokens"] += response.input_tokens
        stats["output_tokens"] += response.output_tokens
        prices = self.spec.prices()
        if prices is not None:
            stats["cost_usd"] += (response.input_tokens * prices[0] + response.output_tokens * prices[1]) / 1e6
        return response

    # -- one online request

    async def _one(self, request: Request) -> Response:
        guided = await self._guided() if (request.choices is not None or request.json_schema is not None) else None
        try:
            endpoint, body, extra = self._body(request, guided)
        except ValueError as exc:
            return Response.failed(str(exc))
        client = self._client
        api = client.chat.completions if endpoint == "chat" else client.completions
        create = api.with_raw_response.create if self._limiter is not None else api.create
        estimate = _estimate_tokens(request, body) if self._limiter is not None else 0
        assert self._semaphore is not None
        attempts = self.spec.max_retries + 1
        for attempt in range(attempts):
            if self._limiter is not None:  # wait outside the concurrency slot
                await self._limiter.acquire(estimate)
            retry_after: float | None = None
            async with self._semaphore:
                if self._limiter is not None:  # the headers of an answer received meanwhile may say wait
                    await self._limiter.wait_pause()
                self.stats["http_calls"] += 1
                try:
                    result = await create(**body, extra_body=extra or None, timeout=self.spec.timeout)
                except openai.APITimeoutError:
                    reason, detail = "timeout", f"no answer within {self.spec.timeout:g} s"
                except openai.APIConnectionError as exc:
                    reason, detail = "connection", f"connection failed: {exc.__cause__ or exc}"
                except openai.APIStatusError as exc:
                    status = exc.status_code
                    detail = f"HTTP {status}: {_status_message(exc)}"
                    if self._limiter is not None:
                        self._limiter.observe(getattr(exc.response, "headers", None))
                    if status in _FATAL_STATUSES:
                        raise _Fatal(redact(f"{detail} ({_FATAL_STATUSES[status]})")) from None
                    if status not in RETRY_STATUSES:
                        return Response.failed(f"The server rejected the request: {detail}. Fix the request "
                                      "(prompt length, parameters, schema) or the server's limits.")
                    reason, retry_after = str(status), _retry_after(exc)
                else:
                    if self._limiter is not None:
                        self._limiter.observe(result.headers)
                        result = result.parse()
                    response = self._parse(request, result, endpoint, guided)
                    if self._limiter is not None:
                        usage = response.input_tokens + response.output_tokens
                        self._limiter.settle(estimate, usage if usage > 0 else None)
                    return response
                if attempt + 1 == attempts:
                    return Response.failed(f"The request failed after {attempts} attempts (last: {detail}). "
                                  "A rerun retries it (errors are not cached); raise max_retries or timeout, "
                                  "or lower concurrency, if this keeps happening.")
                self.stats["retries"][reason] += 1
                delay = self._backoff(attempt, retry_after)
                log.debug("retrying a request in %.2f s after %s (attempt %d of %d)", delay, reason,
                          attempt + 1, attempts)
                await asyncio.sleep(delay)  # the backoff keeps the slot: an overloaded server gets less
        raise AssertionError("unreachable")  # pragma: no cover

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry ``attempt + 1``: full jitter, or the server's Retry-After."""
        cap = self.spec.max_backoff
        delay = random.uniform(0.0, min(cap, self.spec.backoff * (2**attempt)))
        if retry_after is not None:
            delay = max(delay, min(retry_after, cap))
        return delay

    async def _guided(self) -> str:
        """The constraint dialect, resolved once (``GET /models`` for ``guided="auto"``)."""
        if self.stats["guided"] is not None:
            return self.stats["guided"]
        assert self._guided_lock is not None
        async with self._guided_lock:
            if self.stats["guided"] is None:
                mode = self.spec.guided
                if mode == "auto":
                    mode = "openai" if _is_openai_host(self.spec.base_url) else await self._detect()
                self.stats["guided"] = mode
        return self.stats["guided"]

    async def _detect(self) -> str:
        try:
            page = await self._client.models.list(timeout=self.spec.timeout)
            owners = {str(getattr(m, "owned_by", "") or "").lower() for m in page.data}
        except Exception as exc:  # noqa: BLE001 - detection is a hint; OpenAI's dialect is the common one
            log.debug("GET /models failed (%s); using the OpenAI constraint dialect", exc)
            return "openai"
        return "vllm" if "vllm" in owners else "openai"

    # -- request bodies and answers

    def _body(self, request: Request, guided: str | None) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """(endpoint ``"chat"`` or ``"completions"``, body, extra body fields) of a request.

        Raises ValueError when the request cannot be sent with its constraint.
        """
        spec, params = self.spec, request.params
        body: dict[str, Any] = {"model": spec.model, "temperature": params.temperature, "n": 1}
        extra: dict[str, Any] = {}
        if params.top_p != 1.0:
            body["top_p"] = params.top_p
        if not params.greedy:
            body["seed"] = request.seed()
        if params.stop:
            body["stop"] = list(params.stop)
        max_tokens = params.max_tokens
        if request.messages:
            endpoint = "chat"
            body["messages"] = [{"role": m.role, "content": m.content} for m in request.messages]
        else:
            endpoint = "completions"
            body["prompt"] = request.prompt or ""
        if request.choices is not None and request.json_schema is not None:
            raise ValueError("The request sets both choices and json_schema; set one of them.")
        if request.logprobs:  # the distribution over the choices: unconstrained, greedy, top log-probabilities
            if not spec.supports_logprobs():
                raise ValueError(f"The model {spec.model!r} at {spec.base_url} gives no log-probabilities; "
                                 "use method='argmax' / method='strict', or another model.")
            body["temperature"] = 0.0
            body.pop("seed", None)
            body.pop("top_p", None)
            max_tokens = LOGPROB_TOKENS
            if endpoint == "chat":
                body["logprobs"], body["top_logprobs"] = True, TOP_LOGPROBS
            else:
                body["logprobs"] = TOP_LOGPROBS
        elif request.choices is not None or request.json_schema is not None:
            if request.choices is not None and not request.choices:
                raise ValueError("The choices constraint is empty: give at least one allowed answer.")
            schema = None
            if request.json_schema is not None:
                try:
                    schema = json.loads(request.json_schema)
                except ValueError as exc:
                    raise ValueError(f"json_schema is not valid JSON: {exc}. Fix the schema.") from None
            if guided == "vllm":
                structured = {"choice": list(request.choices)} if request.choices is not None else {"json": schema}
                extra["structured_outputs"] = structured
                if spec.guided_legacy_fields:
                    key = "guided_choice" if request.choices is not None else "guided_json"
                    extra[key] = next(iter(structured.values()))
            else:
                if endpoint != "chat":
                    raise ValueError("OpenAI structured outputs (guided='openai') need chat messages; this request "
                                     "is a raw prompt. Use messages, or a vLLM server with guided='vllm'.")
                if request.choices is not None:
                    schema = _choice_wrapper(request.choices)
                    max_tokens += CHOICE_WRAPPER_TOKENS
                body["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "lazyllm_choice" if request.choices is not None else "lazyllm_output",
                                    "schema": schema, "strict": True},
                }
        body["max_completion_tokens" if _is_openai_host(spec.base_url) else "max_tokens"] = max_tokens
        return endpoint, body, extra

    def _parse(self, request: Request, result: Any, endpoint: str, guided: str | None) -> Response:
        """A Response from a chat or completion result (checked against the constraint)."""
        try:
            choice = result.choices[0]
            text = choice.message.content if endpoint == "chat" else choice.text
            reason = choice.finish_reason
        except (AttributeError, IndexError, TypeError) as exc:
            return Response.failed(f"The server's answer has no choice: {type(exc).__name__}: {exc}.")
        usage = getattr(result, "usage", None)
        if request.logprobs:
            return _logprob_response(request, getattr(choice, "logprobs", None), endpoint, usage)
        reasoning = _reasoning_field(choice.message) if endpoint == "chat" else None
        return self._response(request, text, reason, usage, guided, reasoning)

    def _response(self, request: Request, text: Any, reason: Any, usage: Any, guided: str | None,
                  reasoning: str | None = None) -> Response:
        def tokens(name: str) -> int:
            value = usage.get(name) if isinstance(usage, dict) else getattr(usage, name, None)
            return int(value or 0)

        counts = {"input_tokens": tokens("prompt_tokens"), "output_tokens": tokens("completion_tokens")}
        if reason == "content_filter":
            return Response(text=None, finish_reason="error", error="The server's content filter blocked the answer.",
                            **counts)
        if text is None and reasoning is not None and reason == "length":
            text = ""  # max_tokens ran out inside the trace: no answer yet
        if not isinstance(text, str):
            return Response(text=None, finish_reason="error",
                            error=f"The server returned no text (finish_reason={reason!r}).", **counts)
        finish = "length" if reason == "length" else "stop"
        if request.choices is None and request.json_schema is None:
            return _with_reasoning(Response(text=text.strip(), finish_reason=finish, **counts), request, reasoning,
                                   usage)
        if finish == "length":  # cut by max_tokens: the partial answer, as the transformers engine returns it
            return Response(text=text, finish_reason="length", **counts)
        try:
            checked = check_constraint(request, text, wrapped=guided != "vllm" and request.choices is not None)
        except ValueError as exc:
            return Response(text=None, finish_reason="error", error=f"{exc} The server did not honour the "
                            f"constraint (dialect {guided!r}); check spec.guided for this server.", **counts)
        return Response(text=checked, finish_reason="stop", **counts)

    def _chat_choice_response(self, request: Request, choice: Any, usage: Any, guided: str | None) -> Response:
        """The Response of one chat completion choice (a dict, as the Batch API returns it)."""
        if request.logprobs:
            return _logprob_response(request, choice.get("logprobs"), "chat", usage)
        return self._response(request, choice["message"].get("content"), choice.get("finish_reason"), usage, guided,
                              _reasoning_field(choice["message"]))


# --------------------------------------------------------------------------- helpers


class OpenAISession:
    """Requests streamed into an :class:`OpenAIEngine`'s async pool.

    :meth:`submit` schedules each request on the engine's event loop at once (it waits
    there for one of the ``spec.concurrency`` slots and the rate limits); :meth:`poll`
    returns the responses that completed.

    Parameters
    ----------
    engine : OpenAIEngine

    Attributes
    ----------
    capacity : int
        ``spec.batch_size`` (default 256): requests in flight, so that the pool always
        has the next request waiting when a slot frees.

    Notes
    -----
    Cost: one HTTP call per request and attempt (see :meth:`OpenAIEngine.generate`).
    """

    continuous = True

    def __init__(self, engine: OpenAIEngine) -> None:
        self.engine = engine
        self.capacity = int(engine.spec.batch_size or engine.spec.concurrency)
        self._next = 0
        self._futures: dict[int, concurrent.futures.Future[Response]] = {}
        self._done: queue.Queue[int] = queue.Queue()

    def submit(self, requests: Sequence[Request]) -> list[int]:
        """Start ``requests`` on the pool; their tickets.

        Parameters
        ----------
        requests : sequence of Request

        Returns
        -------
        list of int

        Raises
        ------
        EngineError
            No API key is set for api.openai.com.
        """
        engine = self.engine
        engine.start()
        assert engine._loop is not None
        tickets = list(range(self._next, self._next + len(requests)))
        self._next += len(requests)
        for ticket, request in zip(tickets, requests):
            future = asyncio.run_coroutine_threadsafe(engine._one(request), engine._loop)
            self._futures[ticket] = future
            future.add_done_callback(lambda _, ticket=ticket: self._done.put(ticket))
        return tickets

    def poll(self, timeout: float | None = None) -> list[tuple[int, Response]]:
        """The responses completed since the last poll (waits up to ``timeout`` seconds for one).

        Parameters
        ----------
        timeout : float, optional
            None: until one completes.

        Returns
        -------
        list of (int, Response)

        Raises
        ------
        EngineError
            The server rejected the key (401/403) or does not know the model (404).
        """
        out: list[tuple[int, Response]] = []
        wait = timeout
        while self._futures:
            try:
                ticket = self._done.get(timeout=wait) if wait is None or wait > 0 else self._done.get_nowait()
            except queue.Empty:
                break
            wait = 0
            future = self._futures.pop(ticket, None)
            if future is None:
                continue
            try:
                response = future.result()
            except _Fatal as exc:
                spec = self.engine.spec
                raise EngineError(
                    f"The OpenAI-compatible server at {redact_url(spec.base_url)} refused the requests "
                    f"for model {spec.model!r}: {exc}. Check the model id, base_url and API key "
                    f"(OpenAI(api_key=...) or ${spec.api_key_env})."
                ) from None
            except Exception as exc:  # noqa: BLE001 - a bug in one row must not lose the others
                response = Response.failed(f"The request failed in the OpenAI engine: {type(exc).__name__}: {exc}")
            out.append((ticket, self.engine._account(response)))
        return out

    def close(self) -> None:
        """Cancel the requests still in flight."""
        futures, self._futures = self._futures, {}
        for future in futures.values():
            future.cancel()


def _estimate_tokens(request: Request, body: dict[str, Any]) -> int:
    """Tokens a request counts against a tokens-per-minute limit before its usage is known:
    about 4 characters per prompt token plus 4 per message, plus ``max_tokens``."""
    if request.messages:
        prompt = sum(len(m.content) // 4 + 4 for m in request.messages)
    else:
        prompt = len(request.prompt or "") // 4
    return prompt + int(body.get("max_tokens") or body.get("max_completion_tokens") or request.params.max_tokens)


def _get(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _reasoning_field(message: Any) -> str | None:
    """The trace a server with a reasoning parser returns apart from the answer:
    ``reasoning_content`` (vLLM, DeepSeek), or ``reasoning`` (newer vLLM); None when absent."""
    for name in ("reasoning_content", "reasoning"):
        value = _get(message, name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _with_reasoning(response: Response, request: Request, reasoning: str | None, usage: Any) -> Response:
    """``response`` with its trace: the server's separate field, else a ``<think>`` block in the
    text. Trace tokens: the usage's ``completion_tokens_details.reasoning_tokens`` when the
    server reports it, else estimated by characters (:func:`~lazyllm.backends.reasoning.share_of_tokens`)."""
    reported = _get(_get(usage, "completion_tokens_details"), "reasoning_tokens") if usage is not None else None
    if reasoning is None:
        response = split_response(response, request)
        if response.reasoning is None or not reported:
            return response
        return dataclasses.replace(response, reasoning_tokens=min(int(reported), response.output_tokens))
    tokens = int(reported) if reported else share_of_tokens(response.output_tokens, reasoning, response.text or "")
    return dataclasses.replace(response, reasoning=reasoning, reasoning_tokens=min(tokens, response.output_tokens))


def _logprob_response(request: Request, logprobs: Any, endpoint: str, usage: Any) -> Response:
    """The choice log-probabilities of a ``Request(logprobs=True)`` from a chat or completion
    result's ``logprobs`` (see :func:`lazyllm.backends.logprobs.choice_logprobs_from_top`)."""
    counts = {"input_tokens": int(_get(usage, "prompt_tokens") or 0),
              "output_tokens": int(_get(usage, "completion_tokens") or 0)}
    positions: list[tuple[str, float, dict[str, float]]] = []
    try:
        if endpoint == "chat":
            for item in _get(logprobs, "content") or []:
                top = {str(_get(t, "token")): float(_get(t, "logprob")) for t in _get(item, "top_logprobs") or []}
                positions.append((str(_get(item, "token")), float(_get(item, "logprob")), top))
        else:
            tokens, lps, tops = (_get(logprobs, k) or [] for k in ("tokens", "token_logprobs", "top_logprobs"))
            for token, lp, top in zip(tokens, lps, tops):
                positions.append((str(token), float(lp), {str(k): float(v) for k, v in (top or {}).items()}))
    except (TypeError, ValueError) as exc:
        return Response(text=None, finish_reason="error", error=f"The server's log-probabilities cannot be read: "
                        f"{type(exc).__name__}: {exc}.", **counts)
    if not positions:
        return Response(text=None, finish_reason="error", error="The server returned no log-probabilities; it may "
                        "not support logprobs/top_logprobs. Use method='argmax' / method='strict'.", **counts)
    choices = tuple(request.choices or ())
    lps = tuple(choice_logprobs_from_top(choices, positions))
    if all(v == -math.inf for v in lps):
        return Response(text=None, finish_reason="error", error=f"None of the choices {list(choices)} is among the "
                        f"server's top {TOP_LOGPROBS} log-probabilities of the answer's first tokens.", **counts)
    best = max(range(len(choices)), key=lambda i: (lps[i], -i))
    return Response(text=choices[best], finish_reason="stop", choice_logprobs=lps, **counts)


def _choice_wrapper(choices: Sequence[str]) -> dict[str, Any]:
    """The strict JSON schema ``{"answer": one of choices}`` (OpenAI has no choice constraint)."""
    return {"type": "object", "properties": {"answer": {"type": "string", "enum": list(choices)}},
            "required": ["answer"], "additionalProperties": False}


def _status_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        if message:
            return str(message)[:300]
    return str(getattr(exc, "message", exc))[:300]


def _retry_after(exc: Any) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
