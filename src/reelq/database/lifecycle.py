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

import functools
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Float, and_, bindparam, case, cast, func, or_, select, true, update

from reelq.database import budget, usage, webhooks
from reelq.database.tables import api_keys, tasks
from reelq.database.tasks import TaskRow
from reelq.domain import CANCELLED_ERROR, Status

QUEUED, PROCESSING = Status.QUEUED.value, Status.PROCESSING.value
OFF_PEAK_ERROR = "Off-peak window elapsed."


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


# ---- the fair claim (SPEC §6 "Fair share") ------------------------------------------------------
# Start-time fair queuing over keys: every key has a virtual time (`api_keys.vtime`); a claim takes
# the oldest queued task of the key with the smallest virtual time that has a claimable task, and
# advances that key's virtual time by 1/weight. Two backlogged keys of weights 3 and 1 so claim 3 : 1;
# a key that returns after idling rejoins at the smallest virtual time of the waiting keys
# (tasks.py `_join_fair_share`), so its first task is next or the one after next.
#
# The pick is one statement that walks ix_api_keys_vtime in order and, per key, probes
# ix_tasks_key_status_peak_created for its oldest queued task of the tier; LIMIT 1 stops at the
# first key with one. Its cost grows with the keys walked past (keys with nothing claimable and a
# smaller virtual time), never with the number of queued tasks. docs/ARCHITECTURE.md has the
# alternatives (a window function sorts every queued row: linear in the queue).
@functools.lru_cache(maxsize=64)
def _pick_statement(postgres: bool, off_peak: bool, models: bool, exclude: bool, skip: bool) -> Any:
    """The pick, built once per shape: SQLAlchemy compiles a statement again whenever its objects are
    new, and compiling this one costs more than running it. Lists are expanding bind parameters
    (`models`, `exclude`: the claim's model filters; `skip`: keys found full under their row lock)."""
    t, k = tasks.alias("q"), api_keys
    cond = [t.c.key_id == k.c.id, t.c.status == QUEUED, t.c.off_peak.is_(off_peak)]
    if models:
        cond.append(t.c.model.in_(bindparam("models", expanding=True)))
    if exclude:
        cond.append(t.c.model.not_in(bindparam("exclude", expanding=True)))
    oldest = select(t.c.id).where(*cond).order_by(t.c.created_at).limit(1)
    p = tasks.alias("p")
    running = select(func.count()).select_from(p).where(p.c.key_id == k.c.id, p.c.status == PROCESSING)
    key_cond = [or_(k.c.max_processing.is_(None), running.scalar_subquery() < k.c.max_processing)]
    if skip:
        key_cond.append(k.c.id.not_in(bindparam("skip", expanding=True)))
    if postgres:
        # LATERAL: the per-key probe locks the one row it returns, skipping rows other claims hold.
        lateral = oldest.with_for_update(skip_locked=True).lateral("oldest")
        stmt = select(lateral.c.id, k.c.id).select_from(k.join(lateral, true())).where(*key_cond)
    else:  # SQLite: the write transaction is the only writer; a correlated probe per key walked
        probe = oldest.scalar_subquery()
        stmt = select(probe, k.c.id).where(probe.is_not(None), *key_cond)
    return stmt.order_by(k.c.vtime, k.c.id).limit(1)


def _fair_pick(
    conn: Connection, off_peak: bool, models: list[str] | None, exclude: list[str], skip_keys: list[str]
) -> tuple[str, str] | None:
    """(task id, key id) of the fairest claimable queued task of the tier, or None."""
    stmt = _pick_statement(
        conn.dialect.name == "postgresql", off_peak, models is not None, bool(exclude), bool(skip_keys)
    )
    params: dict[str, Any] = {}
    if models is not None:
        params["models"] = models
    if exclude:
        params["exclude"] = exclude
    if skip_keys:
        params["skip"] = skip_keys
    row = conn.execute(stmt, params).first()
    return None if row is None else (row[0], row[1])


