"""Create quotas (SPEC §1 "Rate limits"): active tasks per key and queue depth, checked in the create
transaction, and the cache of counts that spares a burst of creates from recounting for each batch."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, func, select

from reelq.database.tables import tasks
from reelq.domain import Status


@dataclass(frozen=True, slots=True)
class Quotas:
    """Checked inside the create transaction, so concurrent creates cannot overshoot them."""

    max_active_per_key: int
    max_queue: int


class QuotaExceeded(Exception):
    """A create refused because a quota is full; `kind` is "active" (per key) or "queue" (global)."""

    def __init__(self, kind: str, limit: int) -> None:
        super().__init__(kind)
        self.kind = kind
        self.limit = limit


def count_active(conn: Connection, key_id: str, limit: int) -> int:
    """The key's queued + processing tasks, counted up to `limit` (cheap: never past the quota)."""
    live = [Status.QUEUED.value, Status.PROCESSING.value]
    # Selecting only indexed columns keeps both counts on their covering index (no row reads).
    found = select(tasks.c.status).where(tasks.c.key_id == key_id, tasks.c.status.in_(live)).limit(limit)
    return conn.execute(select(func.count()).select_from(found.subquery())).scalar_one()


def count_queued(conn: Connection, limit: int) -> int:
    """Queued tasks of every key, counted up to `limit`."""
    found = select(tasks.c.status).where(tasks.c.status == Status.QUEUED.value).limit(limit)
    return conn.execute(select(func.count()).select_from(found.subquery())).scalar_one()


class QuotaCounts:
    """The quota counts of recent create transactions, so a burst does not recount for each batch.

    A count is taken inside the write transaction, then advanced by this process's own creates
    and reused for up to RECOUNT_SECONDS. Workers only lower the true counts meanwhile, so a
    reused count errs high, and a count that comes within a tenth of its limit is always taken
    afresh: no create is refused on a stale count. What a reused count can miss is creates by
    other API processes in that window, so several API processes could overshoot a quota by
    what they admit in a second beyond that margin. Counting is bounded by the limit anyway; at
    a 10,000-task queue each count scans 10,000 index entries, which this spares a burst.
    Called with the store's write lock held (one create transaction at a time per process).
    """

    RECOUNT_SECONDS = 1.0
    MAX_KEYS = 10_000

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._counts: dict[str | None, tuple[int, float]] = {}  # key id (None: the queue) -> (n, taken)
        self._clock = clock

    def get(self, conn: Connection, key_id: str | None, limit: int, unsaved: int) -> int:
        """The count for `key_id` (None: the queue); `unsaved`: creates admitted in this
        transaction but not inserted yet (a fresh count cannot see them)."""
        now = self._clock()
        cached = self._counts.get(key_id)
        if cached is not None:
            count, taken = cached
            if now - taken < self.RECOUNT_SECONDS and count < limit - max(1, limit // 10):
                return count
        if key_id is None:
            count = count_queued(conn, limit) + unsaved
        else:
            count = count_active(conn, key_id, limit) + unsaved
        if len(self._counts) >= self.MAX_KEYS:
            self._counts.clear()
        self._counts[key_id] = (count, now)
        return count

    def added(self, key_id: str) -> None:
        """One create admitted for `key_id` (and so one more queued task)."""
        for which in (key_id, None):
            count, taken = self._counts[which]
            self._counts[which] = (count + 1, taken)

    def forget(self) -> None:
        """After a failed transaction, the admitted creates were never stored."""
        self._counts.clear()
