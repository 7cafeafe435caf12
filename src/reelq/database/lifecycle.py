"""The task state machine, the part of the store that makes crashes harmless.

    queued ──claim──▶ processing ──complete──▶ completed (usage charged in the same commit)
      ▲                  │    │
      └──release/sweep───┘    └──fail, or sweep after max_attempts──▶ failed
    cancel (the owner): queued or processing ──▶ failed "Cancelled by user." (never charged)
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
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Float, and_, case, cast, func, select, update

from reelq.database import usage, webhooks
from reelq.database.tables import tasks
from reelq.database.tasks import TaskRow
from reelq.domain import CANCELLED_ERROR, Status

QUEUED, PROCESSING = Status.QUEUED.value, Status.PROCESSING.value


@dataclass(frozen=True, slots=True)
class SweepResult:
    requeued: list[str]
    failed: list[str]
    stale_queued: list[str]


def _clock(conn: Connection, now: float) -> Any:
    """What leases are written and judged with: on PostgreSQL the database's clock (its transaction
    time), so workers and sweepers on machines whose clocks disagree still agree on which lease has
    lapsed; on the embedded SQLite file every process shares this machine's clock, so `now` as is."""
    if conn.dialect.name == "postgresql":
        return cast(func.extract("epoch", func.now()), Float)
    return now


def _owned(task_id: str, worker: str) -> Any:
    return and_(tasks.c.id == task_id, tasks.c.worker == worker, tasks.c.status == PROCESSING)


def claim(
    conn: Connection,
    worker: str,
    lease_seconds: float,
    task_id: str | None = None,
    exclude_models: Collection[str] = (),
) -> TaskRow | None:
    """Move the oldest queued task (or `task_id`) to processing for `worker`; one attempt spent.

    `exclude_models`: models this worker does not serve (a render worker leaves relayed models to the
    relay worker, which waits on them without holding a render slot).
    """
    now = time.time()
    pick = select(tasks.c.id).where(tasks.c.status == QUEUED)
    if task_id is not None:
        pick = pick.where(tasks.c.id == task_id)
    if exclude_models:
        pick = pick.where(tasks.c.model.not_in(list(exclude_models)))
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
                lease_until=_clock(conn, now) + lease_seconds,
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


