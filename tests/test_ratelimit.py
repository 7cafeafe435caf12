"""The token buckets of ratelimit.py, on a clock the test moves."""

from __future__ import annotations

import pytest

from reelq.ratelimit import Limit, MemoryRateLimiter, retry_after_header


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_full_bucket_admits_its_burst_then_refuses_with_the_wait_for_one_token() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(clock=clock)
    limit = Limit(rate=2.0, burst=5)
    assert [limiter.acquire("k", limit) for _ in range(5)] == [0.0] * 5
    assert limiter.acquire("k", limit) == pytest.approx(0.5)  # one token at 2/s
    clock.now += 0.2
    assert limiter.acquire("k", limit) == pytest.approx(0.3)  # 0.4 token in hand, 0.6 missing at 2/s


def test_tokens_refill_at_the_rate_and_never_past_the_burst() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(clock=clock)
    limit = Limit(rate=1.0, burst=3)
    for _ in range(3):
        limiter.acquire("k", limit)
    clock.now += 2.0  # two tokens back
    assert [limiter.acquire("k", limit) for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]
    clock.now += 3600  # idle for an hour: still only a burst's worth
    results = [limiter.acquire("k", limit) for _ in range(4)]
    assert results[:3] == [0.0, 0.0, 0.0] and results[3] > 0


def test_a_refused_request_does_not_spend_a_token() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(clock=clock)
    limit = Limit(rate=1.0, burst=1)
    assert limiter.acquire("k", limit) == 0.0
    for _ in range(10):  # hammering while empty
        assert limiter.acquire("k", limit) > 0
    clock.now += 1.0
    assert limiter.acquire("k", limit) == 0.0  # one second later, the token is there


def test_buckets_are_independent() -> None:
    limiter = MemoryRateLimiter(clock=Clock())
    limit = Limit(rate=1.0, burst=2)
    assert [limiter.acquire("a", limit) for _ in range(3)][-1] > 0
    assert limiter.acquire("b", limit) == 0.0
    assert limiter.acquire("b", limit) == 0.0


def test_memory_is_bounded_by_forgetting_the_idlest_bucket() -> None:
    limiter = MemoryRateLimiter(max_buckets=3, clock=Clock())
    limit = Limit(rate=0.001, burst=1)  # no refill within the test
    for name in ("a", "b", "c"):
        assert limiter.acquire(name, limit) == 0.0
    assert limiter.acquire("a", limit) > 0  # a was used last: b is now the idlest
    assert limiter.acquire("d", limit) == 0.0  # a fourth bucket pushes out b
    assert len(limiter._buckets) == 3
    assert limiter.acquire("c", limit) > 0  # c is still remembered, empty
    assert limiter.acquire("b", limit) == 0.0  # b was forgotten: a fresh, full bucket
    for i in range(1000):
        limiter.acquire(f"flood-{i}", limit)
    assert len(limiter._buckets) == 3


@pytest.mark.parametrize(
    ("seconds", "header"), [(0.0, "1"), (0.01, "1"), (1.0, "1"), (1.01, "2"), (59.5, "60")]
)
def test_retry_after_is_whole_seconds_rounded_up_and_never_zero(seconds: float, header: str) -> None:
    assert retry_after_header(seconds) == header
