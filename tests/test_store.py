"""The task state machine, on a real SQLite file and on the real PostgreSQL server.

Every transition is one conditional UPDATE; these tests hold the store to that on both
databases (the scale-out work runs the same code on PostgreSQL).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from reelq.database import NewTask, QuotaExceeded, Quotas, TaskStore, make_engine, migrate
from reelq.database.db import SCHEMA_HEAD, migrations_head
from reelq.domain import Status

POSTGRES_URL = os.environ.get("REELQ_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _postgres_store() -> Iterator[TaskStore]:
    """A fresh schema per test in the `test` database (dropped afterwards)."""
    admin = make_engine(POSTGRES_URL)
    schema = f"reelq_{uuid.uuid4().hex[:12]}"
    try:
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
    except Exception as exc:  # pragma: no cover - depends on the machine
        if os.environ.get("CI"):
            raise  # under CI the database is part of the machine: never skip silently
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    engine = make_engine(POSTGRES_URL + f"?options=-csearch_path%3D{schema}")
    migrate(engine)
    try:
        yield TaskStore(engine)
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TaskStore]:
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'reelq.db'}")
        migrate(engine)
        yield TaskStore(engine)
        engine.dispose()
    else:
        yield from _postgres_store()


def new(prompt: str = "a store test", **extra: object) -> NewTask:
    fields = {
        "model": "viduq3-pro",
        "prompt": prompt,
        "duration": 5,
        "aspect_ratio": "16:9",
        "resolution": "720p",
        **extra,
    }
    return NewTask(**fields)  # type: ignore[arg-type]


@pytest.mark.unit
def test_the_schema_head_every_start_compares_with_is_the_migrations_head() -> None:
    # Starts read SCHEMA_HEAD instead of importing Alembic to read the folder: a new migration
    # must move it too.
    assert migrations_head() == SCHEMA_HEAD


def test_claim_is_exclusive_and_ordered(store: TaskStore) -> None:
    key, _ = store.create_key("k")
    first, _ = store.create_task(key.id, new("one"))
    time.sleep(0.01)
    second, _ = store.create_task(key.id, new("two"))
    claimed = store.claim_next("w1", 30)
    assert claimed is not None and claimed.id == first.id
    assert (claimed.status, claimed.attempts, claimed.worker) == (Status.PROCESSING, 1, "w1")
    again = store.claim_next("w2", 30)
    assert again is not None and again.id == second.id
    assert store.claim_next("w3", 30) is None


def test_concurrent_claims_never_share_a_task(store: TaskStore) -> None:
    key, _ = store.create_key("k")
    ids = {store.create_task(key.id, new(f"t{i}"))[0].id for i in range(20)}
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (task := store.claim_next(name, 30)) is not None:
            with lock:
                claimed.append(task.id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(ids)  # every task once, none twice


def test_a_worker_that_lost_its_lease_cannot_finish(store: TaskStore) -> None:
    key, _ = store.create_key("k")
    task, _ = store.create_task(key.id, new())
    store.claim_next("old", 30, task_id=task.id)
    assert store.expire_leases_of("old") == 1
    result = store.sweep(max_attempts=3, queued_stale_seconds=60)
    assert result.requeued == [task.id]
    assert store.get_task(task.id).status == Status.QUEUED  # type: ignore[union-attr]
    assert store.claim_next("new", 30) is not None
    assert not store.renew(task.id, "old", 30, 50)
    assert not store.complete(task.id, "old", "late.mp4", 5.0, 1500)
    assert not store.fail(task.id, "late failure", "old")
    assert store.renew(task.id, "new", 30, 40)
    assert store.complete(task.id, "new", "won.mp4", 5.0, 1500)
    row = store.get_task(task.id)
    assert row is not None
    assert (row.status, row.video_key, row.attempts, row.progress) == (Status.COMPLETED, "won.mp4", 2, 100)
    # Terminal is terminal.
    assert not store.fail(task.id, "too late")
    assert store.get_task(task.id).status == Status.COMPLETED  # type: ignore[union-attr]
    assert store.usage(key.id)[0].tokens == 1500  # charged once


def test_sweep_fails_after_max_attempts(store: TaskStore) -> None:
    key, _ = store.create_key("k")
    task, _ = store.create_task(key.id, new())
    for attempt in range(1, 3):
        assert store.claim_next(f"w{attempt}", 30) is not None
        store.expire_leases_of(f"w{attempt}")
        result = store.sweep(max_attempts=2, queued_stale_seconds=60)
    assert result.failed == [task.id]
    row = store.get_task(task.id)
    assert row is not None and row.status == Status.FAILED and "2 attempts" in (row.error or "")


def test_release_refunds_the_attempt(store: TaskStore) -> None:
    key, _ = store.create_key("k")
    task, _ = store.create_task(key.id, new())
    store.claim_next("w", 30)
    assert store.release(task.id, "w")
    row = store.get_task(task.id)
    assert row is not None and (row.status, row.attempts, row.worker) == (Status.QUEUED, 0, None)
    assert row.started_at is not None  # so it keeps reading `processing` on the wire


def test_quotas_and_idempotency(store: TaskStore) -> None:
    key, _ = store.create_key("k")
    quotas = Quotas(max_active_per_key=2, max_queue=100)
    store.create_task(key.id, new(), quotas)
    store.create_task(key.id, new(), quotas)
    with pytest.raises(QuotaExceeded) as exc:
        store.create_task(key.id, new(), quotas)
    assert exc.value.kind == "active"
    other, _ = store.create_key("other")
    first, created = store.create_task(other.id, new(idempotency_key="abc", request_hash="h1"))
    again, created_again = store.create_task(other.id, new(idempotency_key="abc", request_hash="h1"))
    assert created and not created_again and again.id == first.id


def test_purge_removes_videos_before_rows(store: TaskStore) -> None:
    """A failed video delete keeps its row for the next purge: no video is left that no row points to."""
    key, _ = store.create_key("k")
    kept, _ = store.create_task(key.id, new())
    expired, _ = store.create_task(key.id, new())
    for task, video in ((kept, "kept.mp4"), (expired, "expired.mp4")):
        store.claim_next("w", 30)
        store.complete(task.id, "w", video, 5.0, 1500)
    store.mark_video_deleted(expired.id)  # its link expired: the sweep already removed that file
    time.sleep(0.05)

    def storage_down(key: str) -> None:
        raise OSError(f"cannot delete {key}")

    with pytest.raises(OSError, match=r"kept\.mp4"):
        store.purge_finished(retention_seconds=0.01, remove_video=storage_down)
    assert store.get_task(kept.id) is not None and store.get_task(expired.id) is not None
    removed: list[str] = []
    purged = store.purge_finished(retention_seconds=0.01, remove_video=removed.append)
    assert sorted(purged) == sorted([(kept.id, "kept.mp4"), (expired.id, None)])
    assert removed == ["kept.mp4"]  # never the one already gone
    assert store.get_task(kept.id) is None and store.get_task(expired.id) is None


def test_revoked_keys_and_purge(store: TaskStore) -> None:
    key, plain = store.create_key("k")
    assert store.key_id_for(plain) == key.id
    assert store.revoke_key(plain) is not None
    assert store.key_id_for(plain) is None
    task, _ = store.create_task(key.id, new())
    store.claim_next("w", 30)
    store.complete(task.id, "w", "v.mp4", 5.0, 1500)
    assert store.purge_finished(retention_seconds=3600) == []
    time.sleep(0.05)
    assert store.purge_finished(retention_seconds=0.01) == [(task.id, "v.mp4")]
    assert store.get_task(task.id) is None
