"""What the planner and the engines agree on: model specs, requests, responses, Engine.

The planner builds :class:`Request` objects, looks them up in the cache, and sends
the misses to an :class:`Engine` obtained from the registry. An engine never sees
the frame, and the planner never imports a concrete engine.

Model specs are declarative, frozen dataclasses: they carry a provider name and the
parameters that identify the model, never a live client. Fields marked with
``performance_only()`` (batch size, threads, device) are excluded from fingerprints.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from .redact import redact
from .errors import ParameterError

__all__ = [
    "ModelSpec",
    "SamplingParams",
    "Message",
    "Request",
    "Response",
    "Engine",
    "EngineSession",
    "BatchSession",
    "open_session",
    "Trainer",
    "Executor",
    "TRAINING_HYPERPARAMETERS",
    "performance_only",
    "derive_seed",
]


def performance_only(default: Any = None, **kwargs: Any) -> Any:
    """A dataclass field that changes speed, never results, so fingerprints skip it."""
    return field(default=default, metadata={"performance_only": True}, **kwargs)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """Base class of declarative model specs.

    Subclasses set ``provider`` (the registry name of their engine) and add fields.
    ``identity()`` returns the fingerprintable description of the model; by default
    every field not marked :func:`performance_only`.

    A spec is a frozen dataclass that holds no live client: it can be fingerprinted,
    stored in a plan, and shipped to another process; the registry builds the engine
    (``provider`` -> engine class) when a collect needs it. Built-in subclasses:
    :class:`lazyllm.Transformers`, :class:`lazyllm.VLLM`, :class:`lazyllm.OpenAI`,
    :class:`lazyllm.TestModel` (:mod:`lazyllm.core.specs`).

    Attributes
    ----------
    provider : str
        The engine's registry name (``"transformers"``, ``"vllm"``, ``"openai"``, ``"test"``).

    Notes
    -----
    No cost: making a spec loads nothing. Override :meth:`identity` when a field holds a
    path of this machine, :meth:`prices` for API models (USD per 1M input and output
    tokens), :meth:`runtime_spec` when another engine runs it, and
    :meth:`supports_logprobs`.
    """

    provider: ClassVar[str] = ""

    def identity(self) -> dict[str, Any]:
        """The parameters that decide what the model outputs (no paths of this machine)."""
        out: dict[str, Any] = {"provider": self.provider, "spec": type(self).__name__}
        for f in dataclasses.fields(self):
            if f.metadata.get("performance_only"):
                continue
            out[f.name] = getattr(self, f.name)
        return out

    @property
    def display_name(self) -> str:
        """A short name for explain() and progress lines."""
        return f"{self.provider}:{type(self).__name__}"

    def prices(self) -> tuple[float, float] | None:
        """USD per million (input, output) tokens for priced API models; None for local models."""
        return None

    def runtime_spec(self) -> "ModelSpec":
        """The spec an engine is built from: ``self`` unless a performance-only setting
        hands the same model to another engine (``Transformers(engine="vllm")``). Its
        ``provider`` picks the engine; fingerprints always use ``self``."""
        return self

    def supports_logprobs(self) -> bool:
        """Whether the engine can answer ``Request(logprobs=True)`` (checked when a plan that
        needs log-probabilities is built, before any call)."""
        return True


@dataclass(frozen=True, slots=True, kw_only=True)
class SamplingParams:
    """Sampling parameters of one request.

    Parameters
    ----------
    temperature : float
        0 means greedy decoding.
    top_p : float
        Nucleus sampling mass in (0, 1].
    max_tokens : int
        Maximum number of generated tokens, per sample.
    seed : int
        Base seed; with the sample index it decides the sampled text.
    stop : tuple of str
        Generation ends before the first of these strings (not included in the text).
    """

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int = 0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ParameterError(f"temperature must be >= 0, got {self.temperature}. Use 0 for greedy decoding.")
        if not 0 < self.top_p <= 1:
            raise ParameterError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.max_tokens < 1:
            raise ParameterError(f"max_tokens must be >= 1, got {self.max_tokens}.")
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
            raise ParameterError(f"stop must be a tuple of non-empty strings, got {self.stop!r}.")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message."""

    role: str
    content: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """One LLM call: chat messages (or a raw prompt), sampling params, sample index.

    ``choices`` restricts the answer to one of the given strings; ``json_schema``
    (canonical JSON text) restricts it to JSON matching the schema. An engine that
    cannot enforce a constraint returns an error response for that request (never
    an unconstrained answer).

    ``logprobs`` (with ``choices`` only) asks for the model's distribution over the
    choices instead of a sampled answer: the response's ``choice_logprobs`` holds,
    per choice, the log-probability that the unconstrained answer *starts with* that
    choice and not with a longer choice that extends it (``"1"`` vs ``"10"`` on a
    tokenizer that splits digits), and ``text`` is the most probable choice. An
    engine computes it from the next-token log-probabilities along each choice's
    tokens (a prefill and at most one short continuation, no sampling loop). An
    engine that cannot return log-probabilities fails before it sends anything.

    ``reward`` asks a sequence-classification reward model for the scalar score of
    the conversation in ``messages`` (its last message is the assistant's response)
    or of the text ``prompt``: the response's ``score``; nothing is generated.
    """

    messages: tuple[Message, ...] = ()
    prompt: str | None = None
    params: SamplingParams = SamplingParams()
    sample_index: int = 0
    choices: tuple[str, ...] | None = None
    json_schema: str | None = None
    logprobs: bool = False
    reward: bool = False

    def __post_init__(self) -> None:
        if not (self.logprobs or self.reward):  # the common case: nothing to check (built once per row)
            return
        if self.logprobs and not self.choices:
            raise ParameterError("Request(logprobs=True) needs choices=...: log-probabilities are returned per choice.")
        if self.reward and (self.choices is not None or self.json_schema is not None or self.logprobs):
            raise ParameterError("Request(reward=True) scores a finished conversation: no choices, json_schema or logprobs.")

    def seed(self) -> int:
        """The seed of this sample: derived from params.seed and sample_index (63 bits)."""
        return derive_seed(self.params.seed, self.sample_index)

    def canonical(self) -> dict[str, Any]:
        """The request as plain data, used for cache keys (no performance settings)."""
        p = self.params
        out = {
            "messages": [[m.role, m.content] for m in self.messages],
            "prompt": self.prompt,
            "params": {
                "temperature": p.temperature,
                "top_p": p.top_p,
                "max_tokens": p.max_tokens,
                "seed": p.seed,
                "stop": list(p.stop),
            },
            "sample_index": self.sample_index,
            "choices": list(self.choices) if self.choices is not None else None,
            "json_schema": self.json_schema,
        }
        if self.logprobs:  # only when set: keys of requests without it are unchanged
            out["logprobs"] = True
        if self.reward:
            out["reward"] = True
        return out