_WAITING = tasks.alias("w")
_CURRENT_VTIME = (
    select(api_keys.c.vtime)
    .where(
        select(_WAITING.c.id).where(_WAITING.c.key_id == api_keys.c.id, _WAITING.c.status == QUEUED).exists()
    )
    .order_by(api_keys.c.vtime, api_keys.c.id)
    .limit(1)
)


def current_vtime(conn: Connection) -> float | None:
    """The smallest virtual time of the keys with a task waiting (None: nothing waits)."""
    return conn.execute(_CURRENT_VTIME).scalar()


def _claim_fair(
    conn: Connection, models: Collection[str] | None = None, exclude_models: Collection[str] = ()
) -> tuple[str, str] | None:
    """Pick the fairest task (off-peak only when nothing else can be claimed) and advance its key.

    `models`: only tasks of these models; `exclude_models`: none of these."""
    skip: list[str] = []
    wanted = None if models is None else list(models)
    exclude = list(exclude_models)
    for off_peak in (False, True):
        for _ in range(8):
            picked = _fair_pick(conn, off_peak, wanted, exclude, skip)
            if picked is None:
                break
            key_id = picked[1]
            if conn.dialect.name == "postgresql" and not _processing_room(conn, key_id):
                skip.append(key_id)  # a concurrent claim filled the key: the next key's turn
                continue
            conn.execute(_ADVANCE, {"key_id": key_id})
            return picked
    return None


def _processing_room(conn: Connection, key_id: str) -> bool:
    """PostgreSQL: recount the key's rendering tasks under its row lock, so two processes' claims of one
    key are serialised and `max_processing` holds (the pick's count ran on the statement's snapshot)."""
    limit = conn.execute(
        select(api_keys.c.max_processing).where(api_keys.c.id == key_id).with_for_update()
    ).scalar()
    if limit is None:
        return True
    running = conn.execute(
        select(func.count())
        .select_from(tasks)
        .where(tasks.c.key_id == key_id, tasks.c.status == PROCESSING)
    ).scalar_one()
    return int(running) < int(limit)


@functools.lru_cache(maxsize=8)
def _start_statement(postgres: bool, spend_always: bool) -> Any:
    """Move the picked queued row to processing (built once: see `_pick_statement`). An attempt is
    spent always, or (`spend_always` False: a relayed claim) only when no upstream task is known."""
    lease_until = bindparam("lease_seconds", type_=Float) + (
        cast(func.extract("epoch", func.now()), Float) if postgres else bindparam("now", type_=Float)
    )
    spent = 1 if spend_always else case((tasks.c.upstream_id.is_(None), 1), else_=0)
    return (
        update(tasks)
        .where(tasks.c.id == bindparam("task_id"), tasks.c.status == QUEUED)
        .values(
            status=PROCESSING,
            worker=bindparam("worker"),
            lease_until=lease_until,
            attempts=tasks.c.attempts + spent,
            started_at=func.coalesce(tasks.c.started_at, bindparam("now", type_=Float)),
        )
        .returning(*tasks.c)
    )


_ADVANCE = (
    update(api_keys)
    .where(api_keys.c.id == bindparam("key_id"))
    .values(vtime=api_keys.c.vtime + 1.0 / api_keys.c.weight)
)


def _start(
    conn: Connection, task_id: str, worker: str, lease_seconds: float, now: float, spend_always: bool = True
) -> Any:
    """Move the picked queued row to processing for `worker`; its new row, or None."""
    stmt = _start_statement(conn.dialect.name == "postgresql", spend_always)
    params = {"task_id": task_id, "worker": worker, "lease_seconds": lease_seconds, "now": now}
    return conn.execute(stmt, params).mappings().first()


