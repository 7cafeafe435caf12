"""Rate limits and quota counts shared by every API process through Redis (`REELQ_REDIS_URL`).

Same semantics as the in-memory versions (ratelimit.py, database/quotas.py), one budget for all
processes: a token bucket is one Redis hash updated by one Lua script (atomic, on Redis's clock, so
API hosts need not agree on the time), and the quota counts reused within a burst live in Redis too,
advanced by every process's creates, so processes no longer overshoot a quota by what the others
admitted meanwhile.

Redis is an optimisation of fairness, not of correctness: when it does not answer, limits fail
open (requests pass, quota counts fall back to this process's memory, the database still counts)
and the API keeps serving. The first failure is logged at once, then at most one line a minute
with how many checks passed unchecked; after a failure Redis is tried again once a second, not by
every request (a connect timeout would otherwise stall the event loop on each one).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from reelq.database.quotas import QuotaCounts, count_active, count_queued
from reelq.ratelimit import Limit

log = logging.getLogger("reelq.limits")

# Status reads call Redis inline on the event loop: a Redis that stalls must not stall the API.
SOCKET_TIMEOUT = 0.25
RETRY_AFTER_FAILURE = 1.0  # seconds before the next try once Redis failed
WARN_EVERY = 60.0

# KEYS[1]: the bucket; ARGV: rate (tokens/s), burst. Returns the seconds to wait ("0": allowed).
# The same arithmetic as MemoryRateLimiter.acquire; idle buckets expire once they would be full.
TOKEN_BUCKET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1])
local stamp = tonumber(state[2])
if tokens == nil or stamp == nil then
  tokens = burst
  stamp = now
end
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'stamp', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return string.format('%.6f', wait)
"""


class RedisLink:
    """One Redis client per process, and its health: fail open, warn once a minute, retry once a second."""

    def __init__(self, url: str, prefix: str, clock: Callable[[], float] = time.monotonic) -> None:
        try:
            import redis
        except ImportError:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "REELQ_REDIS_URL is set but redis is not installed: pip install 'reelq[redis]'"
            ) from None
        self.errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self.client = redis.Redis.from_url(
            url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT, retry_on_timeout=False
        )
        self.prefix = prefix
        self._clock = clock
        self._down_until = 0.0
        self._down = False
        self._passed = 0  # checks let through unchecked since the last warning
        self._warned_at = -WARN_EVERY
        self._lock = threading.Lock()  # the event loop and the create writer thread both report

    def usable(self) -> bool:
        """False while Redis is known down (the caller fails open without trying)."""
        if self._down_until and self._clock() < self._down_until:
            self._passed += 1
            return False
        return True

    def failed(self, exc: BaseException) -> None:
        now = self._clock()
        with self._lock:
            self._down_until = now + RETRY_AFTER_FAILURE
            self._passed += 1
            first = not self._down
            self._down = True
            if first or now - self._warned_at >= WARN_EVERY:
                log.warning(
                    "Redis unavailable (%s: %s): rate limits and shared quota counts fail open "
                    "(%d check(s) passed unchecked since the last warning)",
                    type(exc).__name__,
                    exc,
                    self._passed,
                )
                self._warned_at = now
                self._passed = 0

    def worked(self) -> None:
        if self._down:
            with self._lock:
                if self._down:
                    self._down = False
                    self._down_until = 0.0
                    log.warning("Redis reachable again: shared rate limits enforced")

    def close(self) -> None:
        self.client.close()


class RedisRateLimiter:
    """`RateLimiter` (ratelimit.py) on Redis: every API process draws from the same buckets."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self._script = link.client.register_script(TOKEN_BUCKET)
        self._prefix = f"{link.prefix}rl:"

    def acquire(self, bucket: str, limit: Limit) -> float:
        link = self.link
        if not link.usable():
            return 0.0
        try:
            wait = float(self._script(keys=[self._prefix + bucket], args=[limit.rate, limit.burst]))
        except link.errors as exc:
            link.failed(exc)
            return 0.0
        link.worked()
        return wait


class SharedQuotaCounts(QuotaCounts):
    """QuotaCounts whose reused counts live in Redis: a count taken by any process is advanced by the
    creates of every process. Called with the store's write lock held, inside the create transaction
    (on SQLite, one across all processes, so no two processes update a count at once)."""

    COUNT_TTL = 60  # seconds a count stays in Redis (it is reused for RECOUNT_SECONDS anyway)

    def __init__(self, link: RedisLink, clock: Callable[[], float] = time.time) -> None:
        # Wall time, not monotonic: the stamp is compared by other processes (other hosts too,
        # whose clocks only need to agree within a fraction of RECOUNT_SECONDS).
        super().__init__(clock=clock)
        self.link = link
        self._prefix = f"{link.prefix}quota:"
        self._touched: set[str] = set()

    def _name(self, key_id: str | None) -> str:
        return self._prefix + ("*queue" if key_id is None else key_id)

    def get(self, conn: Connection, key_id: str | None, limit: int, unsaved: int) -> int:
        link = self.link
        if not link.usable():
            return super().get(conn, key_id, limit, unsaved)
        name = self._name(key_id)
        client = link.client
        try:
            count, taken = client.hmget(name, "n", "t")
            now = self._clock()
            if count is not None and taken is not None:
                reused = int(count)
                if now - float(taken) < self.RECOUNT_SECONDS and reused < limit - max(1, limit // 10):
                    link.worked()
                    return reused
            fresh = self._count(conn, key_id, limit) + unsaved
            pipe = client.pipeline(transaction=True)
            pipe.hset(name, mapping={"n": fresh, "t": repr(now)})
            pipe.expire(name, self.COUNT_TTL)
            pipe.execute()
        except link.errors as exc:
            link.failed(exc)
            return super().get(conn, key_id, limit, unsaved)
        link.worked()
        if len(self._touched) > self.MAX_KEYS:
            self._touched.clear()
        self._touched.add(name)
        return fresh

    def added(self, key_id: str) -> None:
        for which in (key_id, None):  # the local fallback's counts, where it holds one
            local: Any = self._counts.get(which)
            if local is not None:
                self._counts[which] = (local[0] + 1, local[1])
        if not self.link.usable():
            return
        try:
            pipe = self.link.client.pipeline(transaction=False)
            # get() set both counts just before; a count that lapsed meanwhile comes back without a
            # stamp, which the next get() reads as "count afresh".
            for which in (key_id, None):
                pipe.hincrby(self._name(which), "n", 1)
                pipe.expire(self._name(which), self.COUNT_TTL)
            pipe.execute()
        except self.link.errors as exc:
            self.link.failed(exc)

    def forget(self) -> None:
        """A failed transaction: its creates were never stored; every count this process set is redone."""
        super().forget()
        touched, self._touched = self._touched, set()
        if touched and self.link.usable():
            try:
                self.link.client.delete(*touched)
            except self.link.errors as exc:
                self.link.failed(exc)

    def _count(self, conn: Connection, key_id: str | None, limit: int) -> int:
        return count_queued(conn, limit) if key_id is None else count_active(conn, key_id, limit)
