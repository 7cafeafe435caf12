"""Task rows: what a task is (`TaskRow`, `NewTask`), storing new ones, reading them, and removing
them after retention. How a task moves between states is database/lifecycle.py.

Functions take an open connection; `TaskStore` chooses the transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, or_, select, update

from reelq.database.quotas import QuotaCounts, QuotaExceeded, Quotas
from reelq.database.tables import task_inputs, tasks
from reelq.domain import Status, VideoSpec, new_task_id

IDEMPOTENCY_WINDOW_SECONDS = 24 * 3600


@dataclass(frozen=True, slots=True)
class TaskRow:
    id: str
    key_id: str
    model: str
    prompt: str
    duration: int
    aspect_ratio: str
    resolution: str
    seed: int | None
    has_first_image: bool
    has_last_image: bool
    callback_url: str | None
    status: str
    attempts: int
    worker: str | None
    lease_until: float | None
    progress: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    video_key: str | None
    video_deleted: bool
    actual_duration: float | None
    total_tokens: int | None
    error: str | None
    idempotency_key: str | None
    request_hash: str | None
    upstream_id: str | None = None
    upstream_credits: int | None = None

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any]) -> TaskRow:
        return cls(**{name: row[name] for name in _TASK_ROW_FIELDS})

    @property
    def spec(self) -> VideoSpec:
        return VideoSpec(
            model=self.model,
            prompt=self.prompt,
            duration=self.duration,
            aspect_ratio=self.aspect_ratio,
            resolution=self.resolution,
            seed=self.seed,
        )


_TASK_ROW_FIELDS = tuple(f.name for f in fields(TaskRow))


@dataclass(frozen=True, slots=True)
class NewTask:
    """A validated create request, ready to store."""

    model: str
    prompt: str
    duration: int
    aspect_ratio: str
    resolution: str
    seed: int | None = None
    first_image: str | None = None
    last_image: str | None = None
    callback_url: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None


_NEW_TASK_DEFAULTS: dict[str, Any] = {
    "worker": None,
    "lease_until": None,
    "started_at": None,
    "finished_at": None,
    "video_key": None,
    "actual_duration": None,
    "total_tokens": None,
    "error": None,
    "upstream_id": None,
    "upstream_credits": None,
}


def _new_task_values(key_id: str, new: NewTask, now: float) -> dict[str, Any]:
    """The columns of a new queued task (its images go to task_inputs)."""
    return {
        "id": new_task_id(),
        "key_id": key_id,
        "model": new.model,
        "prompt": new.prompt,
        "duration": new.duration,
        "aspect_ratio": new.aspect_ratio,
        "resolution": new.resolution,
        "seed": new.seed,
        "has_first_image": new.first_image is not None,
        "has_last_image": new.last_image is not None,
        "callback_url": new.callback_url,
        "status": Status.QUEUED.value,
        "attempts": 0,
        "progress": 0,
        "created_at": now,
        "video_deleted": False,
        "idempotency_key": new.idempotency_key,
        "request_hash": new.request_hash,
    }


# ---- create -------------------------------------------------------------------------------------
def insert_new(
    conn: Connection,
    requests: Sequence[tuple[str, NewTask]],
    quotas: Quotas | None,
    counts: QuotaCounts,
    now: float,
) -> list[TaskRow | QuotaExceeded]:
    """Store several creates in one transaction; one outcome per request, in order.

    Quotas are checked as if the creates had come one after another, each create advancing
    the counts it passed (see QuotaCounts for how counts are reused). The caller forgets the
    counts when the transaction fails.
    """
    outcomes: list[TaskRow | QuotaExceeded] = []
    rows: list[dict[str, Any]] = []
    inputs: list[dict[str, Any]] = []
    unsaved: dict[str, int] = {}  # admitted per key, inserted together at the end
    for key_id, new in requests:
        if quotas is not None:
            active = counts.get(conn, key_id, quotas.max_active_per_key, unsaved.get(key_id, 0))
            if active >= quotas.max_active_per_key:
                outcomes.append(QuotaExceeded("active", quotas.max_active_per_key))
                continue
            if counts.get(conn, None, quotas.max_queue, len(rows)) >= quotas.max_queue:
                outcomes.append(QuotaExceeded("queue", quotas.max_queue))
                continue
            counts.added(key_id)
            unsaved[key_id] = unsaved.get(key_id, 0) + 1
        values = _new_task_values(key_id, new, now)
        rows.append(values)
        inputs += [
            {"task_id": values["id"], "field": name, "value": value}
            for name, value in (("first_image", new.first_image), ("last_image", new.last_image))
            if value is not None
        ]
        outcomes.append(TaskRow.from_mapping({**_NEW_TASK_DEFAULTS, **values}))
    if rows:
        conn.execute(insert(tasks), rows)
    if inputs:
        conn.execute(insert(task_inputs), inputs)
    return outcomes


def by_idempotency_key(conn: Connection, key_id: str, idempotency_key: str) -> TaskRow | None:
    row = (
        conn.execute(
            select(tasks).where(tasks.c.key_id == key_id, tasks.c.idempotency_key == idempotency_key)
        )
        .mappings()
        .first()
    )
    return TaskRow.from_mapping(row) if row else None


def release_idempotency_key(conn: Connection, task_id: str) -> None:
    """An old task keeps its id, but its idempotency key is free for a new task."""
    conn.execute(update(tasks).where(tasks.c.id == task_id).values(idempotency_key=None))


# ---- read ---------------------------------------------------------------------------------------
def get(conn: Connection, task_id: str, key_id: str | None = None) -> TaskRow | None:
    """A task by id; with key_id, only when that key owns it."""
    query = select(tasks).where(tasks.c.id == task_id)
    if key_id is not None:
        query = query.where(tasks.c.key_id == key_id)
    row = conn.execute(query).mappings().first()
    return TaskRow.from_mapping(row) if row else None


def get_inputs(conn: Connection, task_id: str) -> dict[str, str]:
    rows = conn.execute(
        select(task_inputs.c.field, task_inputs.c.value).where(task_inputs.c.task_id == task_id)
    )
    return {field: value for field, value in rows}


def has_queued(conn: Connection) -> bool:
    return (
        conn.execute(select(tasks.c.id).where(tasks.c.status == Status.QUEUED.value).limit(1)).first()
        is not None
    )


def count_live(conn: Connection) -> dict[str, int]:
    """Queued and processing tasks (on the status index: finished rows are not read)."""
    live = [Status.QUEUED.value, Status.PROCESSING.value]
    rows = conn.execute(
        select(tasks.c.status, func.count()).where(tasks.c.status.in_(live)).group_by(tasks.c.status)
    )
    return {status: count for status, count in rows}


def count_by_status(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(tasks.c.status, func.count()).group_by(tasks.c.status))
    return {status: count for status, count in rows}


# ---- retention ----------------------------------------------------------------------------------
def expired_videos(conn: Connection, cutoff: float, limit: int) -> list[tuple[str, str]]:
    """(task id, video key) of tasks completed before `cutoff` whose video file still exists."""
    rows = conn.execute(
        select(tasks.c.id, tasks.c.video_key)
        .where(
            tasks.c.status == Status.COMPLETED.value,
            tasks.c.video_deleted.is_(False),
            tasks.c.finished_at < cutoff,
        )
        .limit(limit)
    )
    return [(task_id, key) for task_id, key in rows]


def finished_before(conn: Connection, cutoff: float, limit: int) -> list[tuple[str, str | None]]:
    """Up to `limit` tasks finished before `cutoff`: (id, the key of a video still stored, else None)."""
    old = and_(
        tasks.c.status.in_([Status.COMPLETED.value, Status.FAILED.value]), tasks.c.finished_at < cutoff
    )
    query = select(tasks.c.id, tasks.c.video_key, tasks.c.video_deleted).where(old).limit(limit)
    return [(task_id, None if deleted else key) for task_id, key, deleted in conn.execute(query)]


def delete_finished(conn: Connection, ids: list[str]) -> None:
    """Delete these finished tasks and their inputs (terminal rows never change: no re-check needed)."""
    conn.execute(delete(task_inputs).where(task_inputs.c.task_id.in_(ids)))
    conn.execute(delete(tasks).where(tasks.c.id.in_(ids)))


def mark_video_deleted(conn: Connection, task_id: str) -> None:
    conn.execute(update(tasks).where(tasks.c.id == task_id).values(video_deleted=True))


# ---- list and delete (the owner's task management; issue 13) ------------------------------------
def list_for_key(
    conn: Connection,
    key_id: str,
    limit: int,
    before: tuple[float, str] | None = None,
    status: str | None = None,
    ascending: bool = False,
) -> list[TaskRow]:
    """The key's tasks newest first (created_at, then id, both descending), after the `before`
    position (a page's last row) and of one wire `status` when given; walks ix_tasks_key_created.
    With `ascending`, oldest first and `before` is the position to start after in that order (the
    OpenAI surface's `order=asc`).

    The wire status is derived (domain.wire_status): `queued` is a queued row never started,
    `processing` a processing row or a queued one that was started before (requeued).
    """
    query = select(tasks).where(tasks.c.key_id == key_id)
    if before is not None:
        created, task_id = before
        if ascending:
            query = query.where(
                or_(tasks.c.created_at > created, and_(tasks.c.created_at == created, tasks.c.id > task_id))
            )
        else:
            query = query.where(
                or_(tasks.c.created_at < created, and_(tasks.c.created_at == created, tasks.c.id < task_id))
            )
    if status == Status.QUEUED.value:
        query = query.where(tasks.c.status == Status.QUEUED.value, tasks.c.started_at.is_(None))
    elif status == Status.PROCESSING.value:
        query = query.where(
            or_(
                tasks.c.status == Status.PROCESSING.value,
                and_(tasks.c.status == Status.QUEUED.value, tasks.c.started_at.is_not(None)),
            )
        )
    elif status is not None:
        query = query.where(tasks.c.status == status)
    if ascending:
        query = query.order_by(tasks.c.created_at.asc(), tasks.c.id.asc()).limit(limit)
    else:
        query = query.order_by(tasks.c.created_at.desc(), tasks.c.id.desc()).limit(limit)
    return [TaskRow.from_mapping(row) for row in conn.execute(query).mappings()]


def delete_owned(conn: Connection, task_id: str, key_id: str) -> TaskRow | None:
    """Delete the key's task (and its inputs); the deleted row, whose video file the caller removes."""
    row = get(conn, task_id, key_id)
    if row is not None:
        conn.execute(delete(task_inputs).where(task_inputs.c.task_id == task_id))
        conn.execute(delete(tasks).where(tasks.c.id == task_id, tasks.c.key_id == key_id))
    return row


def queue_stats(
    conn: Connection, max_queued: int, recent: int
) -> tuple[list[float], int, list[tuple[str, float]]]:
    """What the polling hint is computed from (service/pollhint.py): the creation times of queued rows
    (oldest first, at most `max_queued`), the number of processing rows, and (model, seconds from first
    claim to finish) of the `recent` newest completed tasks. Three index walks (ix_tasks_status_created)."""
    queued = list(
        conn.execute(
            select(tasks.c.created_at)
            .where(tasks.c.status == Status.QUEUED.value)
            .order_by(tasks.c.created_at)
            .limit(max_queued)
        ).scalars()
    )
    running = conn.execute(
        select(func.count()).select_from(tasks).where(tasks.c.status == Status.PROCESSING.value)
    ).scalar_one()
    renders = conn.execute(
        select(tasks.c.model, tasks.c.finished_at - tasks.c.started_at)
        .where(tasks.c.status == Status.COMPLETED.value, tasks.c.started_at.is_not(None))
        .order_by(tasks.c.created_at.desc())
        .limit(recent)
    ).all()
    return (
        queued,
        int(running),
        [(model, float(seconds)) for model, seconds in renders if seconds is not None],
    )
