"""A deterministic, rule-based engine (provider ``"test"``) for tests and doctests.

:class:`DeterministicEngine` runs the spec :class:`lazyllm.core.specs.TestModel`: no
weights, no randomness, answers decided by the request text alone, so planner tests
can assert exact outputs and count how much engine work a plan caused:

- in this process, through the module counters :data:`CALLS`, :data:`BATCHES` and
  :data:`SUBMISSIONS` (reset with :func:`reset_counters`; read them as
  ``testing.CALLS``: ``from ... import CALLS`` copies the number);
- across processes, through ``TestModel(log_path=...)``: one JSON line per batch;
- the order of submissions and completions, through :data:`EVENTS`.

With ``TestModel(streaming=True)`` the engine offers a streaming session
(:meth:`DeterministicEngine.session`): continuous batching simulated in engine steps,
each poll one step, a request finishing after its ``steps``.

Examples
--------
>>> from pathlib import Path
>>> from lazyllm.models import TestModel
>>> from lazyllm.core.protocols import Message, Request, SamplingParams
>>> from lazyllm.backends import testing
>>> testing.reset_counters()
>>> spec = TestModel(rules=(("France", "Paris"),), fail_on=("boom",))
>>> engine = testing.DeterministicEngine(spec, workspace=Path("."))
>>> requests = [
...     Request(messages=(Message("user", "Capital of France?"),)),
...     Request(prompt="Say hello", params=SamplingParams(temperature=0.7, seed=3), sample_index=1),
...     Request(prompt="boom"),
... ]
>>> for batch in engine.generate(requests):
...     for i, r in batch:
...         print(i, r.text, r.output_tokens, r.finish_reason)
0 Paris 1 stop
1 echo[1|3]: Say hello 3 stop
2 None 0 error
>>> testing.CALLS, testing.SUBMISSIONS
(3, [3])
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from lazyllm.core.protocols import Request, Response
from lazyllm.core.specs import TestModel

from .reasoning import split_response

__all__ = ["DeterministicEngine", "CALLS", "BATCHES", "SUBMISSIONS", "EVENTS", "reset_counters", "request_key",
           "render"]

#: Requests answered by DeterministicEngine in this process (errors included).
CALLS: int = 0
#: Size of every engine batch run in this process, in order.
BATCHES: list[int] = []
#: Number of requests of every ``generate()`` call in this process, in order
#: (recorded when the call starts running, i.e. on its first ``next()``).
SUBMISSIONS: list[int] = []
#: ``("submit", text)`` when a request reaches the engine and ``("done", text)`` when its
#: answer is returned (``text``: :func:`render` of the request), in order, in this process.
EVENTS: list[tuple[str, str]] = []

_LOCK = threading.Lock()
_ECHO_CHARS = 60


def reset_counters() -> None:
    """Set :data:`CALLS` to 0 and empty :data:`BATCHES`, :data:`SUBMISSIONS` and :data:`EVENTS`."""
    global CALLS
    with _LOCK:
        CALLS = 0
        BATCHES.clear()
        SUBMISSIONS.clear()
        EVENTS.clear()


def request_key(request: Request) -> str:
    """SHA-256 (hex) of the request's canonical JSON: what the batch log records per request."""
    text = json.dumps(request.canonical(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def render(request: Request) -> str:
    """The text rules and ``fail_on`` are matched against: the message contents joined
    by a newline, or the raw prompt when there are no messages."""
    if request.messages:
        return "\n".join(m.content for m in request.messages)
    return request.prompt or ""


class DeterministicEngine:
    """Answer requests from scripted rules; the same request always gets the same answer.

    Parameters
    ----------
    spec : lazyllm.core.specs.TestModel
        ``rules`` (needle, answer) pairs, ``fail_on`` strings, ``delay`` (seconds per
        batch), ``batch_size`` (requests per batch) and ``log_path``.
    workspace : pathlib.Path
        Unused (accepted for the Engine protocol).

    Notes
    -----
    For each request, with ``text = render(request)``:

    1. if a ``fail_on`` string occurs in ``text``: an error response
       (``finish_reason="error"``, ``text=None``);
    2. else the answer of the first rule whose needle occurs in ``text``;
    3. else an echo ``"echo[<sample_index>|<seed>]: <last>"`` where ``<seed>`` is
       ``params.seed`` for sampled requests (temperature > 0) and ``"greedy"`` for
       greedy ones, and ``<last>`` is the first 60 characters of the last message's
       content (or of the prompt). Greedy requests ignore the seed; the sample index
       always shows, so samples of one request differ.

    The answer is then cut before the first stop string (and stripped, as the
    transformers engine does; ``finish_reason="stop"``) and, if it has more than
    ``max_tokens`` words, cut to ``max_tokens`` words (``finish_reason="length"``).
    Token counts are whitespace-separated words: ``input_tokens`` of ``text``,
    ``output_tokens`` of the answer. An answer that starts with a ``<think>...</think>``
    trace (a scripted rule's answer) is split as a reasoning model's
    (:func:`lazyllm.backends.reasoning.split_response`): the trace goes to
    ``reasoning``, its words to ``reasoning_tokens``. Choice and JSON schema constraints are not
    enforced: the answer is returned as is.

    A request with ``logprobs`` gets ``choice_logprobs``: ``log(probability)`` of
    each choice from the first ``distributions`` entry whose needle occurs in
    ``text`` (unlisted choices ``-inf``); without one, the answer above when it is
    a choice (probability 1, others ``-inf``), else an error response. Its text is
    the most probable choice (the first one on ties). A request with ``choices``
    but no ``logprobs`` that matches a ``distributions`` needle is answered with
    that most probable choice (what constrained greedy decoding would give).

    A request with ``reward`` gets ``score``: the sum of the ``rewards`` whose
    needle occurs in ``text`` (0.0 when none does).

    Before a batch runs, ``exit_on`` ends the process and ``raise_on`` raises
    ``RuntimeError`` if a request of the batch contains one of their strings.

    Requests run in the given order, in batches of ``batch_size``; after each batch
    the engine sleeps ``delay`` seconds, updates the counters and, when ``log_path``
    is set, appends ``{"pid", "n", "keys"}`` (keys: :func:`request_key` of each
    request) as one JSON line, flushed and fsynced, before yielding the batch.

    Cost: no model, microseconds per request plus ``delay`` per batch.
    """

    def __init__(self, spec: TestModel, *, workspace: Path | None = None) -> None:
        self.spec = spec
        self.workspace = Path(workspace) if workspace is not None else None
        self.closed = False

    def generate(self, requests: Sequence[Request]) -> Iterator[list[tuple[int, Response]]]:
        """Yield ``[(index, Response), ...]`` per batch of ``spec.batch_size`` requests, in order.

        Raises
        ------
        OSError
            ``log_path`` cannot be written.
        """
        global CALLS
        with _LOCK:
            SUBMISSIONS.append(len(requests))
            EVENTS.extend(("submit", render(r)) for r in requests)
        size = max(1, int(self.spec.batch_size))
        for start in range(0, len(requests), size):
            batch = list(enumerate(requests[start : start + size], start))
            self._crash([r for _, r in batch])
            responses = [(i, self.respond(r)) for i, r in batch]
            if self.spec.delay:
                time.sleep(self.spec.delay)
            with _LOCK:
                CALLS += len(batch)
                BATCHES.append(len(batch))
                EVENTS.extend(("done", render(r)) for _, r in batch)
            if self.spec.log_path:
                self._log([r for _, r in batch])
            yield responses

    def session(self) -> "SteppedSession | None":
        """A streaming session when ``spec.streaming`` (else None: the scheduler uses
        ``generate`` through :class:`lazyllm.core.protocols.BatchSession`).

        Returns
        -------
        SteppedSession or None

        Examples
        --------
        >>> from lazyllm.core.protocols import Request
        >>> engine = DeterministicEngine(TestModel(streaming=True, steps=(("slow", 3),)))
        >>> session = engine.session()
        >>> session.submit([Request(prompt="slow one"), Request(prompt="fast one")])
        [0, 1]
        >>> [t for t, _ in session.poll()]  # step 1: the fast request finishes
        [1]
        >>> session.submit([Request(prompt="joins")])  # joins the running batch
        [2]
        >>> [t for t, _ in session.poll()], [t for t, _ in session.poll()]  # steps 2 and 3
        ([2], [0])
        """
        return SteppedSession(self) if self.spec.streaming else None

    def _crash(self, batch: Sequence[Request]) -> None:
        """``exit_on``: end this process; ``raise_on``: raise out of ``generate``."""
        if not (self.spec.exit_on or self.spec.raise_on):
            return
        texts = [render(r) for r in batch]
        if any(needle in t for needle in self.spec.exit_on for t in texts):
            os._exit(3)
        hit = next((needle for needle in self.spec.raise_on for t in texts if needle in t), None)
        if hit is not None:
            raise RuntimeError(f"TestModel {self.spec.name!r} raises on batches containing {hit!r}.")

    def respond(self, request: Request) -> Response:
        """The response to one request (no counters, no log, no delay)."""
        text = render(request)
        input_tokens = len(text.split())
        for needle in self.spec.fail_on:
            if needle in text:
                return Response(
                    text=None,
                    input_tokens=input_tokens,
                    finish_reason="error",
                    error=f"TestModel {self.spec.name!r} fails on requests containing {needle!r}.",
                )
        if request.reward:
            score = float(sum(value for needle, value in self.spec.rewards if needle in text))
            return Response(text=repr(score), input_tokens=input_tokens, output_tokens=0, score=score)
        if request.logprobs:
            return self._distribution(request, text, input_tokens)
        if request.choices and any(needle in text for needle, _ in self.spec.distributions):
            argmax = self._distribution(request, text, input_tokens)  # the most probable choice, as decoding would
            return Response(text=argmax.text, input_tokens=input_tokens, output_tokens=1, finish_reason="stop")
        answer = next((a for needle, a in self.spec.rules if needle in text), None)
        if answer is None:
            last = request.messages[-1].content if request.messages else (request.prompt or "")
            params = request.params
            seed = params.seed if params.temperature > 0 else "greedy"
            answer = f"echo[{request.sample_index}|{seed}]: {last[:_ECHO_CHARS]}"
        finish_reason = "stop"
        cuts = [pos for pos in (answer.find(s) for s in request.params.stop) if pos >= 0]
        if cuts:
            answer = answer[: min(cuts)].strip()
        words = answer.split()
        if len(words) > request.params.max_tokens:
            words = words[: request.params.max_tokens]
            answer = " ".join(words)
            finish_reason = "length"
        response = Response(text=answer, input_tokens=input_tokens, output_tokens=len(words),
                            finish_reason=finish_reason)
        return split_response(response, request, count=lambda t: len(t.split()))

    def _distribution(self, request: Request, text: str, input_tokens: int) -> Response:
        choices = tuple(request.choices or ())
        scripted = next((dict(d) for needle, d in self.spec.distributions if needle in text), None)
        if scripted is None:
            answer = next((a for needle, a in self.spec.rules if needle in text), None)
            if answer not in choices:
                return Response(text=None, input_tokens=input_tokens, finish_reason="error",
                                error=f"TestModel {self.spec.name!r} has no distribution for this request and its "
                                      f"answer {answer!r} is not one of the choices {list(choices)}.")
            scripted = {answer: 1.0}
        logprobs = tuple(math.log(scripted[c]) if scripted.get(c, 0.0) > 0 else -math.inf for c in choices)
        best = max(range(len(choices)), key=lambda i: (logprobs[i], -i))
        return Response(text=choices[best], input_tokens=input_tokens, output_tokens=0, finish_reason="stop",
                        choice_logprobs=logprobs)

    def _log(self, batch: Sequence[Request]) -> None:
        line = json.dumps({"pid": os.getpid(), "n": len(batch), "keys": [request_key(r) for r in batch]}) + "\n"
        path = Path(self.spec.log_path)  # type: ignore[arg-type]
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())  # one write in append mode: lines of processes never interleave
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Nothing to release; marks the engine closed (tests check the executor calls it)."""
        self.closed = True


class SteppedSession:
    """The streaming session of a :class:`DeterministicEngine` (``TestModel(streaming=True)``).

    Continuous batching simulated in steps: each :meth:`poll` is one engine step (it
    sleeps ``spec.delay``); a request finishes after the ``steps`` of the first needle
    it contains (default 1) counted from the step after its submission, and requests
    submitted between two steps join the running ones. ``capacity`` is
    ``spec.batch_size``. Counters: :data:`SUBMISSIONS` per :meth:`submit`, :data:`CALLS`
    per answer, :data:`BATCHES` per step that finished requests, :data:`EVENTS` per
    request submitted and answered; ``log_path`` gets one line per such step.

    Parameters
    ----------
    engine : DeterministicEngine
    """

    continuous = True

    def __init__(self, engine: DeterministicEngine) -> None:
        self.engine = engine
        self.capacity = max(1, int(engine.spec.batch_size))
        self._next = 0
        self._running: list[list] = []  # [ticket, request, steps left]

    def submit(self, requests: Sequence[Request]) -> list[int]:
        """Add ``requests`` to the running batch; their tickets.

        Raises
        ------
        RuntimeError
            A request contains a ``raise_on`` string (``exit_on`` ends the process).
        """
        self.engine._crash(requests)
        tickets = list(range(self._next, self._next + len(requests)))
        self._next += len(requests)
        spec = self.engine.spec
        with _LOCK:
            SUBMISSIONS.append(len(requests))
            EVENTS.extend(("submit", render(r)) for r in requests)
        for ticket, request in zip(tickets, requests):
            text = render(request)
            steps = next((int(n) for needle, n in spec.steps if needle in text), 1)
            self._running.append([ticket, request, max(1, steps)])
        return tickets

    def poll(self, timeout: float | None = None) -> list[tuple[int, Response]]:
        """One engine step: the requests that finished in it (``[]`` when none is running)."""
        global CALLS
        if not self._running:
            return []
        if self.engine.spec.delay:
            time.sleep(self.engine.spec.delay)
        for item in self._running:
            item[2] -= 1
        done = [item for item in self._running if item[2] <= 0]
        self._running = [item for item in self._running if item[2] > 0]
        if not done:
            return []
        with _LOCK:
            CALLS += len(done)
            BATCHES.append(len(done))
            EVENTS.extend(("done", render(request)) for _, request, _ in done)
        if self.engine.spec.log_path:
            self.engine._log([request for _, request, _ in done])
        return [(ticket, self.engine.respond(request)) for ticket, request, _ in done]

    def close(self) -> None:
        """Forget the requests still running."""
        self._running = []
