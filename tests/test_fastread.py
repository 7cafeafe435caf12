"""The cached read path: every change committed by any process is seen by the next read.

The status endpoint caches key lookups and task rows per process (database/fastread.py) and
relies on the shared change counter (database/changes.py) to drop them. These tests write
from other processes, as render workers and `reelq keys revoke` do, and read through one
long-lived reader that has the old answers cached.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from reelq.database import NewTask, TaskStore, make_engine, migrate
from reelq.database.changes import ChangeCounter
from reelq.database.fastread import SqliteReader
from reelq.database.views import TaskView
from reelq.domain import Status


def _store(db: Path) -> TaskStore:
    engine = make_engine(f"sqlite:///{db}")
    migrate(engine)
    return TaskStore(engine)


def _new() -> NewTask:
    return NewTask(model="viduq3-turbo", prompt="cache", duration=1, aspect_ratio="16:9", resolution="540p")


def _in_child(target, *args: object) -> None:  # type: ignore[no-untyped-def]
    """Run a writer in a fresh process (spawn: nothing shared with this one but the files)."""
    proc = multiprocessing.get_context("spawn").Process(target=target, args=args)
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0


def _claim_and_progress(db: str, task_id: str, progress: int) -> None:
    store = _store(Path(db))
    assert store.claim_next("w-child", 30, task_id) is not None
    assert store.renew(task_id, "w-child", 30, progress)


def _complete(db: str, task_id: str) -> None:
    assert _store(Path(db)).complete(task_id, "w-child", f"{task_id}.mp4", 1.0, 112)


def _revoke(db: str, plain: str) -> None:
    assert _store(Path(db)).revoke_key(plain) is not None


def _bump(path: str, times: int) -> None:
    counter = ChangeCounter(Path(path))
    for _ in range(times):
        counter.bump()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "reelq.db"


def test_reader_sees_every_transition_written_by_another_process(db: Path) -> None:
    store = _store(db)
    key, plain = store.create_key("k")
    reader = SqliteReader(db)
    assert reader.key_id_for(plain) == key.id
    task, _ = store.create_task(key.id, _new())
    # Creates do not bump the counter: the new row is found because misses are never cached.
    row = reader.task(task.id, key.id)
    assert isinstance(row, TaskView) and row.status == Status.QUEUED.value
    assert row == TaskView.of(store.get_task(task.id, key.id))  # the same view whichever way it is read
    assert reader.task(task.id, key.id) is row  # served from the cache while nothing changed

    _in_child(_claim_and_progress, str(db), task.id, 40)
    row = reader.task(task.id, key.id)
    assert row is not None and (row.status, row.progress) == (Status.PROCESSING.value, 40)

    _in_child(_complete, str(db), task.id)
    row = reader.task(task.id, key.id)
    assert row is not None and row.status == Status.COMPLETED.value

    store.mark_video_deleted(task.id)  # the sweeper, in this process but through the store
    assert reader.task(task.id, key.id)[8]  # video_deleted


def test_revocation_in_another_process_is_seen_by_the_next_lookup(db: Path) -> None:
    store = _store(db)
    key, plain = store.create_key("k")
    reader = SqliteReader(db)
    for _ in range(3):
        assert reader.key_id_for(plain) == key.id
    _in_child(_revoke, str(db), plain)
    assert reader.key_id_for(plain) is None
    # A key created after the reader started works at once (misses are not cached).
    other, other_plain = store.create_key("new")
    assert reader.key_id_for(other_plain) == other.id


def test_a_purged_task_is_gone_at_once(db: Path) -> None:
    store = _store(db)
    key, _ = store.create_key("k")
    task, _ = store.create_task(key.id, _new())
    store.fail(task.id, "boom")
    reader = SqliteReader(db)
    assert reader.task(task.id, key.id) is not None
    assert store.purge_finished(retention_seconds=-1) == [(task.id, None)]
    assert reader.task(task.id, key.id) is None


def test_a_write_outside_taskstore_is_not_seen_until_the_next_bump(db: Path) -> None:
    """Documents the contract: writes must go through TaskStore (its commits bump the counter)."""
    store = _store(db)
    key, _ = store.create_key("k")
    task, _ = store.create_task(key.id, _new())
    reader = SqliteReader(db)
    assert reader.task(task.id, key.id).progress == 0
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE tasks SET progress = 7 WHERE id = ?", (task.id,))
    assert reader.task(task.id, key.id).progress == 0
    ChangeCounter.for_database(db).bump()
    assert reader.task(task.id, key.id).progress == 7


def test_concurrent_bumps_from_many_processes_are_never_lost(tmp_path: Path) -> None:
    path = tmp_path / "x.changes"
    counter = ChangeCounter(path)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_bump, args=(str(path), 300)) for _ in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    assert counter.value() == 1200
