"""Provider rate limits: requests per minute and tokens per minute, as token buckets.

API providers limit each key to so many requests and so many tokens per minute (OpenAI
counts a request's tokens as its prompt plus ``max_tokens`` when it arrives and settles
on the real usage afterwards) and answer HTTP 429 past that. A client that only reacts
to 429s wastes attempts and, with many requests in flight, keeps hitting the limit.
:class:`RateLimiter` keeps a client under the limits instead: before each request it
takes one request and the request's estimated tokens from two token buckets, waiting
until both have enough; after the answer it settles the token bucket on the usage the
server reports; and it reads the provider's rate-limit headers
(``x-ratelimit-remaining-*``, ``x-ratelimit-reset-*``), pausing until the reset when the
server says nothing is left.

A bucket holds at most one second's worth of its limit (at least one request, and at
least the largest single request's tokens): providers enforce per-minute limits over
short windows (OpenAI documents 60,000 RPM as 1,000 requests per second), so a full
minute's burst at the start would be answered with 429s.

>>> import asyncio
>>> limiter = RateLimiter(requests_per_minute=600)
>>> asyncio.run(limiter.acquire(0))
0.0
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping

from lazyllm.core.errors import ParameterError

__all__ = ["RateLimiter", "parse_reset"]

_DURATION = re.compile(r"(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m(?!s))?(?:(?P<s>\d+(?:\.\d+)?)s)?"
                       r"(?:(?P<ms>\d+(?:\.\d+)?)ms)?$")


def parse_reset(value: str | None) -> float | None:
    """Seconds in a rate-limit reset header: ``"1s"``, ``"6m0s"``, ``"120ms"``, ``"1h2m3.5s"`` or
    a plain number of seconds; None when absent or unreadable.

    >>> parse_reset("6m0s"), parse_reset("120ms"), parse_reset("1.5"), parse_reset("soon")
    (360.0, 0.12, 1.5, None)
    """
    if not value:
        return None
    text = value.strip()
    try:
        return max(float(text), 0.0)
    except ValueError:
        pass
    match = _DURATION.match(text)
    if not match or not any(match.groupdict().values()):
        return None
    parts = {k: float(v) for k, v in match.groupdict().items() if v}
    return parts.get("h", 0) * 3600 + parts.get("m", 0) * 60 + parts.get("s", 0) + parts.get("ms", 0) / 1000


class _Bucket:
    """A token bucket: ``rate`` per second, at most ``capacity``, starting full."""

    def __init__(self, per_minute: float, capacity: float, now: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = capacity
        self.level = capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (0 when it is)."""
        need = min(amount, self.capacity) - self.level
        return 0.0 if need <= 1e-9 * max(1.0, amount) else need / self.rate  # tolerance: float rounding


class RateLimiter:
    """Keeps an async client under requests-per-minute and tokens-per-minute limits.

    Parameters
    ----------
    requests_per_minute : float, optional
        The provider's RPM limit for this key and model (None: no limit).
    tokens_per_minute : float, optional
        The provider's TPM limit (None: no limit). A request counts as its estimated
        prompt tokens plus ``max_tokens`` until its answer settles it.
    clock : callable, optional
        Monotonic seconds (tests pass a fake one). Default ``time.monotonic``.
    sleep : callable, optional
        ``async sleep(seconds)`` (default ``asyncio.sleep``).

    Raises
    ------
    PlanError
        A limit that is not a positive number.

    Notes
    -----
    Source: the token-bucket algorithm (Turner 1986, "New directions in
    communications"); OpenAI's rate-limit documentation for what is counted and for
    the ``x-ratelimit-*`` headers. Not thread-safe: use it from one event loop.
    Cost: no calls; a waiting request keeps no connection open.
    """

    def __init__(self, requests_per_minute: float | None = None, tokens_per_minute: float | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] | None = None) -> None:
        for name, value in (("requests_per_minute", requests_per_minute), ("tokens_per_minute", tokens_per_minute)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise ParameterError(f"{name} must be a positive number or None, got {value!r}.")
        self._clock = clock
        self._sleep = sleep or asyncio.sleep
        now = clock()
        self.requests = None if requests_per_minute is None else \
            _Bucket(requests_per_minute, max(1.0, requests_per_minute / 60.0), now)
        self.tokens = None if tokens_per_minute is None else \
            _Bucket(tokens_per_minute, max(1.0, tokens_per_minute / 60.0), now)
        self._paused_until = 0.0
        self._lock: asyncio.Lock | None = None
        #: seconds spent waiting, requests that waited, and pauses taken from headers
        self.stats = {"waited_s": 0.0, "waits": 0, "header_pauses": 0}

    @property
    def active(self) -> bool:
        """True when some limit is set."""
        return self.requests is not None or self.tokens is not None

    async def acquire(self, tokens: int) -> float:
        """Wait until one request and ``tokens`` tokens may be sent; take them.

        Parameters
        ----------
        tokens : int
            The request's estimated tokens (prompt + ``max_tokens``). A request larger
            than the bucket waits for a full bucket, then goes (the bucket goes
            negative: later requests wait the longer).

        Returns
        -------
        float
            Seconds waited.
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        waited = 0.0
        async with self._lock:  # first come, first served: no request is starved by smaller ones
            while True:
                now = self._clock()
                delay = max(self._paused_until - now, 0.0)
                for bucket, amount in ((self.requests, 1.0), (self.tokens, float(tokens))):
                    if bucket is not None:
                        bucket.refill(now)
                        delay = max(delay, bucket.wait_for(amount))
                if delay <= 1e-6:
                    break
                waited += delay
                await self._sleep(delay)
            if self.requests is not None:
                self.requests.level -= 1.0
            if self.tokens is not None:
                self.tokens.level -= float(tokens)
        if waited:
            self.stats["waited_s"] += waited
            self.stats["waits"] += 1
        return waited

    async def wait_pause(self) -> float:
        """Wait until a pause the provider's headers asked for (:meth:`observe`) is over: the
        last look before a request that took its share in :meth:`acquire` goes out, so that
        requests already queued for a connection also hold back.

        Returns
        -------
        float
            Seconds waited.
        """
        waited = 0.0
        while (delay := self._paused_until - self._clock()) > 1e-6:
            waited += delay
            await self._sleep(delay)
        self.stats["waited_s"] += waited
        return waited

    def settle(self, estimated: int, actual: int | None) -> None:
        """Correct the token bucket once the server reports a request's real usage
        (prompt + completion tokens): the difference to the estimate is given back or
        taken. ``actual=None`` (no usage reported) keeps the estimate."""
        if self.tokens is None or actual is None:
            return
        self.tokens.refill(self._clock())
        self.tokens.level = min(self.tokens.capacity, self.tokens.level + (estimated - actual))

    def observe(self, headers: Mapping[str, str] | None) -> None:
        """Read the provider's rate-limit headers of a response (or a 429).

        ``x-ratelimit-remaining-requests`` / ``-tokens`` at 0 pause every request until
        the matching ``x-ratelimit-reset-*`` has passed (1 s when no reset is given).
        """
        if not headers:
            return
        low = {k.lower(): v for k, v in headers.items()}
        pause = 0.0
        for kind in ("requests", "tokens"):
            remaining = low.get(f"x-ratelimit-remaining-{kind}")
            try:
                exhausted = remaining is not None and float(remaining) <= 0
            except ValueError:
                exhausted = False
            if exhausted:
                pause = max(pause, parse_reset(low.get(f"x-ratelimit-reset-{kind}")) or 1.0)
        if pause > 0:
            self._paused_until = max(self._paused_until, self._clock() + pause)
            self.stats["header_pauses"] += 1
