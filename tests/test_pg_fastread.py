"""The cached read path on PostgreSQL: every change committed anywhere is seen by the next reads.

The same cache as on SQLite (database/fastread.py), dropped by LISTEN/NOTIFY instead of a
shared-memory counter. Writes come from separate stores (their own engines and connections,
as render workers and other API replicas are); the reader is the one an API process builds.
Notices travel after their commit, so "the next read" here is "a read a few milliseconds
later": each check waits for the reader to catch up, up to a 30 s deadline. A deadline, not a
speed test: nothing expires the cache, so a change whose notice is missed is never seen at all, and
a check fails however long it waits; one that is seen passes at once, however slow the machine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
from sqlalchemy import text

from reelq.database import NewTask, TaskStore, make_engine
from reelq.database.changes import Change
from reelq.database.db import migrate
from reelq.database.fastread import PgReader
from reelq.database.pgnotify import PgChangeListener, listen_conninfo
from reelq.database.views import TaskView
from reelq.domain import Status
from tests.scaled import fresh_postgres_database

T = TypeVar("T")


@pytest.fixture
def writer() -> Iterator[TaskStore]:
    with fresh_postgres_database() as url:
        engine = make_engine(url)
        migrate(engine)
        yield TaskStore(engine)
        engine.dispose()


@pytest.fixture
def reader(writer: TaskStore) -> Iterator[PgReader]:
    """An API process's reader: its own listener on the writer's database, as build_services makes it."""
    conninfo = listen_conninfo(writer.engine)
    listener = PgChangeListener(conninfo)
    listener.start()
    assert listener.connected.wait(5)
    reader = PgReader(conninfo, listener)
    yield reader
    reader.close()
    listener.close()


def _new() -> NewTask:
    return NewTask(model="viduq3-turbo", prompt="cache", duration=1, aspect_ratio="16:9", resolution="540p")


def _eventually(read: Callable[[], T], ok: Callable[[T], bool], within: float = 30.0) -> T:
    deadline = time.monotonic() + within
    while True:
        value = read()
        if ok(value) or time.monotonic() > deadline:
            assert ok(value), f"still {value!r} after {within} s"
            return value
        time.sleep(0.002)


def test_reader_sees_every_transition_written_by_another_store(writer: TaskStore, reader: PgReader) -> None:
    key, plain = writer.create_key("k")
    assert reader.key_id_for(plain) == key.id
    task, _ = writer.create_task(key.id, _new())
    row = reader.task(task.id, key.id)  # a create sends no notice: found because misses are not cached
    assert isinstance(row, TaskView) and row.status == Status.QUEUED.value
    assert row == TaskView.of(writer.get_task(task.id, key.id))  # the same view whichever way it is read
    assert reader.task(task.id, key.id) is row  # from the cache while nothing changed
    assert reader.cached_task(task.id, key.id) is row

    assert writer.claim_next("w-other", 30, task.id) is not None
    assert writer.renew(task.id, "w-other", 30, 40)
    row = _eventually(lambda: reader.task(task.id, key.id), lambda r: r is not None and r.progress == 40)
    assert row is not None and row.status == Status.PROCESSING.value

    assert writer.complete(task.id, "w-other", f"{task.id}.mp4", 1.0, 150)
    row = _eventually(
        lambda: reader.task(task.id, key.id), lambda r: r is not None and r.status == Status.COMPLETED.value
    )
    assert row is not None and (row.total_tokens, row.video_key) == (150, f"{task.id}.mp4")
    assert reader.task(task.id, "someone-else") is None  # another key's task reads as absent


def test_revocation_elsewhere_is_seen_by_the_next_lookups(writer: TaskStore, reader: PgReader) -> None:
    key, plain = writer.create_key("k")
    for _ in range(3):
        assert reader.key_id_for(plain) == key.id
    assert reader.cached_key_id(plain) == key.id
    writer.revoke_key(plain)
    # The revocation's notice drops the cached key (nothing else would: the cache has no expiry), so
    # lookups after it miss the cache and find no active key. Seen, not timed: the deadline is far.
    _eventually(lambda: reader.key_id_for(plain), lambda k: k is None)
    assert reader.cached_key_id(plain) is None
    # A key created after the reader started works at once (misses are not cached).
    other, other_plain = writer.create_key("new")
    assert reader.key_id_for(other_plain) == other.id


def test_a_purged_task_is_gone(writer: TaskStore, reader: PgReader) -> None:
    key, _ = writer.create_key("k")
    task, _ = writer.create_task(key.id, _new())
    writer.fail(task.id, "boom")
    assert _eventually(lambda: reader.task(task.id, key.id), lambda r: r is not None and r.status == "failed")
    assert writer.purge_finished(retention_seconds=-1) == [(task.id, None)]
    _eventually(lambda: reader.task(task.id, key.id), lambda r: r is None)


def _terminate(writer: TaskStore, application_like: str) -> int:
    """pg_terminate_backend every connection of this database whose last query matches; how many."""
    with writer.engine.connect() as conn:
        return len(
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE :q"
                ),
                {"q": application_like},
            ).all()
        )


def test_a_lost_listening_connection_drops_the_cache_and_comes_back(
    writer: TaskStore, reader: PgReader
) -> None:
    """While notices may be lost nothing cached is trusted; once listening again, notices work again."""
    key, _ = writer.create_key("k")
    task, _ = writer.create_task(key.id, _new())
    row = reader.task(task.id, key.id)
    listener = reader._changes
    assert isinstance(listener, PgChangeListener)
    before = listener.value()
    assert _terminate(writer, "LISTEN%") == 1
    _eventually(listener.value, lambda v: v != before)
    assert reader.cached_task(task.id, key.id) is None  # the counter moved: the cached row is not trusted
    assert listener.connected.wait(5)  # reconnected
    assert writer.claim_next("w-other", 30, task.id) is not None
    row = _eventually(
        lambda: reader.task(task.id, key.id), lambda r: r is not None and r.status == "processing"
    )
    assert row is not None


def test_a_broken_reader_connection_is_replaced(writer: TaskStore, reader: PgReader) -> None:
    """A database restart kills every reader connection: the next lookup reconnects instead of failing."""
    key, plain = writer.create_key("k")
    task, _ = writer.create_task(key.id, _new())
    assert reader.key_id_for(plain) == key.id  # opens this thread's connection
    assert _terminate(writer, "SELECT id, expires_at FROM api_keys%") >= 1  # fastread.KEY_SQL
    writer.fail(task.id, "boom")  # moves the counter: the next read is a lookup on the dead connection
    row = _eventually(lambda: reader.task(task.id, key.id), lambda r: r is not None and r.status == "failed")
    assert row is not None


def test_reader_connections_time_out_like_the_pool(writer: TaskStore, reader: PgReader) -> None:
    """A blackholed database fails a read miss in seconds, not after TCP's minutes of retries."""
    from reelq.database.db import PG_CONNECTION

    key, plain = writer.create_key("k")
    assert reader.key_id_for(plain) == key.id  # opens this thread's connection
    [conn] = reader._connections
    parameters = conn.info.get_parameters()
    for name in ("connect_timeout", "keepalives", "tcp_user_timeout"):
        assert parameters[name] == str(PG_CONNECTION[name]), (name, parameters)


