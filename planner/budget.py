"""A hard budget for one collect: USD (``max_cost``) and tokens (``max_total_tokens``).

Before a request is sent, its cost is estimated as an upper bound: its prompt tokens (the
model's tokenizer when on disk, else about 4 characters per token) plus ``max_tokens``
generated, priced with the model's :meth:`~lazyllm.core.protocols.ModelSpec.prices`. A
request is sent only while

    spent (reported usage of the answers back) + in flight (estimates of the requests sent
    and not answered yet) + its own estimate  <=  the budget.

The first request that does not fit closes the budget for the rest of the collect: it and
every later request are not sent, and their rows are null with an error that names the
budget. Answers already back are committed to the cache as usual, so a rerun with a larger
budget sends only what is missing.

The accounting wraps the engine the scheduler submits to (:meth:`BudgetLedger.guard`):
refused requests come back as error responses (never cached, their leases released at
once) whose error starts with :data:`REFUSAL`; the scheduler recognises them
(:func:`is_refusal`) and does not count them as LLM calls.

>>> from lazyllm.core.protocols import Message, Request, SamplingParams
>>> from lazyllm.models import TestModel
>>> ledger = BudgetLedger(Budget(max_total_tokens=100))
>>> ask = Request(messages=(Message("user", "x" * 40),), params=SamplingParams(max_tokens=30))
>>> ledger.estimate(ask, TestModel(), lambda msgs: 10)
(0.0, 40)
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from lazyllm.core.errors import ParameterError, PlanError
from lazyllm.core.protocols import Message, ModelSpec, Request, Response

from .nodes import LLMNode, PlanNode, walk
from .stats import NodeStats

__all__ = ["Budget", "BudgetLedger", "check_prices", "over_budget", "REFUSAL", "is_refusal"]

#: How the error of a request the budget did not send begins.
REFUSAL = "not sent: the collect's budget"


def is_refusal(response: Response) -> bool:
    """Whether ``response`` is the budget's answer to a request it did not send.

    Parameters
    ----------
    response : Response

    Returns
    -------
    bool
        True when the response is an error that starts with :data:`REFUSAL`.

    Examples
    --------
    >>> is_refusal(Response.failed(REFUSAL + " (max_total_tokens=10) would be passed"))
    True
    >>> is_refusal(Response.failed("The batch failed"))
    False
    """
    return response.error is not None and response.error.startswith(REFUSAL)


@dataclass(frozen=True, slots=True)
class Budget:
    """The most one collect may spend; None: no limit of that kind.

    Parameters
    ----------
    max_cost : float, optional
        USD, over every LLM call the collect sends (cache hits cost nothing).
    max_total_tokens : int, optional
        Prompt plus generated tokens, over every LLM call the collect sends.

    Raises
    ------
    ParameterError
        A limit that is not a positive number.
    """

    max_cost: float | None = None
    max_total_tokens: int | None = None

    def __post_init__(self) -> None:
        cost, tokens = self.max_cost, self.max_total_tokens
        if cost is not None and (isinstance(cost, bool) or not isinstance(cost, (int, float))
                                 or not math.isfinite(cost) or cost <= 0):
            raise ParameterError(f"max_cost must be a positive number of USD, got {cost!r}.")
        if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens <= 0):
            raise ParameterError(f"max_total_tokens must be a positive int, got {tokens!r}.")

    @property
    def active(self) -> bool:
        return self.max_cost is not None or self.max_total_tokens is not None

    def describe(self) -> str:
        parts = []
        if self.max_cost is not None:
            parts.append(f"max_cost=${self.max_cost:g}")
        if self.max_total_tokens is not None:
            parts.append(f"max_total_tokens={self.max_total_tokens:,}")
        return " and ".join(parts)


def check_prices(roots: Sequence[PlanNode], budget: Budget) -> None:
    """Raise PlanError when ``max_cost`` is set and an LLM node's model has no price (before any call).

    Parameters
    ----------
    roots : sequence of PlanNode
        The plans to run.
    budget : Budget
        The collect's budget.

    Raises
    ------
    PlanError
        A model without :meth:`~lazyllm.core.protocols.ModelSpec.prices` under a ``max_cost``.
    """
    if budget.max_cost is None:
        return
    for root in roots:
        for node in walk(root):
            if isinstance(node, LLMNode) and node.model.prices() is None:
                raise PlanError(f"collect(max_cost=...) needs priced models, and {node.model.display_name} (used by "
                                f"{node.kind.lower()} {node.column!r}) has no price. Give the spec its price "
                                "(price_per_million=(input, output) USD per 1M tokens), or limit tokens with "
                                "max_total_tokens=... instead.")


def over_budget(stats: dict[str, NodeStats], budget: Budget) -> str | None:
    """The warning ``explain()`` shows when a dry run's estimate exceeds ``budget``, or None.

    Parameters
    ----------
    stats : dict of str to NodeStats
        A dry run's per-node estimates.
    budget : Budget
        The budget the collect would run under.

    Returns
    -------
    str or None
        One line naming the estimate and the limit it passes.
    """
    cost = sum(s.est_cost or 0.0 for s in stats.values())
    tokens = sum(s.est_input_tokens + s.est_output_tokens for s in stats.values())
    over = []
    if budget.max_cost is not None and cost > budget.max_cost:
        over.append(f"estimated cost ${cost:.4g} > max_cost=${budget.max_cost:g}")
    if budget.max_total_tokens is not None and tokens > budget.max_total_tokens:
        over.append(f"estimated tokens {tokens:,} > max_total_tokens={budget.max_total_tokens:,}")
    if not over:
        return None
    return ("warning: " + "; ".join(over) + " (upper bounds: output estimated at max_tokens unless cached). "
            "The run stops sending at the budget; rows not sent are null with an error naming it.")


class BudgetLedger:
    """What one collect has spent and has in flight, against its :class:`Budget` (thread-safe).

    Parameters
    ----------
    budget : Budget
        The limits.

    Attributes
    ----------
    spent_cost, spent_tokens : float, int
        Reported usage of the answers back (cost only for priced models).
    refused : int
        Requests not sent because of the budget.
    """

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.spent_cost = 0.0
        self.spent_tokens = 0
        self.flight_cost = 0.0
        self.flight_tokens = 0
        self.refused = 0
        self.closed_by: str | None = None  # the message of the first refusal
        self._lock = threading.Lock()

    @staticmethod
    def estimate(request: Request, spec: ModelSpec, count: Callable[[Sequence[Message]], int]) -> tuple[float, int]:
        """Upper-bound (USD, tokens) of one request: prompt tokens by ``count`` (raw prompts:
        characters / 4) plus ``max_tokens`` generated (1 for log-probabilities, 0 for rewards).

        Parameters
        ----------
        request : Request
            The request to send.
        spec : ModelSpec
            Its model (for :meth:`~lazyllm.core.protocols.ModelSpec.prices`).
        count : callable
            Prompt tokens of a list of messages.

        Returns
        -------
        (float, int)
            USD (0.0 for a model without a price) and tokens.
        """
        prompt = count(request.messages) if request.messages else len(request.prompt or "") // 4 + 1
        out = 0 if request.reward else 1 if request.logprobs else request.params.max_tokens
        prices = spec.prices()
        cost = (prompt * prices[0] + out * prices[1]) / 1e6 if prices else 0.0
        return cost, prompt + out

    def _fits(self, cost: float, tokens: int) -> bool:
        b = self.budget
        if b.max_cost is not None and self.spent_cost + self.flight_cost + cost > b.max_cost:
            return False
        return b.max_total_tokens is None or self.spent_tokens + self.flight_tokens + tokens <= b.max_total_tokens

    def admit(self, cost: float, tokens: int) -> str | None:
        """Reserve one request's estimate; None when admitted, else the refusal's message."""
        with self._lock:
            if self.closed_by is None and self._fits(cost, tokens):
                self.flight_cost += cost
                self.flight_tokens += tokens
                return None
            if self.closed_by is None:
                self.closed_by = (
                    f"{REFUSAL} ({self.budget.describe()}) would be passed (spent "
                    f"${self.spent_cost:.4g} / {self.spent_tokens:,} tokens, in flight ${self.flight_cost:.4g} / "
                    f"{self.flight_tokens:,} tokens, this request up to ${cost:.4g} / {tokens:,} tokens). Answers "
                    "already back are cached: rerun with a larger budget to continue where this run stopped.")
            self.refused += 1
            return self.closed_by

    def settle(self, cost: float, tokens: int, response: Response | None, spec: ModelSpec) -> None:
        """Replace a request's reserved estimate by its reported usage (``response`` None: not answered)."""
        with self._lock:
            self.flight_cost -= cost
            self.flight_tokens -= tokens
            if response is None:
                return
            used = response.input_tokens + response.output_tokens
            prices = spec.prices()
            self.spent_tokens += used
            if prices:
                self.spent_cost += (response.input_tokens * prices[0] + response.output_tokens * prices[1]) / 1e6

    def guard(self, engine: Any, spec: ModelSpec, count: Callable[[Sequence[Message]], int]) -> "BudgetedEngine":
        """``engine`` behind this ledger: requests over the budget are answered with errors, unsent.

        Parameters
        ----------
        engine : Engine
            The engine the scheduler submits to.
        spec : ModelSpec
            The model of the requests (its prices).
        count : callable
            Prompt tokens of a list of messages (see :meth:`estimate`).

        Returns
        -------
        BudgetedEngine
            An engine with ``engine``'s attributes (``spec``, ``parallelism``, ...).
        """
        return BudgetedEngine(engine, self, spec, count)