def claim_relayed(
    conn: Connection, worker: str, lease_seconds: float, models: Collection[str], limit: int
) -> list[TaskRow]:
    """Claim up to `limit` queued tasks of the relayed `models` at once, oldest first.

    A task whose upstream id is already known is a resume, not a new generation: its attempt is not
    spent (the relay worker bounds such a task by its maximum wait instead).
    """
    if not models or limit <= 0:
        return []
    now = time.time()
    pick = (
        select(tasks.c.id)
        .where(tasks.c.status == QUEUED, tasks.c.model.in_(list(models)))
        .order_by(tasks.c.created_at)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    spent = case((tasks.c.upstream_id.is_(None), 1), else_=0)
    rows = (
        conn.execute(
            update(tasks)
            .where(tasks.c.id.in_(pick.scalar_subquery()), tasks.c.status == QUEUED)
            .values(
                status=PROCESSING,
                worker=worker,
                lease_until=_clock(conn, now) + lease_seconds,
                attempts=tasks.c.attempts + spent,
                started_at=func.coalesce(tasks.c.started_at, now),
            )
            .returning(*tasks.c)
        )
        .mappings()
        .all()
    )
    claimed = sorted((TaskRow.from_mapping(row) for row in rows), key=lambda r: r.created_at)
    first = [t.id for t in claimed if t.callback_url is not None and t.started_at == now]
    if first:  # the first claim of these: now `processing` (webhooks.py)
        webhooks.record(conn, PROCESSING, first)
    return claimed


def renew_all(conn: Connection, worker: str, lease_seconds: float) -> set[str]:
    """Extend the lease of every task `worker` holds, in one statement; returns their ids (a task
    missing from the answer was lost: the sweeper gave it to someone else)."""
    stmt = update(tasks).where(tasks.c.worker == worker, tasks.c.status == PROCESSING)
    stmt = stmt.values(lease_until=_clock(conn, time.time()) + lease_seconds).returning(tasks.c.id)
    return set(conn.execute(stmt).scalars())


def record_upstream(conn: Connection, task_id: str, upstream_id: str | None, credits: int | None) -> bool:
    """Store the upstream's task id (once: a known id is never replaced) and credits on a live task.

    Not conditional on the lease: the id is a fact about the task whoever holds it now, and the
    sooner it is on the row the smaller the window in which a resumed attempt could create again.
    """
    live = and_(tasks.c.id == task_id, tasks.c.status.in_([QUEUED, PROCESSING]))
    written = True
    if upstream_id is not None:
        stmt = update(tasks).where(live, tasks.c.upstream_id.is_(None)).values(upstream_id=upstream_id)
        written = conn.execute(stmt).rowcount == 1
    if credits is not None:
        written = conn.execute(update(tasks).where(live).values(upstream_credits=credits)).rowcount == 1
    return written


def renew(conn: Connection, task_id: str, worker: str, lease_seconds: float, progress: int) -> bool:
    """Extend the lease and record progress; False means the lease was lost (stop working)."""
    larger = func.greatest if conn.dialect.name == "postgresql" else func.max  # SQLite's 2-arg max()
    stmt = update(tasks).where(_owned(task_id, worker))
    lease_until = _clock(conn, time.time()) + lease_seconds
    stmt = stmt.values(lease_until=lease_until, progress=larger(tasks.c.progress, progress))
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


def release(conn: Connection, task_id: str, worker: str, refund: bool = True) -> bool:
    """Hand a task back without spending an attempt (graceful shutdown while rendering).

    `refund=False` when the claim spent none (a relayed task resumed on its known upstream id).
    """
    stmt = update(tasks).where(_owned(task_id, worker))
    attempts = tasks.c.attempts - 1 if refund else tasks.c.attempts
    stmt = stmt.values(status=QUEUED, worker=None, lease_until=None, attempts=attempts)
    return conn.execute(stmt).rowcount == 1


def expire_leases_of(conn: Connection, worker_prefix: str) -> int:
    """Mark the leases of a worker known to be dead as lapsed, so the next sweep recovers them."""
    stmt = update(tasks).where(tasks.c.status == PROCESSING, tasks.c.worker.startswith(worker_prefix))
    return conn.execute(stmt.values(lease_until=0.0)).rowcount


def sweep(conn: Connection, max_attempts: int, queued_stale_seconds: float) -> SweepResult:
    """Recover lapsed leases (requeue, or fail after max_attempts) and find queued rows left waiting."""
    now = time.time()
    lapsed = and_(tasks.c.status == PROCESSING, tasks.c.lease_until < _clock(conn, now))
    error = f"Render failed after {max_attempts} attempts: the worker stopped responding or crashed."
    # A relayed task whose upstream id is known is resumed, never failed here: another attempt only
    # waits on the generation already paid for (its relay worker bounds it by the maximum wait).
    exhausted = and_(tasks.c.attempts >= max_attempts, tasks.c.upstream_id.is_(None))
    failed = list(
        conn.execute(
            update(tasks)
            .where(lapsed, exhausted)
            .values(status=Status.FAILED.value, finished_at=now, lease_until=None, error=error)
            .returning(tasks.c.id)
        ).scalars()
    )
    webhooks.record(conn, Status.FAILED.value, failed)
    requeued = list(
        conn.execute(
            update(tasks)
            .where(lapsed, ~exhausted)
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


# ---- cancel (owner's request; issue 13) ---------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CancelResult:
    """What a cancel found: `row` is the task after it (None: no such task for this key);
    `cancelled` is True when this call moved it from a live state to failed."""

    row: TaskRow | None
    cancelled: bool


def cancel(conn: Connection, task_id: str, key_id: str) -> CancelResult:
    """Fail a live (queued or processing) task of `key_id` as cancelled by its owner.

    One conditional UPDATE like every transition: a worker's `complete` matches only while the row
    is `processing`, so once this commits no racing finish can win and the task is never charged.
    The worker is left in the row, so its next lease renewal (worker/heartbeat.py) sees the task is
    no longer its own and the render stops.
    """
    live = and_(tasks.c.id == task_id, tasks.c.key_id == key_id, tasks.c.status.in_([QUEUED, PROCESSING]))
    row = (
        conn.execute(
            update(tasks)
            .where(live)
            .values(
                status=Status.FAILED.value,
                finished_at=time.time(),
                error=CANCELLED_ERROR,
                lease_until=None,
            )
            .returning(*tasks.c)
        )
        .mappings()
        .first()
    )
    if row is not None:
        task = TaskRow.from_mapping(row)
        if task.callback_url is not None:  # the owner gets the terminal event like any other failure
            webhooks.record(conn, Status.FAILED.value, [task.id])
        return CancelResult(task, True)
    found = conn.execute(select(tasks).where(tasks.c.id == task_id, tasks.c.key_id == key_id)).mappings()
    current = found.first()
    return CancelResult(TaskRow.from_mapping(current) if current else None, False)
