"""TaskStore: every write to the task table, and the state machine that makes crashes harmless.

The row is the single source of truth (docs/ARCHITECTURE.md). Every transition is one
conditional UPDATE, so a lost message, a duplicated message or a worker that lost its
lease can never move a task backwards or overwrite the work of the one that took over.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from reelq.domain import Status, VideoSpec, new_task_id
from reelq.store.changes import ChangeCounter
from reelq.store.tables import api_keys, task_inputs, tasks, usage_daily

KEY_PREFIX = "rq_"
IDEMPOTENCY_WINDOW_SECONDS = 24 * 3600
# What may leave the store about a key: never its hash.
KEY_COLUMNS = (
    api_keys.c.id,
    api_keys.c.name,
    api_keys.c.key_prefix,
    api_keys.c.created_at,
    api_keys.c.revoked_at,
)


def change_counter_for(engine: Engine) -> ChangeCounter | None:
    """The shared change counter of a SQLite file database (see store/changes.py); None elsewhere."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    return ChangeCounter.for_database(database)


def hash_key(plain: str) -> str:
    return hashlib.sha256(plain.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    name: str
    key_prefix: str
    created_at: float
    revoked_at: float | None


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


@dataclass(frozen=True, slots=True)
class UsageRow:
    day: str
    model: str
    videos: int
    seconds: float
    tokens: int


@dataclass(frozen=True, slots=True)
class Quotas:
    """Checked inside the create transaction, so concurrent creates cannot overshoot them."""

    max_active_per_key: int
    max_queue: int


class QuotaExceeded(Exception):
    """A create refused because a quota is full; `kind` is "active" (per key) or "queue" (global)."""

    def __init__(self, kind: str, limit: int) -> None:
        super().__init__(kind)
        self.kind = kind
        self.limit = limit


@dataclass(frozen=True, slots=True)
class SweepResult:
    requeued: list[str]
    failed: list[str]
    stale_queued: list[str]


_NEW_TASK_DEFAULTS: dict[str, Any] = {
    "worker": None,
    "lease_until": None,
    "started_at": None,
    "finished_at": None,
    "video_key": None,
    "actual_duration": None,
    "total_tokens": None,
    "error": None,
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


class _QuotaCounts:
    """The quota counts of recent create transactions, so a burst does not recount for each batch.

    A count is taken inside the write transaction, then advanced by this process's own creates
    and reused for up to RECOUNT_SECONDS. Workers only lower the true counts meanwhile, so a
    reused count errs high, and a count that comes within a tenth of its limit is always taken
    afresh: no create is refused on a stale count. What a reused count can miss is creates by
    other API processes in that window, so several API processes could overshoot a quota by
    what they admit in a second beyond that margin. Counting is bounded by the limit anyway; at
    a 10,000-task queue each count scans 10,000 index entries, which this spares a burst.
    Called with the store's write lock held (one create transaction at a time per process).
    """

    RECOUNT_SECONDS = 1.0
    MAX_KEYS = 10_000

    def __init__(self) -> None:
        self._counts: dict[str | None, tuple[int, float]] = {}  # key id (None: the queue) -> (n, taken)

    def get(self, conn: Connection, key_id: str | None, limit: int, unsaved: int) -> int:
        """The count for `key_id` (None: the queue); `unsaved`: creates admitted in this
        transaction but not inserted yet (a fresh count cannot see them)."""
        now = time.monotonic()
        cached = self._counts.get(key_id)
        if cached is not None:
            count, taken = cached
            if now - taken < self.RECOUNT_SECONDS and count < limit - max(1, limit // 10):
                return count
        if key_id is None:
            count = TaskStore.count_queued(conn, limit) + unsaved
        else:
            count = TaskStore.count_active(conn, key_id, limit) + unsaved
        if len(self._counts) >= self.MAX_KEYS:
            self._counts.clear()
        self._counts[key_id] = (count, now)
        return count

    def added(self, key_id: str) -> None:
        """One create admitted for `key_id` (and so one more queued task)."""
        for which in (key_id, None):
            count, taken = self._counts[which]
            self._counts[which] = (count + 1, taken)

    def forget(self) -> None:
        """After a failed transaction, the admitted creates were never stored."""
        self._counts.clear()


class TaskStore:
    """All reads and writes of keys and tasks through SQLAlchemy Core (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        self.changes = change_counter_for(engine)
        self._counts = _QuotaCounts()
        # SQLite has one writer at a time. Threads of one process queue on this lock instead of
        # in SQLite's busy handler, which sleeps in growing steps (up to 100 ms) and let 32
        # concurrent creates collapse to ~230/s; other processes still meet the busy handler.
        self._write_lock = threading.Lock() if engine.dialect.name == "sqlite" else contextlib.nullcontext()

    @contextmanager
    def _write(self, *, bump: bool = True) -> Iterator[Connection]:
        """A write transaction; once it has committed, readers' caches are told (store/changes.py).

        `bump=False` only for writes that add rows and change none: readers cache rows they
        found, never a miss, so a new row cannot be hidden behind a cached answer.
        """
        with self._write_lock, self.engine.begin() as conn:
            yield conn
        if bump and self.changes is not None:
            self.changes.bump()

    # ---- API keys -------------------------------------------------------------------------
    def create_key(self, name: str = "") -> tuple[ApiKey, str]:
        """Create a key; returns the record and the plain key (shown once, never stored)."""
        plain = KEY_PREFIX + secrets.token_urlsafe(32)
        record = ApiKey(
            id="key_" + secrets.token_hex(8),
            name=name,
            key_prefix=plain[:10],
            created_at=time.time(),
            revoked_at=None,
        )
        with self._write(bump=False) as conn:
            conn.execute(
                insert(api_keys).values(
                    id=record.id,
                    name=name,
                    key_hash=hash_key(plain),
                    key_prefix=record.key_prefix,
                    created_at=record.created_at,
                )
            )
        return record, plain

    def list_keys(self) -> list[ApiKey]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(*KEY_COLUMNS).order_by(api_keys.c.created_at)).mappings()
            return [ApiKey(**row) for row in rows]

    def revoke_key(self, id_or_key: str) -> ApiKey | None:
        """Revoke by id or by the plain key; returns the key, or None when there is no such key."""
        cond = or_(api_keys.c.id == id_or_key, api_keys.c.key_hash == hash_key(id_or_key))
        with self._write() as conn:
            conn.execute(
                update(api_keys).where(cond, api_keys.c.revoked_at.is_(None)).values(revoked_at=time.time())
            )
            row = conn.execute(select(*KEY_COLUMNS).where(cond)).mappings().first()
        return ApiKey(**row) if row else None

    def key_id_for(self, plain: str) -> str | None:
        """The id of an active key, or None (unknown or revoked)."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(api_keys.c.id).where(
                    api_keys.c.key_hash == hash_key(plain), api_keys.c.revoked_at.is_(None)
                )
            ).scalar()

    def ensure_local_key(self) -> str:
        """A key row for the embedded CLI (`reelq generate` without a server); it has no usable plain key."""
        key_id = "key_local"
        with self._write() as conn:
            exists = conn.execute(select(api_keys.c.id).where(api_keys.c.id == key_id)).scalar()
            if not exists:
                conn.execute(
                    insert(api_keys).values(
                        id=key_id,
                        name="embedded cli",
                        key_hash=hash_key(secrets.token_hex(32)),
                        key_prefix="(local)",
                        created_at=time.time(),
                    )
                )
        return key_id

    # ---- tasks: create and read -----------------------------------------------------------
    def create_task(self, key_id: str, new: NewTask, quotas: Quotas | None = None) -> tuple[TaskRow, bool]:
        """Store a new queued task; returns (row, created).

        With an idempotency key, a task made under the same key in the last 24 h is
        returned instead (created=False); the unique index settles concurrent retries.
        """
        if new.idempotency_key is None:
            return self._insert_task(key_id, new, quotas), True
        for _ in range(3):
            existing = self._by_idempotency_key(key_id, new.idempotency_key)
            if existing is not None and existing.created_at > time.time() - IDEMPOTENCY_WINDOW_SECONDS:
                return existing, False
            if existing is not None:  # an old task keeps its id; its key is free for reuse
                with self._write() as conn:
                    conn.execute(update(tasks).where(tasks.c.id == existing.id).values(idempotency_key=None))
            try:
                return self._insert_task(key_id, new, quotas), True
            except IntegrityError:
                continue  # a concurrent request with the same key won: read its task
        raise RuntimeError("idempotency key contention did not settle")

    def create_tasks(
        self, requests: Sequence[tuple[str, NewTask]], quotas: Quotas | None = None
    ) -> list[TaskRow | QuotaExceeded]:
        """Store several creates in one transaction (group commit); one outcome per request, in order.

        Quotas are checked as if the creates had come one after another, each create advancing
        the counts it passed (see _QuotaCounts for how counts are reused). An idempotency key's
        unique index still applies; a clash fails the whole transaction (IntegrityError), so
        creates with keys go one per transaction (see `create_task`).
        """
        try:
            return self._create_tasks(requests, quotas)
        except BaseException:
            self._counts.forget()
            raise

    def _create_tasks(
        self, requests: Sequence[tuple[str, NewTask]], quotas: Quotas | None
    ) -> list[TaskRow | QuotaExceeded]:
        now = time.time()
        outcomes: list[TaskRow | QuotaExceeded] = []
        rows: list[dict[str, Any]] = []
        inputs: list[dict[str, Any]] = []
        with self._write(bump=False) as conn:
            unsaved: dict[str, int] = {}  # admitted per key, inserted together at the end
            for key_id, new in requests:
                if quotas is not None:
                    active = self._counts.get(conn, key_id, quotas.max_active_per_key, unsaved.get(key_id, 0))
                    if active >= quotas.max_active_per_key:
                        outcomes.append(QuotaExceeded("active", quotas.max_active_per_key))
                        continue
                    if self._counts.get(conn, None, quotas.max_queue, len(rows)) >= quotas.max_queue:
                        outcomes.append(QuotaExceeded("queue", quotas.max_queue))
                        continue
                    self._counts.added(key_id)
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

    @staticmethod
    def count_active(conn: Connection, key_id: str, limit: int) -> int:
        """The key's queued + processing tasks, counted up to `limit` (cheap: never past the quota)."""
        live = [Status.QUEUED.value, Status.PROCESSING.value]
        # Selecting only indexed columns keeps both counts on their covering index (no row reads).
        found = select(tasks.c.status).where(tasks.c.key_id == key_id, tasks.c.status.in_(live)).limit(limit)
        return conn.execute(select(func.count()).select_from(found.subquery())).scalar_one()

    @staticmethod
    def count_queued(conn: Connection, limit: int) -> int:
        found = select(tasks.c.status).where(tasks.c.status == Status.QUEUED.value).limit(limit)
        return conn.execute(select(func.count()).select_from(found.subquery())).scalar_one()

    def _by_idempotency_key(self, key_id: str, idempotency_key: str) -> TaskRow | None:
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    select(tasks).where(tasks.c.key_id == key_id, tasks.c.idempotency_key == idempotency_key)
                )
                .mappings()
                .first()
            )
        return TaskRow.from_mapping(row) if row else None

    def _insert_task(self, key_id: str, new: NewTask, quotas: Quotas | None) -> TaskRow:
        outcome = self.create_tasks([(key_id, new)], quotas)[0]
        if isinstance(outcome, QuotaExceeded):
            raise outcome
        return outcome

    def get_task(self, task_id: str, key_id: str | None = None) -> TaskRow | None:
        """A task by id; with key_id, only when that key owns it."""
        query = select(tasks).where(tasks.c.id == task_id)
        if key_id is not None:
            query = query.where(tasks.c.key_id == key_id)
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return TaskRow.from_mapping(row) if row else None

    def get_inputs(self, task_id: str) -> dict[str, str]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(task_inputs.c.field, task_inputs.c.value).where(task_inputs.c.task_id == task_id)
            )
            return {field: value for field, value in rows}

    # ---- the state machine ----------------------------------------------------------------
    def claim_next(self, worker: str, lease_seconds: float, task_id: str | None = None) -> TaskRow | None:
        """Atomically move the oldest queued task (or `task_id`) to processing for `worker`."""
        now = time.time()
        pick = select(tasks.c.id).where(tasks.c.status == Status.QUEUED.value)
        if task_id is not None:
            pick = pick.where(tasks.c.id == task_id)
        pick = pick.order_by(tasks.c.created_at).limit(1)
        if self._postgres:
            pick = pick.with_for_update(skip_locked=True)
        stmt = (
            update(tasks)
            .where(tasks.c.id == pick.scalar_subquery(), tasks.c.status == Status.QUEUED.value)
            .values(
                status=Status.PROCESSING.value,
                worker=worker,
                lease_until=now + lease_seconds,
                attempts=tasks.c.attempts + 1,
                started_at=func.coalesce(tasks.c.started_at, now),
            )
            .returning(*tasks.c)
        )
        with self._write() as conn:
            row = conn.execute(stmt).mappings().first()
        return TaskRow.from_mapping(row) if row else None

    def has_queued(self) -> bool:
        with self.engine.connect() as conn:
            return (
                conn.execute(select(tasks.c.id).where(tasks.c.status == Status.QUEUED.value).limit(1)).first()
                is not None
            )

    def _owned(self, task_id: str, worker: str) -> Any:
        return and_(
            tasks.c.id == task_id, tasks.c.worker == worker, tasks.c.status == Status.PROCESSING.value
        )

    def renew(self, task_id: str, worker: str, lease_seconds: float, progress: int) -> bool:
        """Extend the lease and record progress; False means the lease was lost (stop working)."""
        larger = func.greatest if self._postgres else func.max  # SQLite's two-argument max() is scalar
        stmt = (
            update(tasks)
            .where(self._owned(task_id, worker))
            .values(lease_until=time.time() + lease_seconds, progress=larger(tasks.c.progress, progress))
        )
        with self._write() as conn:
            return conn.execute(stmt).rowcount == 1

    def complete(
        self, task_id: str, worker: str, video_key: str, actual_duration: float, total_tokens: int
    ) -> bool:
        """Finish successfully and charge the key; False when this worker no longer owns the task."""
        now = time.time()
        with self._write() as conn:
            done = conn.execute(
                update(tasks)
                .where(self._owned(task_id, worker))
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
                .returning(tasks.c.key_id, tasks.c.model)
            ).first()
            if done is None:
                return False
            self._charge(conn, done.key_id, done.model, now, actual_duration, total_tokens)
            return True

    def _charge(
        self, conn: Connection, key_id: str, model: str, when: float, seconds: float, tokens: int
    ) -> None:
        """Add one video to the key's usage ledger (in the completing transaction: charged exactly once)."""
        day = time.strftime("%Y-%m-%d", time.gmtime(when))
        insert_fn = pg_insert if self._postgres else sqlite_insert
        stmt = insert_fn(usage_daily).values(
            key_id=key_id, day=day, model=model, videos=1, seconds=seconds, tokens=tokens
        )
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["key_id", "day", "model"],
                set_={
                    "videos": usage_daily.c.videos + 1,
                    "seconds": usage_daily.c.seconds + seconds,
                    "tokens": usage_daily.c.tokens + tokens,
                },
            )
        )

    def usage(self, key_id: str, since: str | None = None, until: str | None = None) -> list[UsageRow]:
        """The key's usage per UTC day and model, optionally within [since, until] (YYYY-MM-DD)."""
        query = select(usage_daily).where(usage_daily.c.key_id == key_id)
        if since:
            query = query.where(usage_daily.c.day >= since)
        if until:
            query = query.where(usage_daily.c.day <= until)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(usage_daily.c.day, usage_daily.c.model)).mappings()
            return [
                UsageRow(
                    day=r["day"],
                    model=r["model"],
                    videos=r["videos"],
                    seconds=r["seconds"],
                    tokens=r["tokens"],
                )
                for r in rows
            ]

    def fail(self, task_id: str, error: str, worker: str | None = None) -> bool:
        """Fail a task: with `worker`, only while that worker owns it; else from any live state."""
        cond = (
            self._owned(task_id, worker)
            if worker is not None
            else and_(
                tasks.c.id == task_id, tasks.c.status.in_([Status.QUEUED.value, Status.PROCESSING.value])
            )
        )
        with self._write() as conn:
            return (
                conn.execute(
                    update(tasks)
                    .where(cond)
                    .values(
                        status=Status.FAILED.value, finished_at=time.time(), error=error, lease_until=None
                    )
                ).rowcount
                == 1
            )

    def release(self, task_id: str, worker: str) -> bool:
        """Hand a task back without spending an attempt (graceful shutdown while rendering)."""
        with self._write() as conn:
            return (
                conn.execute(
                    update(tasks)
                    .where(self._owned(task_id, worker))
                    .values(
                        status=Status.QUEUED.value,
                        worker=None,
                        lease_until=None,
                        attempts=tasks.c.attempts - 1,
                    )
                ).rowcount
                == 1
            )

    def expire_leases_of(self, worker_prefix: str) -> int:
        """Mark the leases of a worker known to be dead as lapsed, so the sweeper recovers them now."""
        with self._write() as conn:
            return conn.execute(
                update(tasks)
                .where(tasks.c.status == Status.PROCESSING.value, tasks.c.worker.startswith(worker_prefix))
                .values(lease_until=0.0)
            ).rowcount

    def sweep(self, max_attempts: int, queued_stale_seconds: float) -> SweepResult:
        """Recover lapsed leases (requeue, or fail after max_attempts) and find queued rows left waiting."""
        now = time.time()
        lapsed = and_(tasks.c.status == Status.PROCESSING.value, tasks.c.lease_until < now)
        with self._write() as conn:
            failed = list(
                conn.execute(
                    update(tasks)
                    .where(lapsed, tasks.c.attempts >= max_attempts)
                    .values(
                        status=Status.FAILED.value,
                        finished_at=now,
                        lease_until=None,
                        error=(
                            f"Render failed after {max_attempts} attempts: "
                            "the worker stopped responding or crashed."
                        ),
                    )
                    .returning(tasks.c.id)
                ).scalars()
            )
            requeued = list(
                conn.execute(
                    update(tasks)
                    .where(lapsed, tasks.c.attempts < max_attempts)
                    .values(status=Status.QUEUED.value, worker=None, lease_until=None)
                    .returning(tasks.c.id)
                ).scalars()
            )
            stale = list(
                conn.execute(
                    select(tasks.c.id)
                    .where(
                        tasks.c.status == Status.QUEUED.value,
                        tasks.c.created_at < now - queued_stale_seconds,
                    )
                    .limit(1000)
                ).scalars()
            )
        return SweepResult(requeued=requeued, failed=failed, stale_queued=stale)

    def expired_videos(self, ttl_seconds: float, limit: int = 500) -> list[tuple[str, str]]:
        """(task id, video key) of completed tasks whose download link has expired and file still exists."""
        cutoff = time.time() - ttl_seconds
        with self.engine.connect() as conn:
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

    def purge_finished(self, retention_seconds: float, limit: int = 500) -> list[tuple[str, str | None]]:
        """Delete tasks finished more than `retention_seconds` ago; returns (id, video key) of each."""
        cutoff = time.time() - retention_seconds
        old = and_(
            tasks.c.status.in_([Status.COMPLETED.value, Status.FAILED.value]), tasks.c.finished_at < cutoff
        )
        with self._write() as conn:
            rows = conn.execute(select(tasks.c.id, tasks.c.video_key).where(old).limit(limit)).all()
            ids = [task_id for task_id, _ in rows]
            if ids:
                conn.execute(delete(task_inputs).where(task_inputs.c.task_id.in_(ids)))
                conn.execute(delete(tasks).where(tasks.c.id.in_(ids)))
        return [(task_id, key) for task_id, key in rows]

    def mark_video_deleted(self, task_id: str) -> None:
        with self._write() as conn:
            conn.execute(update(tasks).where(tasks.c.id == task_id).values(video_deleted=True))

    def count_by_status(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(tasks.c.status, func.count()).group_by(tasks.c.status))
            return {status: count for status, count in rows}