def claim(
    conn: Connection,
    worker: str,
    lease_seconds: float,
    task_id: str | None = None,
    exclude_models: Collection[str] = (),
) -> TaskRow | None:
    """Move the fairest queued task (SPEC §6; or exactly `task_id`) to processing for `worker`; one
    attempt spent.

    `exclude_models`: models this worker does not serve (a render worker leaves relayed models to the
    relay worker, which waits on them without holding a render slot).
    """
    now = time.time()
    if task_id is not None:
        pick = select(tasks.c.id).where(tasks.c.status == QUEUED, tasks.c.id == task_id)
        if exclude_models:
            pick = pick.where(tasks.c.model.not_in(list(exclude_models)))
        if conn.dialect.name == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        chosen = conn.execute(pick).scalar()
        if chosen is None:
            return None
    else:
        picked = _claim_fair(conn, exclude_models=exclude_models)
        if picked is None:
            return None
        chosen = picked[0]
    row = _start(conn, chosen, worker, lease_seconds, now)
    if row is None:
        return None
    task = TaskRow.from_mapping(row)
    if task.callback_url is not None and task.started_at == now:  # the first claim: now `processing`
        webhooks.record(conn, PROCESSING, [task.id])
    return task


def claim_relayed(
    conn: Connection, worker: str, lease_seconds: float, models: Collection[str], limit: int
) -> list[TaskRow]:
    """Claim up to `limit` queued tasks of the relayed `models`, each the fairest (as `claim`).

    A task whose upstream id is already known is a resume, not a new generation: its attempt is not
    spent (the relay worker bounds such a task by its maximum wait instead).
    """
    if not models or limit <= 0:
        return []
    now = time.time()
    claimed: list[TaskRow] = []
    for _ in range(limit):
        picked = _claim_fair(conn, models=models)
        if picked is None:
            break
        row = _start(conn, picked[0], worker, lease_seconds, now, spend_always=False)
        if row is not None:
            claimed.append(TaskRow.from_mapping(row))
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


def record_upstream(
    conn: Connection,
    task_id: str,
    upstream_id: str | None,
    credits: int | None,
    channel: str | None = None,
    replaces: str | None = None,
) -> bool:
    """Store the upstream's task id (once: a known id is never replaced) and credits on a live task.

    Not conditional on the lease: the id is a fact about the task whoever holds it now, and the
    sooner it is on the row the smaller the window in which a resumed attempt could create again.
    `channel`: which of the model's upstreams holds it (written with the id). `replaces`: the id of a
    task that upstream forgot (a resubmit): only that id is replaced.
    """
    live = and_(tasks.c.id == task_id, tasks.c.status.in_([QUEUED, PROCESSING]))
    written = True
    if upstream_id is not None:
        known = tasks.c.upstream_id.is_(None) if replaces is None else tasks.c.upstream_id == replaces
        values: dict[str, Any] = {"upstream_id": upstream_id}
        if channel is not None:
            values["upstream_channel"] = channel
        stmt = update(tasks).where(live, known).values(**values)
        written = conn.execute(stmt).rowcount == 1
    if credits is not None:
        written = conn.execute(update(tasks).where(live).values(upstream_credits=credits)).rowcount == 1
    return written


def aim_create(conn: Connection, task_id: str, channel: str | None) -> None:
    """Note which upstream a create is about to be sent to (None: the last one refused it for sure) on
    a live task with no upstream id yet. A worker that finds the note on a task it claims knows a
    create of unknown fate may be there, and sends it nowhere else (SPEC §7)."""
    live = and_(tasks.c.id == task_id, tasks.c.status.in_([QUEUED, PROCESSING]))
    conn.execute(update(tasks).where(live, tasks.c.upstream_id.is_(None)).values(upstream_channel=channel))


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
    # Never charged more than the reservation made at create (SPEC §6: `spent + reserved <= budget`);
    # the actual duration is the asked one to within a frame, so this only absorbs rounding.
    charged = case(
        (tasks.c.reserved_tokens.is_(None), total_tokens),
        (tasks.c.reserved_tokens < total_tokens, tasks.c.reserved_tokens),
        else_=total_tokens,
    )
    done = conn.execute(
        update(tasks)
        .where(_owned(task_id, worker))
        .values(
            status=Status.COMPLETED.value,
            finished_at=now,
            video_key=video_key,
            actual_duration=actual_duration,
            total_tokens=charged,
            progress=100,
            lease_until=None,
            error=None,
        )
        .returning(
            tasks.c.key_id, tasks.c.model, tasks.c.callback_url, tasks.c.total_tokens, tasks.c.reserved_tokens
        )
    ).first()
    if done is None:
        return False
    # Settled in the commit that completes: a crash before it leaves both undone, after it both done.
    budget.settle(conn, done.key_id, done.reserved_tokens, done.total_tokens)
    usage.charge(conn, done.key_id, done.model, now, actual_duration, done.total_tokens)
    if done.callback_url is not None:
        webhooks.record(conn, Status.COMPLETED.value, [task_id])
    return True


