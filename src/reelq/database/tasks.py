"""Task rows: what a task is (`TaskRow`, `NewTask`), storing new ones, reading them, and removing
them after retention. How a task moves between states is database/lifecycle.py.

Functions take an open connection; `TaskStore` chooses the transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Connection, RowMapping, and_, delete, func, insert, or_, select, update

from reelq.database import budget
from reelq.database.quotas import QuotaCounts, QuotaExceeded, Quotas
from reelq.database.tables import Rows, api_keys, task_inputs, tasks
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
    reserved_tokens: int | None = None
    off_peak: bool = False
    upstream_channel: str | None = None  # which of a relayed model's upstreams holds the task

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any] | RowMapping) -> TaskRow:
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
    off_peak: bool = False
    # The tokens the task will cost at its requested duration (SPEC §6), reserved of the key's budget
    # in the create's transaction. None: not priced (a task stored below the API: nothing held or capped).
    price: int | None = None


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
    "upstream_channel": None,
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
        "reserved_tokens": new.price,
        "off_peak": new.off_peak,
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
    policies = _key_policies(conn, {key_id for key_id, _ in requests})
    unlimited: dict[str, int] = {}  # tokens held for keys without a budget: one UPDATE per key
    for key_id, new in requests:
        max_active, has_budget = policies.get(key_id, (None, False))
        if quotas is not None:
            limit = max_active if max_active is not None else quotas.max_active_per_key
            active = counts.get(conn, key_id, limit, unsaved.get(key_id, 0))
            if active >= limit:
                outcomes.append(QuotaExceeded("active", limit))
                continue
            if counts.get(conn, None, quotas.max_queue, len(rows)) >= quotas.max_queue:
                outcomes.append(QuotaExceeded("queue", quotas.max_queue))
                continue
        if has_budget and new.price is not None:
            if not budget.reserve(conn, key_id, new.price):
                outcomes.append(QuotaExceeded("budget", new.price))
                continue
        elif new.price:
            unlimited[key_id] = unlimited.get(key_id, 0) + new.price
        if quotas is not None:
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
    for key_id, tokens in unlimited.items():
        budget.reserve_unchecked(conn, key_id, tokens)
    if rows:
        _join_fair_share(conn, {row["key_id"] for row in rows})
        conn.execute(insert(tasks), rows)
    if inputs:
        conn.execute(insert(task_inputs), inputs)
    return outcomes


def _key_policies(conn: Connection, key_ids: set[str]) -> dict[str, tuple[int | None, bool]]:
    """(max_active override, has a budget) of each creating key, read inside the create transaction."""
    rows: Rows = conn.execute(
        select(api_keys.c.id, api_keys.c.max_active, api_keys.c.budget).where(api_keys.c.id.in_(key_ids))
    )
    return {key_id: (max_active, budget_ is not None) for key_id, max_active, budget_ in rows}


def _join_fair_share(conn: Connection, key_ids: set[str]) -> None:
    """A key that had nothing waiting rejoins fair share at the current virtual time (lifecycle.py
    `claim`): the smallest of the keys that have tasks waiting. Without this a key idle for a day would
    come back with a virtual time far behind the busy keys' and take every slot until it caught up."""
    from reelq.database.lifecycle import current_vtime

    now_v = current_vtime(conn)
    if now_v is None:
        return
    larger = func.greatest if conn.dialect.name == "postgresql" else func.max
    conn.execute(
        update(api_keys)
        .where(api_keys.c.id.in_(key_ids), api_keys.c.vtime < now_v)
        .values(vtime=larger(api_keys.c.vtime, now_v))
    )


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
    rows: Rows = conn.execute(
        select(task_inputs.c.field, task_inputs.c.value).where(task_inputs.c.task_id == task_id)
    )
    return {field: value for field, value in rows}