def test_misses_are_looked_up_off_the_event_loop(writer: TaskStore, reader: PgReader) -> None:
    """A miss runs in a reader thread, so the loop keeps serving while the database answers."""
    key, _ = writer.create_key("k")
    task, _ = writer.create_task(key.id, _new())

    async def look() -> tuple[TaskView | None, int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        # pg_sleep stands for a slow database: the lookup waits 0.2 s in its thread.
        view = await reader.off_loop(_slow_lookup, reader, task.id, key.id)
        ticker.cancel()
        return view, ticks

    view, ticks = asyncio.run(look())
    assert view is not None and view.id == task.id
    assert ticks > 100  # the loop ran all along


def _slow_lookup(reader: PgReader, task_id: str, key_id: str) -> TaskView | None:
    reader._fetch("SELECT pg_sleep(0.2)", ())
    return reader.task(task_id, key_id)


def test_a_tasks_own_notice_keeps_every_other_cached_row(writer: TaskStore, reader: PgReader) -> None:
    """Progress commits name their task: other cached rows stay cached (and keys), that one is re-read."""
    key, plain = writer.create_key("k")
    busy, _ = writer.create_task(key.id, _new())
    idle, _ = writer.create_task(key.id, _new())
    listener = reader._changes
    assert isinstance(listener, PgChangeListener)
    seen = listener.value()
    writer.fail(idle.id, "done")
    assert writer.claim_next("w-other", 30, busy.id) is not None
    _eventually(listener.value, lambda v: v >= seen + 2)  # both notices arrived
    idle_row = reader.task(idle.id, key.id)
    assert reader.key_id_for(plain) == key.id
    for progress in (10, 20, 30):
        before = listener.value()
        assert writer.renew(busy.id, "w-other", 30, progress)
        _eventually(listener.value, lambda v, before=before: v > before)
        assert reader.cached_task(idle.id, key.id) is idle_row  # untouched by the other task's notice
        assert reader.cached_key_id(plain) == key.id
        assert (
            reader.cached_task(busy.id, key.id) is None or reader.task(busy.id, key.id).progress == progress
        )
        assert reader.task(busy.id, key.id).progress == progress
    # A notice naming no task (a key revoked) drops everything.
    other, _ = writer.create_key("other")
    before = listener.value()
    writer.revoke_key(other.id)
    _eventually(listener.value, lambda v: v > before)
    assert reader.cached_task(idle.id, key.id) is None
    assert reader.cached_key_id(plain) is None


def test_task_marks_are_bounded() -> None:
    """Past MAX_TASK_MARKS distinct tasks the marks fold into one global mark: bounded, still correct."""
    from reelq.database import pgnotify

    listener = PgChangeListener("postgresql://unused")  # never started: bump() and fresh() only
    version = listener._value
    listener.bump(Change.TASK, "video_a")
    assert not listener.fresh(version, "video_a") and listener.fresh(version, "video_b")
    for i in range(pgnotify.MAX_TASK_MARKS + 1):
        listener.bump(Change.TASK, f"video_{i}")
    assert len(listener._marks) <= pgnotify.MAX_TASK_MARKS
    assert not listener.fresh(version, "video_b")  # folded: everything read before is stale
    assert listener.fresh(listener._value, "video_b")


def test_what_each_kind_of_notice_moves() -> None:
    """Progress wakes long-polls but not the webhook sender; an outbox change stales no cached row."""
    listener = PgChangeListener("postgresql://unused")  # never started: bump() and fresh() only
    listener._thread = object()  # type: ignore[assignment]  # value() must not start it
    version, transitions = listener.value(), listener.transitions()
    listener.bump(Change.PROGRESS, "video_a")
    assert listener.value() > version and listener.transitions() == transitions
    assert not listener.fresh(version, "video_a") and listener.fresh(version, "video_b")
    version = listener.value()
    listener.bump(Change.OUTBOX)
    assert listener.value() > version and listener.transitions() > transitions
    assert listener.fresh(version, "video_a") and listener.fresh(version, None)
    listener.bump(Change.ROWS)
    assert not listener.fresh(version, "video_b") and not listener.fresh(version, None)


def test_notices_travel_with_their_kind(writer: TaskStore, reader: PgReader) -> None:
    """Through PostgreSQL: a heartbeat's notice is PROGRESS (no webhook wake-up), a completion's is not."""
    listener = reader._changes
    assert isinstance(listener, PgChangeListener)
    key, _ = writer.create_key("k")
    task, _ = writer.create_task(key.id, _new())  # adds rows only: no notice
    start = listener.transitions()
    assert writer.claim_next("w-other", 30, task.id) is not None
    _eventually(listener.transitions, lambda t: t > start)  # the claim's notice
    value, transitions = listener.value(), listener.transitions()
    assert writer.renew(task.id, "w-other", 30, 50)
    _eventually(listener.value, lambda v: v > value)
    time.sleep(0.05)
    assert listener.transitions() == transitions
    assert writer.complete(task.id, "w-other", f"{task.id}.mp4", 1.0, 150)
    _eventually(listener.transitions, lambda t: t > transitions)
    assert writer.sweep(3, 60).requeued == []  # a sweep that finds nothing tells nobody
    value = listener.value()
    time.sleep(0.1)
    assert listener.value() == value
