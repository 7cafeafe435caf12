"""The hot read path: authenticated status reads with the bare driver, cached between changes.

SQLAlchemy per read costs several times what the read itself does; the stdlib driver inline,
on an indexed point lookup in WAL mode, comes close to a bare endpoint (docs/performance.md,
"Figures behind code choices"). Writes still go through TaskStore (SQLAlchemy).

Key lookups and task rows are cached in this process and dropped whenever any process
commits a change to the database (the change counter: database/changes.py on SQLite,
LISTEN/NOTIFY on PostgreSQL, database/pgnotify.py): a poll of a task that did not change
since the last poll touches no lock, file, socket or query.

Two readers share that cache (CachedReader):
- SqliteReader: a miss reads the file in microseconds, so it runs on the event loop
  without a thread hop (`inline`).
- PgReader: a miss is a network round trip, which must not stall the event loop (a slow
  database would stall every request of the process), so the transports look in the cache
  on the loop and send only misses to a small pool of reader threads, each holding one
  autocommit psycopg connection (no BEGIN/COMMIT round trips; psycopg prepares the two
  statements after a few uses).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from reelq.database.changes import ChangeCounter, ChangeNotices
from reelq.database.db import SQLITE_BUSY_TIMEOUT_MS, pg_connect_args
from reelq.database.keys import hash_key
from reelq.database.views import TaskView

MAX_CACHED_KEYS = 10_000
MAX_CACHED_TASKS = 20_000
# Reader threads (and PostgreSQL connections) per API process: misses only, each a point lookup.
PG_READ_THREADS = 8
# An expired key (SPEC §6 `expires_at`) is judged at each use against the cached expiry: expiring is no
# write, so no change notice would drop the cached lookup.
KEY_SQL = "SELECT id, expires_at FROM api_keys WHERE key_hash = {p} AND revoked_at IS NULL"
TASK_SQL = "SELECT {columns} FROM tasks WHERE id = {p} AND key_id = {p}"

if TYPE_CHECKING:
    import psycopg

T = TypeVar("T")


TASK_COLUMNS = ", ".join(TaskView._fields)


class CachedReader:
    """Key ids and task views cached under the change counter; subclasses look up the misses.

    Each entry is filed under the counter's value read *before* the database was (the ordering
    argument in database/changes.py); it is good while the counter still says so.
    """

    inline: ClassVar[bool]  # True: a miss may be looked up on the event loop

    def __init__(self, changes: ChangeNotices) -> None:
        self._changes = changes
        self._fresh = changes.fresh  # bound once: it runs on every cached read
        self._keys: dict[str, tuple[int, str, float | None]] = {}
        self._tasks: dict[tuple[str, str], tuple[int, TaskView]] = {}

    def version(self) -> int:
        """The shared change counter: it moves after any commit that changed a row."""
        return self._changes.value()

    def cached_key_id(self, plain: str) -> str | None:
        """The key's id if this process looked it up since the last change; else None (look it up)."""
        cached = self._keys.get(plain)
        if cached is None or not self._fresh(cached[0], None):
            return None
        expires = cached[2]
        return cached[1] if expires is None or expires > time.time() else None

    def key_id_for(self, plain: str) -> str | None:
        """The active key's id; a revocation anywhere is seen by the next lookup."""
        now = self._changes.value()
        key_id = self.cached_key_id(plain)
        if key_id is not None:
            return key_id
        found = self._lookup_key(hash_key(plain))
        if found is None:  # a miss is not cached: a key created a moment ago works at once
            return None
        key_id, expires = found[0], found[1]
        if expires is not None and expires <= time.time():
            return None
        _put(self._keys, plain, (now, key_id, expires), MAX_CACHED_KEYS)
        return key_id

    def cached_task(self, task_id: str, key_id: str) -> TaskView | None:
        """The task's view if this process read it since the last change; else None (look it up)."""
        cached = self._tasks.get((task_id, key_id))
        return cached[1] if cached is not None and self._fresh(cached[0], task_id) else None

    def task(self, task_id: str, key_id: str) -> TaskView | None:
        """The task's status columns, or None when this key has no such task."""
        now = self._changes.value()
        view = self.cached_task(task_id, key_id)
        if view is not None:
            return view
        row = self._lookup_task(task_id, key_id)
        if row is None:  # misses are not cached: creates do not bump the counter
            return None
        view = TaskView._make(row)  # only on a miss: a cached read returns the stored view as is
        _put(self._tasks, (task_id, key_id), (now, view), MAX_CACHED_TASKS)
        return view

    async def off_loop(self, lookup: Callable[..., T], *args: Any) -> T:
        """Run a (missing) lookup where it may block: here, inline; PgReader: in a reader thread."""
        return lookup(*args)

    def _lookup_key(self, key_hash: str) -> Sequence[Any] | None:
        """(id, expires_at) of the active key with this hash, or None."""
        raise NotImplementedError

    def _lookup_task(self, task_id: str, key_id: str) -> Sequence[Any] | None:
        raise NotImplementedError

    def close(self) -> None:
        """Release connections (the cache goes with the process)."""


