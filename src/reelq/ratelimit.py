"""Per-key rate limits (SPEC §1 "Rate limits"): token buckets behind a small interface.

One node keeps its buckets in memory; the scale-out work backs the same interface
with Redis so every API node shares them.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
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
    """Token buckets in this process (thread-safe: creates run in the thread pool)."""

    def __init__(self, max_buckets: int = MAX_BUCKETS, clock: object = time.monotonic) -> None:
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_buckets
        self._clock = clock

    def acquire(self, bucket: str, limit: Limit) -> float:
        now = self._clock()  # type: ignore[operator]
        with self._lock:
            tokens, stamp = self._buckets.pop(bucket, (limit.burst, now))
            tokens = min(limit.burst, tokens + (now - stamp) * limit.rate)
            if tokens >= 1.0:
                self._buckets[bucket] = (tokens - 1.0, now)
                wait = 0.0
            else:
                self._buckets[bucket] = (tokens, now)
                wait = (1.0 - tokens) / limit.rate
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        return wait


def retry_after_header(seconds: float) -> str:
    """Retry-After in whole seconds, never 0 (clients treat 0 as "now" and spin)."""
    return str(max(1, math.ceil(seconds)))
