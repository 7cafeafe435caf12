"""The task state machine, the part of the store that makes crashes harmless.

    queued ──claim──▶ processing ──complete──▶ completed (usage charged in the same commit)
      ▲                  │    │
      └──release/sweep───┘    └──fail, or sweep after max_attempts──▶ failed
    renew: still processing, with a longer lease and more progress

The row is the single source of truth (docs/ARCHITECTURE.md). Every transition is one
conditional UPDATE, so a lost message, a duplicated message or a worker that lost its
lease can never move a task backwards or overwrite the work of the one that took over:
a worker's writes match only while the row is `processing` under its own name.
Functions take the open write transaction (`TaskStore` opens it and tells readers after).

Each change a client can see (first claim: `processing`; `completed`; `failed`, whoever fails it)
also queues its webhook event in the same transaction (database/webhooks.py `record`, a no-op for a
task without a callback_url), so a committed change always has its event and an event its change.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, func, select, update

from reelq.database import usage, webhooks
from reelq.database.tables import tasks
from reelq.database.tasks import TaskRow
from reelq.domain import Status

QUEUED, PROCESSING = Status.QUEUED.value, Status.PROCESSING.value


@dataclass(frozen=True, slots=True)
class SweepResult:
    requeued: list[str]
    failed: list[str]
    stale_queued: list[str]


def _owned(task_id: str, worker: str) -> Any:
    return and_(tasks.c.id == task_id, tasks.c.worker == worker, tasks.c.status == PROCESSING)


def claim(conn: Connection, worker: str, lease_seconds: float, task_id: str | None = None) -> TaskRow | None:
    """Move the oldest queued task (or `task_id`) to processing for `worker`; one attempt spent."""
    now = time.time()
    pick = select(tasks.c.id).where(tasks.c.status == QUEUED)
    if task_id is not None:
        pick = pick.where(tasks.c.id == task_id)
    pick = pick.order_by(tasks.c.created_at).limit(1)
    if conn.dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    row = (
        conn.execute(
            update(tasks)
            .where(tasks.c.id == pick.scalar_subquery(), tasks.c.status == QUEUED)
            .values(
                status=PROCESSING,
                worker=worker,
                lease_until=now + lease_seconds,
                attempts=tasks.c.attempts + 1,
                started_at=func.coalesce(tasks.c.started_at, now),
            )
            .returning(*tasks.c)
        )
        .mappings()
        .first()
    )
    if row is None:
        return None
    task = TaskRow.from_mapping(row)
    if task.callback_url is not None and task.started_at == now:  # the first claim: now `processing`
        webhooks.record(conn, PROCESSING, [task.id])
    return task


def renew(conn: Connection, task_id: str, worker: str, lease_seconds: float, progress: int) -> bool:
    """Extend the lease and record progress; False means the lease was lost (stop working)."""
    larger = func.greatest if conn.dialect.name == "postgresql" else func.max  # SQLite's 2-arg max()
    stmt = update(tasks).where(_owned(task_id, worker))
    stmt = stmt.values(lease_until=time.time() + lease_seconds, progress=larger(tasks.c.progress, progress))
    return conn.execute(stmt).rowcount == 1


def complete(
    conn: Connection, task_id: str, worker: str, video_key: str, actual_duration: float, total_tokens: int
) -> bool:
    """Finish successfully and charge the key in the same transaction; False when not owned."""
    now = time.time()
    done = conn.execute(
        update(tasks)
        .where(_owned(task_id, worker))
        .values(
            status=Status.COMPLETED.value,
            finished_at=now,
            video_key=video_key,
            actual_duration=actual_duration,
            total_tokens=total_tokens,
            progress=100,
            lease_until=None,
            error=None,
        )
        .returning(tasks.c.key_id, tasks.c.model, tasks.c.callback_url)
    ).first()
    if done is None:
        return False
    usage.charge(conn, done.key_id, done.model, now, actual_duration, total_tokens)
    if done.callback_url is not None:
        webhooks.record(conn, Status.COMPLETED.value, [task_id])
    return True


def fail(conn: Connection, task_id: str, error: str, worker: str | None = None) -> bool:
    """Fail a task: with `worker`, only while that worker owns it; else from any live state."""
    live = and_(tasks.c.id == task_id, tasks.c.status.in_([QUEUED, PROCESSING]))
    cond = _owned(task_id, worker) if worker is not None else live
    stmt = update(tasks).where(cond)
    stmt = stmt.values(status=Status.FAILED.value, finished_at=time.time(), error=error, lease_until=None)
    failed = conn.execute(stmt.returning(tasks.c.callback_url)).first()
    if failed is None:
        return False
    if failed.callback_url is not None:
        webhooks.record(conn, Status.FAILED.value, [task_id])
    return True


def release(conn: Connection, task_id: str, worker: str) -> bool:
    """Hand a task back without spending an attempt (graceful shutdown while rendering)."""
    stmt = update(tasks).where(_owned(task_id, worker))
    stmt = stmt.values(status=QUEUED, worker=None, lease_until=None, attempts=tasks.c.attempts - 1)
    return conn.execute(stmt).rowcount == 1


def expire_leases_of(conn: Connection, worker_prefix: str) -> int:
    """Mark the leases of a worker known to be dead as lapsed, so the next sweep recovers them."""
    stmt = update(tasks).where(tasks.c.status == PROCESSING, tasks.c.worker.startswith(worker_prefix))
    return conn.execute(stmt.values(lease_until=0.0)).rowcount


def sweep(conn: Connection, max_attempts: int, queued_stale_seconds: float) -> SweepResult:
    """Recover lapsed leases (requeue, or fail after max_attempts) and find queued rows left waiting."""
    now = time.time()
    lapsed = and_(tasks.c.status == PROCESSING, tasks.c.lease_until < now)
    error = f"Render failed after {max_attempts} attempts: the worker stopped responding or crashed."
    failed = list(
        conn.execute(
            update(tasks)
            .where(lapsed, tasks.c.attempts >= max_attempts)
            .values(status=Status.FAILED.value, finished_at=now, lease_until=None, error=error)
            .returning(tasks.c.id)
        ).scalars()
    )
    webhooks.record(conn, Status.FAILED.value, failed)
    requeued = list(
        conn.execute(
            update(tasks)
            .where(lapsed, tasks.c.attempts < max_attempts)
            .values(status=QUEUED, worker=None, lease_until=None)
            .returning(tasks.c.id)
        ).scalars()
    )
    stale = conn.execute(
        select(tasks.c.id)
        .where(tasks.c.status == QUEUED, tasks.c.created_at < now - queued_stale_seconds)
        .limit(1000)
    ).scalars()
    return SweepResult(requeued=requeued, failed=failed, stale_queued=list(stale))
