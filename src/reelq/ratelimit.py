"""Per-key rate limits (SPEC §1 "Rate limits"): token buckets behind a small interface.

One node keeps its buckets in memory; the scale-out work backs the same interface
with Redis so every API node shares them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

# Idle buckets are forgotten oldest-first past this many, so memory stays bounded
# whatever number of keys and task ids clients throw at the server.
MAX_BUCKETS = 100_000


@dataclass(frozen=True, slots=True)
class Limit:
    """`rate` tokens per second, holding at most `burst` tokens."""

    rate: float
    burst: float


class RateLimiter(Protocol):
    def acquire(self, bucket: str, limit: Limit) -> float:
        """Take one token: 0.0 when allowed, else the seconds until one is available."""
        ...


class MemoryRateLimiter:
    """Token buckets in this process.

    Called only from the event loop (both limited routes are async handlers), so it
    takes no lock: it sits on the hot status-read path.
    """

    def __init__(self, max_buckets: int = MAX_BUCKETS, clock: Callable[[], float] = time.monotonic) -> None:
        # A dict keeps insertion order: popping and re-inserting on each use keeps it
        # least-recently-used first, so eviction drops the idlest bucket.
        self._buckets: dict[str, tuple[float, float]] = {}
        self._max = max_buckets
        self._clock = clock

    def acquire(self, bucket: str, limit: Limit) -> float:
        now = self._clock()
        tokens, stamp = self._buckets.pop(bucket, (limit.burst, now))
        tokens = min(limit.burst, tokens + (now - stamp) * limit.rate)
        if tokens >= 1.0:
            self._buckets[bucket] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[bucket] = (tokens, now)
            wait = (1.0 - tokens) / limit.rate
        if len(self._buckets) > self._max:
            del self._buckets[next(iter(self._buckets))]
        return wait


def retry_after_header(seconds: float) -> str:
    """Retry-After in whole seconds, never 0 (clients treat 0 as "now" and spin)."""
    return str(max(1, math.ceil(seconds)))