def derive_seed(seed: int, sample_index: int) -> int:
    """Deterministic per-sample seed, the same on every machine and Python hash seed."""
    digest = hashlib.sha256(f"lazyllm-seed:{seed}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """The result of one request.

    ``finish_reason`` is ``"stop"`` (end of sequence or a stop string), ``"length"``
    (max_tokens reached) or ``"error"`` (then ``text`` is None and ``error`` says why;
    error responses are never cached).

    ``choice_logprobs`` answers a ``Request(logprobs=True)``: one natural-log
    probability per choice, in the request's order (``-inf`` for a choice the
    engine saw no probability for, such as one outside an API's top log-probs);
    not normalised over the choices. ``score`` answers a ``Request(reward=True)``
    (the reward model's scalar output; ``text`` is its ``repr``).

    ``reasoning`` is a reasoning model's trace (the ``<think>`` text, or a server's
    ``reasoning_content``) kept apart from the answer in ``text``; ``reasoning_tokens``
    are its tokens, counted within ``output_tokens`` (the answer's tokens are
    ``output_tokens - reasoning_tokens``). Both are stored in the cache record only when
    set, so records of other responses are unchanged.
    """

    text: str | None
    input_tokens: int = 0
    output_tokens: int = 0
    finish_reason: str = "stop"
    error: str | None = None
    choice_logprobs: tuple[float, ...] | None = None
    score: float | None = None
    reasoning: str | None = None
    reasoning_tokens: int = 0

    @classmethod
    def failed(cls, message: str) -> "Response":
        """A failed row: no text, ``finish_reason="error"`` and ``message`` (redacted: servers
        and engines may echo keys or URLs with credentials)."""
        return cls(text=None, finish_reason="error", error=redact(message))

    def to_record(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "text": self.text,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "finish_reason": self.finish_reason,
        }
        if self.choice_logprobs is not None:
            out["choice_logprobs"] = [float(v) for v in self.choice_logprobs]
        if self.score is not None:
            out["score"] = float(self.score)
        if self.reasoning is not None:  # only when set: records without a trace are unchanged
            out["reasoning"] = self.reasoning
        if self.reasoning_tokens:
            out["reasoning_tokens"] = int(self.reasoning_tokens)
        return out

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "Response":
        return cls(
            text=record["text"],
            input_tokens=int(record.get("input_tokens", 0)),
            output_tokens=int(record.get("output_tokens", 0)),
            finish_reason=str(record.get("finish_reason", "stop")),
            choice_logprobs=(None if record.get("choice_logprobs") is None
                             else tuple(float(v) for v in record["choice_logprobs"])),
            score=None if record.get("score") is None else float(record["score"]),
            reasoning=record.get("reasoning"),
            reasoning_tokens=int(record.get("reasoning_tokens", 0)),
        )


@runtime_checkable
class Engine(Protocol):
    """An LLM engine, created by the executor for one model spec and closed after.

    Engines are constructed as ``EngineClass(spec, workspace=Path)`` and must not load
    weights in ``__init__`` (the first ``generate`` call loads them), so that planning
    never pays for a model load.
    """

    spec: ModelSpec

    def generate(self, requests: Sequence[Request]) -> Iterator[Sequence[tuple[int, Response]]]:
        """Run ``requests``; yield batches of ``(index into requests, Response)`` as they finish.

        Every index is yielded exactly once. A failure of one batch yields error
        responses for that batch and goes on; only a failure to load raises
        :class:`~lazyllm.core.errors.EngineError`.
        """
        ...

    def close(self) -> None:
        """Release the model (memory, accelerator) so the next stage can use it."""
        ...

    # Optional: ``session() -> EngineSession | None``, a stream that takes requests while
    # others run (see :class:`EngineSession` and :func:`open_session`); None declines it.


@runtime_checkable
class EngineSession(Protocol):
    """A stream of requests into one engine: submit requests at any time, collect each
    response as it finishes (continuous batching).

    An engine that can take requests while others run offers ``session()`` (optional on
    :class:`Engine`; :func:`open_session` falls back to :class:`BatchSession` over
    ``generate``). The scheduler keeps about ``capacity`` requests in flight and submits
    each request as soon as it is ready, so a row's judge joins the batch its answer
    came from. One session of an engine at a time; the engine stays loaded after
    :meth:`close`.

    Attributes
    ----------
    capacity : int
        Requests in flight that keep the engine at full speed (more are accepted and
        wait in the engine).
    continuous : bool
        True when requests submitted while others run join them; False when the
        session runs what was submitted as one batch and the next submission waits for
        it (:class:`BatchSession`): the scheduler then submits only when nothing is in
        flight.
    """

    capacity: int
    continuous: bool

    def submit(self, requests: Sequence[Request]) -> list[int]:
        """Add ``requests``; return one ticket per request (ints unique in the session).

        Raises :class:`~lazyllm.core.errors.EngineError` when the engine cannot load."""
        ...

    def poll(self, timeout: float | None = None) -> list[tuple[int, Response]]:
        """The responses finished since the last poll, as ``(ticket, Response)``: waits up to
        ``timeout`` seconds (None: until one finishes) while requests are in flight; ``[]``
        when none finished in time or nothing is in flight. Every ticket is answered
        exactly once (a failed request: an error response)."""
        ...

    def close(self) -> None:
        """Give up on the requests still in flight (the engine stops them where it can)."""
        ...


class BatchSession:
    """:class:`EngineSession` over an engine that only has ``generate``: what was submitted
    runs as one ``generate`` call at the next :meth:`poll`, and submissions made while it
    runs wait for the following call (``continuous = False``).

    Parameters
    ----------
    engine : Engine
        Any engine; its ``spec.batch_size`` (default 32) times its ``parallelism``
        (replicas of a pool, default 1) is the capacity.

    Notes
    -----
    A poll returns the next part ``generate`` yields (one engine batch) and waits for it
    whatever ``timeout`` is; indices ``generate`` never yielded get an error response
    when it ends. Exceptions of ``generate`` propagate from :meth:`poll`.

    Examples
    --------
    >>> from lazyllm.core.specs import TestModel
    >>> from lazyllm.backends.testing import DeterministicEngine
    >>> session = BatchSession(DeterministicEngine(TestModel(batch_size=2)))
    >>> session.capacity, session.continuous
    (2, False)
    >>> session.submit([Request(prompt="a"), Request(prompt="b"), Request(prompt="c")])
    [0, 1, 2]
    >>> [(t, r.text) for t, r in session.poll()]
    [(0, 'echo[0|greedy]: a'), (1, 'echo[0|greedy]: b')]
    >>> [(t, r.text) for t, r in session.poll()], session.poll()
    ([(2, 'echo[0|greedy]: c')], [])
    """

    continuous = False

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        spec = getattr(engine, "spec", None)
        self.capacity = int(getattr(spec, "batch_size", 32) or 32) * int(getattr(engine, "parallelism", 1) or 1)
        self._tickets = 0
        self._waiting: list[tuple[int, Request]] = []
        self._running: Iterator[Sequence[tuple[int, Response]]] | None = None
        self._unanswered: dict[int, int] = {}  # index in the running call -> ticket

    def submit(self, requests: Sequence[Request]) -> list[int]:
        """Queue ``requests`` for the next ``generate`` call; their tickets."""
        tickets = list(range(self._tickets, self._tickets + len(requests)))
        self._tickets += len(requests)
        self._waiting.extend(zip(tickets, requests))
        return tickets

    def poll(self, timeout: float | None = None) -> list[tuple[int, Response]]:
        """The next part of the running ``generate`` call (started from what was queued)."""
        while True:
            if self._running is None:
                if not self._waiting:
                    return []
                batch, self._waiting = self._waiting, []
                self._unanswered = {i: t for i, (t, _) in enumerate(batch)}
                self._running = iter(self.engine.generate([r for _, r in batch]))
            try:
                part = next(self._running)
            except StopIteration:
                self._running = None
                missing, self._unanswered = self._unanswered, {}
                if missing:
                    return [(t, Response.failed("the engine returned no response")) for t in missing.values()]
                continue
            out = [(self._unanswered.pop(i), r) for i, r in part if i in self._unanswered]
            if out:
                return out

    def close(self) -> None:
        """Stop the running ``generate`` call (its engine aborts what is unfinished)."""
        running, self._running = self._running, None
        self._waiting, self._unanswered = [], {}
        close = getattr(running, "close", None)
        if close is not None:
            close()


def open_session(engine: Engine) -> EngineSession:
    """A streaming session of ``engine``: its own ``session()`` when it offers one (and does
    not decline it by returning None), else a :class:`BatchSession` over ``generate``.

    Parameters
    ----------
    engine : Engine

    Returns
    -------
    EngineSession

    Examples
    --------
    >>> from lazyllm.core.specs import TestModel
    >>> from lazyllm.backends.testing import DeterministicEngine
    >>> type(open_session(DeterministicEngine(TestModel()))).__name__
    'BatchSession'
    >>> open_session(DeterministicEngine(TestModel(streaming=True))).continuous
    True
    """
    make = getattr(engine, "session", None)
    session = make() if callable(make) else None
    return session if session is not None else BatchSession(engine)


#: The hyperparameters a training job takes, named once: ``lazyllm.TrainSpec`` declares them
#: (with defaults and docs), :meth:`lazyllm.TrainSpec.job_options` passes exactly these to
#: :meth:`Trainer.job`, and the built-in trainer's job (:class:`lazyllm.backends.train_job.TrainJob`)
#: accepts them (``tests/lazyllm/test_train.py`` keeps the three in step).
TRAINING_HYPERPARAMETERS = ("lora", "epochs", "max_steps", "learning_rate", "batch_size", "gradient_accumulation",
                            "max_length", "seed", "beta", "save_steps", "devices")


@runtime_checkable
class Trainer(Protocol):
    """A fine-tuning backend (TRL + PEFT is the built-in one), found by the planner through
    :func:`lazyllm.backends.registry.trainer_factory` (entry-point group ``lazyllm.trainers``).

    The planner collects the training rows, asks :meth:`job` for a validated job, runs
    :meth:`train`, and serves the result (``output_dir``: an adapter or full weights) as a
    plain model folder; a trainer never sees a plan.
    """

    name: str

    def job(self, **fields: Any) -> Any:
        """A validated training job: ``method``, ``base_dir``, ``output_dir``, ``train``/``eval``
        rows and the hyperparameters of :meth:`lazyllm.TrainSpec.job_options`."""
        ...

    def train(self, job: Any) -> Any:
        """Train to completion (resuming a checkpoint, or returning a finished training at
        once); return a result with ``output_dir``, ``adapter``, ``metrics``,
        ``resumed_from`` and ``card`` (the facts a model card states)."""
        ...

    def data_fingerprint(self, rows: Sequence[Mapping[str, Any]]) -> str:
        """Fingerprint of the rows that reach the trainer (keys a finished training)."""
        ...


@runtime_checkable
class Executor(Protocol):
    """Where a collect's engines run when not in this process (the built-in one: Ray), found
    through :func:`lazyllm.backends.registry.resolve_executor`. Performance only: an
    executor never changes results or fingerprints."""

    name: str

    def check_available(self) -> None:
        """Raise :class:`~lazyllm.core.errors.MissingDependencyError` when its package is missing."""
        ...

    def engine(self, spec: ModelSpec, *, workspace: Path) -> Engine:
        """An engine (for example a pool of replicas) that runs ``spec``; ``spec`` is a plain
        model spec (a trained model arrives as its weights folder)."""
        ...

    def read_parquet(self, paths: Sequence[str], rows: int, options: dict[str, Any] | None = None) -> Iterator[Any]:
        """Parquet files as ``polars.DataFrame`` partitions of at most ``rows`` rows, in order."""
        ...

    def replica_stats(self, engines: Sequence[Any]) -> list[dict[str, Any]]:
        """Per-replica records of the engines it made (model, requests, tokens/s, ...)."""
        ...


#: Optional on an engine class: ``token_counter(spec, workspace) -> Callable[[Sequence[Message]], int] | None``,
#: a cheap prompt-token counter (a tokenizer, no weights) used by ``explain()`` estimates.
TOKEN_COUNTER_HOOK = "token_counter"