class SqliteReader(CachedReader):
    """Read-only point lookups on the SQLite file, one connection per thread, on the event loop."""

    inline = True

    def __init__(self, path: Path) -> None:
        super().__init__(ChangeCounter.for_database(path))
        self._uri = f"file:{path}?mode=ro"
        self._local = threading.local()
        self._key_sql = KEY_SQL.format(p="?")
        self._task_sql = TASK_SQL.format(columns=TASK_COLUMNS, p="?")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self._uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, check_same_thread=False
            )
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
        return conn

    def _lookup_key(self, key_hash: str) -> Sequence[Any] | None:
        row: Sequence[Any] | None = self._conn().execute(self._key_sql, (key_hash,)).fetchone()
        return row

    def _lookup_task(self, task_id: str, key_id: str) -> Sequence[Any] | None:
        row: Sequence[Any] | None = self._conn().execute(self._task_sql, (task_id, key_id)).fetchone()
        return row


class PgReader(CachedReader):
    """Point lookups on PostgreSQL from PG_READ_THREADS threads, each with its own connection.

    `changes` is the store's listener (database/pgnotify.py): the same notices that wake
    long-polls drop this cache, in every API replica; a notice naming a task drops that
    task's row only.
    """

    inline = False

    def __init__(self, conninfo: str, changes: ChangeNotices) -> None:
        super().__init__(changes)
        self._conninfo = conninfo
        # The pool's timeouts and keepalives: a blackholed database fails a read miss in seconds.
        self._connect_args = pg_connect_args(conninfo)
        self._local = threading.local()
        self._connections: list[psycopg.Connection[Any]] = []
        self._connections_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(PG_READ_THREADS, thread_name_prefix="reelq-pg-read")
        self._key_sql = KEY_SQL.format(p="%s")
        self._task_sql = TASK_SQL.format(columns=TASK_COLUMNS, p="%s")

    async def off_loop(self, lookup: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, lookup, *args)

    def _fetch(self, sql: str, params: tuple[str, ...]) -> Sequence[Any] | None:
        """One row; a connection found broken (a database restart) is replaced once, then errors."""
        import psycopg

        for attempt in range(2):
            conn = self._conn()
            try:
                row: Sequence[Any] | None = conn.execute(sql, params).fetchone()
                return row
            except psycopg.OperationalError:
                self._drop(conn)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _conn(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            import psycopg
            from psycopg.conninfo import make_conninfo  # the parameters merged as connect() would

            conn = psycopg.connect(make_conninfo(self._conninfo, **self._connect_args), autocommit=True)
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    def _drop(self, conn: psycopg.Connection[Any]) -> None:
        self._local.conn = None
        with self._connections_lock:
            if conn in self._connections:
                self._connections.remove(conn)
        conn.close()

    def _lookup_key(self, key_hash: str) -> Sequence[Any] | None:
        return self._fetch(self._key_sql, (key_hash,))

    def _lookup_task(self, task_id: str, key_id: str) -> Sequence[Any] | None:
        return self._fetch(self._task_sql, (task_id, key_id))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()


def _put(cache: dict[Any, Any], key: Any, value: Any, limit: int) -> None:
    if len(cache) >= limit:
        cache.clear()  # entries of older counter values pile up until here; refilling is cheap
    cache[key] = value