def fail(conn: Connection, task_id: str, error: str, worker: str | None = None) -> bool:
    """Fail a task: with `worker`, only while that worker owns it; else from any live state."""
    live = and_(tasks.c.id == task_id, tasks.c.status.in_([QUEUED, PROCESSING]))
    cond = _owned(task_id, worker) if worker is not None else live
    stmt = update(tasks).where(cond)
    stmt = stmt.values(status=Status.FAILED.value, finished_at=time.time(), error=error, lease_until=None)
    ended = stmt.returning(tasks.c.callback_url, tasks.c.key_id, tasks.c.reserved_tokens)
    failed = conn.execute(ended).first()
    if failed is None:
        return False
    budget.release(conn, [(failed.key_id, failed.reserved_tokens)])
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


def sweep(
    conn: Connection, max_attempts: int, queued_stale_seconds: float, off_peak_window: float | None = None
) -> SweepResult:
    """Recover lapsed leases (requeue, or fail after max_attempts), fail off-peak tasks whose window
    elapsed (uncharged), and find queued rows left waiting."""
    now = time.time()
    lapsed = and_(tasks.c.status == PROCESSING, tasks.c.lease_until < _clock(conn, now))
    error = f"Render failed after {max_attempts} attempts: the worker stopped responding or crashed."
    # A relayed task whose upstream id is known is resumed, never failed here: another attempt only
    # waits on the generation already paid for (its relay worker bounds it by the maximum wait).
    exhausted = and_(tasks.c.attempts >= max_attempts, tasks.c.upstream_id.is_(None))
    ended = list(
        conn.execute(
            update(tasks)
            .where(lapsed, exhausted)
            .values(status=Status.FAILED.value, finished_at=now, lease_until=None, error=error)
            .returning(tasks.c.id, tasks.c.key_id, tasks.c.reserved_tokens)
        ).all()
    )
    if off_peak_window is not None:  # SPEC §6: an off-peak task not started within its window
        ended += conn.execute(
            update(tasks)
            .where(
                tasks.c.status == QUEUED,
                tasks.c.off_peak.is_(True),
                tasks.c.started_at.is_(None),
                tasks.c.created_at < now - off_peak_window,
            )
            .values(status=Status.FAILED.value, finished_at=now, lease_until=None, error=OFF_PEAK_ERROR)
            .returning(tasks.c.id, tasks.c.key_id, tasks.c.reserved_tokens)
        ).all()
    budget.release(conn, [(row.key_id, row.reserved_tokens) for row in ended])
    failed = [row.id for row in ended]
    webhooks.record(conn, Status.FAILED.value, failed)
    requeued: list[str] = list(
        conn.execute(
            update(tasks)
            .where(lapsed, ~exhausted)
            .values(status=QUEUED, worker=None, lease_until=None)
            .returning(tasks.c.id)
        ).scalars()
    )
    stale: list[str] = list(
        conn.execute(
            select(tasks.c.id)
            .where(tasks.c.status == QUEUED, tasks.c.created_at < now - queued_stale_seconds)
            .limit(1000)
        ).scalars()
    )
    return SweepResult(requeued=requeued, failed=failed, stale_queued=stale)


# ---- cancel (the owner's request) ---------------------------------------------------------------
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
        budget.release(conn, [(task.key_id, task.reserved_tokens)])  # never charged
        if task.callback_url is not None:  # the owner gets the terminal event like any other failure
            webhooks.record(conn, Status.FAILED.value, [task.id])
        return CancelResult(task, True)
    found = conn.execute(select(tasks).where(tasks.c.id == task_id, tasks.c.key_id == key_id)).mappings()
    current = found.first()
    return CancelResult(TaskRow.from_mapping(current) if current else None, False)
