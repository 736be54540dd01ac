"""The rate limiter on a fake clock: requests and tokens per minute, settling, headers."""

from __future__ import annotations

import asyncio

import pytest

from lazyllm.backends.ratelimit import RateLimiter, parse_reset
from lazyllm.errors import PlanError


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def _send(limiter: RateLimiter, clock: FakeClock, tokens: list[int]) -> list[float]:
    """Acquire for each request in order; the times at which each was let through."""
    async def run() -> list[float]:
        out = []
        for t in tokens:
            await limiter.acquire(t)
            out.append(clock.now)
        return out
    return asyncio.run(run())


def test_requests_per_minute_are_kept_after_a_one_second_burst():
    clock = FakeClock()
    limiter = RateLimiter(requests_per_minute=300, clock=clock, sleep=clock.sleep)  # 5 per second
    times = _send(limiter, clock, [0] * 65)
    assert times[:5] == [100.0] * 5  # the bucket holds one second's worth
    steady = (len(times) - 5) / (times[-1] - times[4])
    assert steady == pytest.approx(5.0, rel=0.01)
    assert all(b - a <= 0.2 + 1e-9 for a, b in zip(times[5:], times[6:]))  # never slower than the limit
    assert limiter.stats["waits"] == 60


def test_tokens_per_minute_count_prompt_plus_max_tokens_and_settle_on_usage():
    clock = FakeClock()
    limiter = RateLimiter(tokens_per_minute=6000, clock=clock, sleep=clock.sleep)  # 100 tokens/s, bucket 100
    times = _send(limiter, clock, [100, 100])
    assert times == [100.0, 101.0]  # the second waits a second for 100 tokens
    limiter.settle(estimated=100, actual=40)  # the server used 40: 60 come back
    assert _send(limiter, clock, [60]) == [101.0]
    limiter.settle(estimated=60, actual=None)  # no usage reported: the estimate stands
    assert _send(limiter, clock, [100]) == [102.0]


def test_both_limits_wait_for_the_scarcer_one():
    clock = FakeClock()
    limiter = RateLimiter(requests_per_minute=6000, tokens_per_minute=600, clock=clock, sleep=clock.sleep)
    times = _send(limiter, clock, [10] * 4)  # 10 tokens/s, bucket 10: one request per second
    assert times == [100.0, 101.0, 102.0, 103.0]


def test_headers_saying_nothing_is_left_pause_until_the_reset():
    clock = FakeClock()
    limiter = RateLimiter(requests_per_minute=6000, clock=clock, sleep=clock.sleep)
    limiter.observe({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2.5s",
                     "X-RateLimit-Remaining-Tokens": "5000"})
    assert _send(limiter, clock, [0]) == [102.5]
    limiter.observe({"x-ratelimit-remaining-tokens": "12", "x-ratelimit-reset-tokens": "1m"})
    assert _send(limiter, clock, [0]) == [102.5] and limiter.stats["header_pauses"] == 1


@pytest.mark.parametrize("value,seconds", [("1s", 1.0), ("6m0s", 360.0), ("120ms", 0.12), ("1h2m3s", 3723.0),
                                           ("0.5", 0.5), (None, None), ("", None), ("later", None)])
def test_reset_headers_parse(value, seconds):
    assert parse_reset(value) == (pytest.approx(seconds) if seconds is not None else None)


@pytest.mark.parametrize("kwargs", [{"requests_per_minute": 0}, {"tokens_per_minute": -5},
                                    {"requests_per_minute": "fast"}, {"tokens_per_minute": True}])
def test_limits_must_be_positive_numbers(kwargs):
    with pytest.raises(PlanError, match="must be a positive number"):
        RateLimiter(**kwargs)
