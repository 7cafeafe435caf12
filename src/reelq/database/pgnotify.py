"""The change counter on PostgreSQL: every change-making commit NOTIFYs, each process LISTENs.

The embedded store shares a memory-mapped counter between the processes of one machine
(database/changes.py). API replicas on several machines share nothing but the database, so
there the database carries the signal: `TaskStore._write` runs `NOTIFY reelq_changes` inside
every transaction that changes a row (PostgreSQL delivers it only if, and when, that
transaction commits), and a process that reads the counter holds one dedicated autocommit
connection that LISTENs in a thread and moves a local counter for each notice.

Same interface and same ordering argument as the embedded counter: a reader takes `value()`
before it reads the database; a commit after that read is noticed after it, so it moves the
counter later. Notices are delivered after their commit, so a read that raced a commit has
already seen it. While the listening connection is down, notices may be lost: the counter
then moves every RECONNECT_SECONDS, so held long-polls re-read as they did with polling,
and once more on reconnecting.

API processes also cache rows under this counter (database/fastread.py), so a connection that
died without telling (a network partition: no reset, no error) would keep serving cached
answers. TCP keepalives, a TCP user timeout and a `SELECT 1` after PING_SECONDS without a
notice turn that into an error within about 15 s (PING_SECONDS plus the TCP user timeout),
and the error moves the counter like any loss of the connection.

A notice says what changed (`Change` in database/changes.py, the payload's prefix). Most name
the one task their transaction changed (`t:<id>`: a claim by id, completion, failure, cancel,
delete; `p:<id>`: progress). The counter moves for them as for any notice (long-polls re-read),
but `fresh()` then judges a cached row by its own task's last notice, so the read cache of an
API process keeps every other row while a busy deployment's workers commit progress many times
a second. Progress notices do not move `transitions()`, which wakes the webhook sender: a
heartbeat queues no webhook. Outbox notices (`w:`) move both counters and stale no row. A
notice with an empty payload drops everything (keys too).

Only processes that read the counter (API processes, the webhook sender) open the listening
connection: it starts on the first `value()`. Render workers only send notices.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import Connection, Engine, text

from reelq.database.changes import Change

log = logging.getLogger("reelq.database")

CHANNEL = "reelq_changes"
NOTIFY_SQL = f"NOTIFY {CHANNEL}"
_NOTIFY_TASK = text(f"SELECT pg_notify('{CHANNEL}', :payload)")
MAX_TASK_MARKS = 50_000  # per-task marks kept before they are folded into one global mark
RECONNECT_SECONDS = 0.5
_WAIT_SECONDS = 1.0  # how long one `notifies()` call blocks before the stop flag is looked at
PING_SECONDS = 5.0
# libpq connection parameters of the listening connection: a dead peer is an error, not a silence.
LISTEN_CONNECTION: dict[str, int] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,  # ms: unacknowledged data (the ping) fails the connection
}


def send_notice(conn: Connection, change: Change, task_id: str | None) -> None:
    """In the writing transaction: tell every listener once (and if) it commits."""
    if change is Change.ROWS:
        conn.exec_driver_sql(NOTIFY_SQL)
    else:
        conn.execute(_NOTIFY_TASK, {"payload": change.value + (task_id or "")})


_KINDS = {change.value: change for change in Change if change is not Change.ROWS}


def _parse(payload: str) -> tuple[Change, str | None]:
    """(what a notice says changed, the task it names); anything unknown counts as ROWS."""
    change = _KINDS.get(payload[:2])
    if change is None:
        return Change.ROWS, None
    return change, payload[2:] or None


def listen_conninfo(engine: Engine) -> str:
    """A libpq URI for psycopg of the engine's database (its options, e.g. a search_path, kept)."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


class PgChangeListener:
    """A process-local counter moved by the database's notices (and by this process's own commits)."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._value = 0  # moves with every notice
        self._global = 0  # the value at the last notice that named no task (or a lost connection)
        self._marks: dict[str, int] = {}  # task id -> the value at the last notice naming it
        self._transitions = 0  # moves with every notice but PROGRESS ones
        self._bump_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.connected = threading.Event()  # set while LISTEN is in place (tests and readiness)

    @classmethod
    def for_engine(cls, engine: Engine) -> PgChangeListener:
        return cls(listen_conninfo(engine))

    def value(self) -> int:
        if self._thread is None:
            self._start()
        return self._value

    def transitions(self) -> int:
        if self._thread is None:
            self._start()
        return self._transitions

    def bump(self, change: Change = Change.ROWS, task_id: str | None = None) -> None:
        """A notice (or one of this process's own commits: its readers need not wait for the round trip)."""
        with self._bump_lock:
            if change is not Change.PROGRESS:
                self._transitions += 1
            value = self._value + 1
            if change is Change.OUTBOX:
                pass  # no row a reader caches
            elif task_id is None or len(self._marks) >= MAX_TASK_MARKS:
                # The global mark first, then forget the marks: a reader that looks at a task's mark and
                # then at the global one (fresh(), in that order) never misses both.
                self._global = value
                if task_id is not None:
                    self._marks.clear()
            else:
                self._marks[task_id] = value
            self._value = value

    def fresh(self, version: int, task_id: str | None = None) -> bool:
        """Is what was read after `value()` returned `version` still current (for `task_id`'s row)?"""
        if task_id is not None and self._marks.get(task_id, 0) > version:
            return False
        return self._global <= version

    def start(self) -> None:
        """Open the listening connection now (else on the first `value()`)."""
        if self._thread is None:
            self._start()

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._listen, daemon=True, name="reelq-pg-listen")
                self._thread.start()

    def _listen(self) -> None:
        import psycopg
        from psycopg.conninfo import make_conninfo  # the parameters merged as connect() would

        warned = False
        while not self._stop.is_set():
            try:
                conninfo = make_conninfo(self._conninfo, connect_timeout=5, **LISTEN_CONNECTION)
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.connected.set()
                    self.bump()  # whatever was missed while not listening
                    if warned:
                        log.warning("listening for database changes again")
                        warned = False
                    heard = time.monotonic()
                    while not self._stop.is_set():
                        for notice in conn.notifies(timeout=_WAIT_SECONDS):
                            self.bump(*_parse(notice.payload))
                            heard = time.monotonic()
                        if time.monotonic() - heard >= PING_SECONDS:
                            conn.execute("SELECT 1")  # raises if the connection is gone
                            # A notice that came in during the ping may not be handed to notifies():
                            # count one, harmless after seconds of silence.
                            self.bump()
                            heard = time.monotonic()
            except Exception as exc:
                self.connected.clear()
                if not warned:
                    log.warning(
                        "lost the database change notices (%s: %s); re-reading every %.1f s until back",
                        type(exc).__name__,
                        exc,
                        RECONNECT_SECONDS,
                    )
                    warned = True
                self.bump()
                self._stop.wait(RECONNECT_SECONDS)
        self.connected.clear()

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=_WAIT_SECONDS + 1)