def models_of(conn: Connection, task_ids: Sequence[str]) -> dict[str, str]:
    """task id -> model of the given tasks (those that exist)."""
    if not task_ids:
        return {}
    rows = conn.execute(select(tasks.c.id, tasks.c.model).where(tasks.c.id.in_(list(task_ids))))
    return {row.id: row.model for row in rows}


def has_queued(conn: Connection) -> bool:
    return (
        conn.execute(select(tasks.c.id).where(tasks.c.status == Status.QUEUED.value).limit(1)).first()
        is not None
    )


def count_live(conn: Connection) -> dict[str, int]:
    """Queued and processing tasks (on the status index: finished rows are not read)."""
    live = [Status.QUEUED.value, Status.PROCESSING.value]
    rows: Rows = conn.execute(
        select(tasks.c.status, func.count()).where(tasks.c.status.in_(live)).group_by(tasks.c.status)
    )
    return {status: count for status, count in rows}


def queued_by_model(conn: Connection) -> dict[str, int]:
    """Queued tasks per model (the queue depth per pool, metrics.py)."""
    queued = select(tasks.c.model, func.count()).where(tasks.c.status == Status.QUEUED.value)
    rows: Rows = conn.execute(queued.group_by(tasks.c.model))
    return {model: count for model, count in rows}


def count_by_status(conn: Connection) -> dict[str, int]:
    rows: Rows = conn.execute(select(tasks.c.status, func.count()).group_by(tasks.c.status))
    return {status: count for status, count in rows}


# ---- retention ----------------------------------------------------------------------------------
def expired_videos(conn: Connection, cutoff: float, limit: int) -> list[tuple[str, str]]:
    """(task id, video key) of tasks completed before `cutoff` whose video file still exists."""
    rows: Rows = conn.execute(
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
    rows: Rows = conn.execute(query)
    return [(task_id, None if deleted else key) for task_id, key, deleted in rows]


def delete_finished(conn: Connection, ids: list[str]) -> None:
    """Delete these finished tasks and their inputs (terminal rows never change: no re-check needed)."""
    conn.execute(delete(task_inputs).where(task_inputs.c.task_id.in_(ids)))
    conn.execute(delete(tasks).where(tasks.c.id.in_(ids)))


def mark_video_deleted(conn: Connection, task_id: str) -> None:
    conn.execute(update(tasks).where(tasks.c.id == task_id).values(video_deleted=True))


# ---- list and delete (the owner's task management) ----------------------------------------------
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
) -> tuple[list[float], int, list[tuple[str, float]], list[str], dict[str, int]]:
    """What the polling hint is computed from (service/pollhint.py): the creation times of queued rows
    (oldest first, at most `max_queued`), the number of processing rows, (model, seconds from first
    claim to finish) of the `recent` newest completed tasks, and - for the queue of each pool (SPEC §7)
    - the model of each queued row and the processing rows per model. Three index walks
    (ix_tasks_status_created)."""
    queued_rows = conn.execute(
        select(tasks.c.created_at, tasks.c.model)
        .where(tasks.c.status == Status.QUEUED.value)
        .order_by(tasks.c.created_at)
        .limit(max_queued)
    ).all()
    queued = [row[0] for row in queued_rows]
    running_rows: Rows = conn.execute(
        select(tasks.c.model, func.count())
        .where(tasks.c.status == Status.PROCESSING.value)
        .group_by(tasks.c.model)
    )
    running_by_model = {model: int(n) for model, n in running_rows}
    running = sum(running_by_model.values())
    renders: Rows = conn.execute(
        select(tasks.c.model, tasks.c.finished_at - tasks.c.started_at)
        .where(tasks.c.status == Status.COMPLETED.value, tasks.c.started_at.is_not(None))
        .order_by(tasks.c.created_at.desc())
        .limit(recent)
    ).all()
    return (
        queued,
        int(running),
        [(model, float(seconds)) for model, seconds in renders if seconds is not None],
        [row[1] for row in queued_rows],
        running_by_model,
    )
