"""A change counter shared by every process on one SQLite database, read without a syscall.

API processes cache key lookups and task rows so that a status read does not have to
open a SQLite read transaction (two `fcntl` lock calls plus the query: more of a request's time
under load than all the Python around it; docs/performance.md, "Status reads").
A cache is only as good as its invalidation, and the writers live in other processes
(render workers, the sweeper, `reelq keys revoke`), so every write transaction bumps a
64-bit counter in a small memory-mapped file beside the database *after* it commits;
readers compare the counter with the value they cached under and drop the cache when
it moved. Reading the counter is a load from shared memory, no system call.

Ordering, the whole correctness argument: a reader takes the counter *before* it reads
the database and files what it read under that value. A writer bumps only after its
commit, so anything committed before the value a reader saw is in what it read, and any
later commit moves the counter before (or while) the reader next looks. Bumps are
serialised with `flock` so the counter never goes backwards; they are rare (creates
skip them, see TaskStore) and cost a few microseconds.
"""

from __future__ import annotations

import enum
import fcntl
import mmap
import os
import struct
from pathlib import Path
from typing import Protocol


class Change(enum.Enum):
    """What a commit changed, as far as the processes that watch the counter care.

    The value is the prefix of the PostgreSQL notice's payload (database/pgnotify.py); the
    embedded counter treats every kind alike.
    """

    ROWS = ""  # task or key rows, possibly several: every cached row and key is stale
    TASK = "t:"  # one task's row (its id follows): only that cached row is stale
    PROGRESS = "p:"  # one task's progress and lease only: stale as TASK, but no webhook event queued
    OUTBOX = "w:"  # the webhook outbox only: no cached row is stale, the webhook sender should look


class ChangeNotices(Protocol):
    """What every change counter offers (this one; database/pgnotify.py on PostgreSQL)."""

    def value(self) -> int:
        """The counter now: take it before reading, compare it later (a move means something changed)."""
        ...

    def transitions(self) -> int:
        """Like `value()`, but not moved by PROGRESS commits: what may have queued a webhook event."""
        ...

    def fresh(self, version: int, task_id: str | None = None) -> bool:
        """Is what was read after `value()` returned `version` still current (`task_id`'s row, or a key)?"""
        ...

    def bump(self, change: Change = Change.ROWS, task_id: str | None = None) -> None:
        """Called by TaskStore after a commit that changed something (`task_id` with TASK, PROGRESS)."""
        ...

    def close(self) -> None: ...


_COUNTER = struct.Struct("<Q")


class ChangeCounter:
    """The counter file `<database>.changes`; created on first use by whichever process comes first."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < _COUNTER.size:
                # Growing with zeros is harmless if another process does it at the same time.
                os.ftruncate(fd, _COUNTER.size)
            self._map = mmap.mmap(fd, _COUNTER.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    @classmethod
    def for_database(cls, database: str | Path) -> ChangeCounter:
        return cls(Path(f"{database}.changes"))

    def value(self) -> int:
        return _COUNTER.unpack_from(self._map)[0]

    def transitions(self) -> int:
        return self.value()  # one counter for everything here: heartbeats are one a second per worker

    def fresh(self, version: int, task_id: str | None = None) -> bool:
        return version == _COUNTER.unpack_from(self._map)[0]  # anything changed since: everything is stale

    def bump(self, change: Change = Change.ROWS, task_id: str | None = None) -> None:
        # One counter for everything: any change drops every cached row (misses are microseconds).
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            _COUNTER.pack_into(self._map, 0, (_COUNTER.unpack_from(self._map)[0] + 1) % 2**64)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)