class BudgetedEngine:
    """An engine whose submissions pass a :class:`BudgetLedger` first (see :meth:`BudgetLedger.guard`)."""

    def __init__(self, engine: Any, ledger: BudgetLedger, spec: ModelSpec,
                 count: Callable[[Sequence[Message]], int]) -> None:
        self._engine, self._ledger, self._spec, self._count = engine, ledger, spec, count

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def session(self) -> None:
        """Declines a streaming session (:func:`lazyllm.core.protocols.open_session` then
        sends batch by batch through :meth:`generate`), so that every submission passes the
        budget; the wrapped engine's own session would bypass it."""
        return None

    def generate(self, requests: Sequence[Request]) -> Iterator[list[tuple[int, Response]]]:
        """Send the requests that fit the budget to the wrapped engine; answer the others at once
        with error responses naming the budget. Every index is yielded once."""
        ledger = self._ledger
        sent: list[int] = []
        reserved: dict[int, tuple[float, int]] = {}
        refused: list[tuple[int, Response]] = []
        for i, request in enumerate(requests):
            cost, tokens = ledger.estimate(request, self._spec, self._count)
            why = ledger.admit(cost, tokens)
            if why is None:
                sent.append(i)
                reserved[i] = (cost, tokens)
            else:
                refused.append((i, Response.failed(why)))
        try:
            if refused:
                yield refused
            if sent:
                for part in self._engine.generate([requests[i] for i in sent]):
                    out = [(sent[j], response) for j, response in part]
                    for i, response in out:
                        ledger.settle(*reserved.pop(i), response, self._spec)
                    yield out
        finally:  # not answered (an engine failure, an interrupt): no longer in flight
            for cost, tokens in reserved.values():
                ledger.settle(cost, tokens, None, self._spec)
