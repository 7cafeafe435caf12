"""TaskStore: the one object the rest of the code holds for the tasks database.

It owns the engine, the transactions and the change-counter bump after each commit; what
each transaction does lives in a module with one idea: keys.py (API keys), tasks.py (task
rows: create, read, retention), lifecycle.py (the state machine), usage.py (the ledger),
quotas.py (create quotas and their count cache).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import IntegrityError

from reelq.database import keys, lifecycle, tasks, usage, webhooks
from reelq.database.changes import Change, ChangeCounter, ChangeNotices
from reelq.database.keys import ApiKey, KeyRecord
from reelq.database.lifecycle import CancelResult, SweepResult
from reelq.database.quotas import QuotaCounts, QuotaExceeded, Quotas
from reelq.database.tasks import IDEMPOTENCY_WINDOW_SECONDS, NewTask, TaskRow
from reelq.database.usage import UsageRow
from reelq.database.webhooks import DeliveryAttempt, WebhookEvent


def change_counter_for(engine: Engine) -> ChangeNotices | None:
    """The change counter: shared memory beside a SQLite file (database/changes.py), LISTEN/NOTIFY on
    PostgreSQL (database/pgnotify.py); None elsewhere (an in-memory SQLite database)."""
    if engine.dialect.name == "postgresql":
        from reelq.database.pgnotify import PgChangeListener

        return PgChangeListener.for_engine(engine)
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    return ChangeCounter.for_database(database)


@dataclass
class _Pending:
    """An open write transaction and what it will tell readers when it commits (None: nothing)."""

    conn: Connection
    change: Change | None


class TaskStore:
    """All reads and writes of keys and tasks through SQLAlchemy Core (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine, counts: QuotaCounts | None = None) -> None:
        self.engine = engine
        self.changes = change_counter_for(engine)
        # PostgreSQL: the notice goes out with the commit itself (database/pgnotify.py); None on SQLite.
        self._notify: Callable[[Connection, Change, str | None], None] | None = None
        if engine.dialect.name == "postgresql":
            from reelq.database.pgnotify import send_notice

            self._notify = send_notice
        # The quota counts reused within a burst: this process's (default) or shared (sharedlimits.py).
        self._counts = counts if counts is not None else QuotaCounts()
        # SQLite has one writer at a time. Threads of one process queue on this lock instead of
        # in SQLite's busy handler, which sleeps in growing steps (up to 100 ms) and made concurrent
        # creates collapse (docs/performance.md, "Creates"); other processes still meet the busy handler.
        self._write_lock = threading.Lock() if engine.dialect.name == "sqlite" else contextlib.nullcontext()

    @contextmanager
    def _write(self, change: Change | None = Change.ROWS, task_id: str | None = None) -> Iterator[Connection]:
        """A write transaction; once it has committed, readers' caches are told (database/changes.py).

        `change` says what the transaction changed (Change): with TASK or PROGRESS and `task_id`,
        that task's row and nothing else a reader caches, so on PostgreSQL only that cached row
        is dropped (the notice names it) and a busy deployment's progress commits do not empty
        every API process's cache; PROGRESS does not wake the webhook sender either. None only
        for writes that change nothing a reader shows or the webhook sender needs: rows added
        (readers cache rows they found, never a miss, so a new row cannot be hidden behind a
        cached answer) or columns no reader caches.
        """
        with self._write_deciding(change, task_id) as pending:
            yield pending.conn

    @contextmanager
    def _write_deciding(self, change: Change | None = None, task_id: str | None = None) -> Iterator[_Pending]:
        """`_write` whose `change` the transaction may still set (a sweep that found nothing tells nobody)."""
        with self._write_lock, self.engine.begin() as conn:
            pending = _Pending(conn, change)
            yield pending
            if pending.change is not None and self._notify is not None:
                self._notify(conn, pending.change, task_id)
        if pending.change is not None and self.changes is not None:
            self.changes.bump(pending.change, task_id)

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    # ---- API keys (database/keys.py) ---------------------------------------------------------
    def create_key(self, name: str = "") -> tuple[ApiKey, str]:
        """Create a key; returns the record and the plain key (shown once, never stored)."""
        with self._write(None) as conn:
            return keys.create(conn, name)

    def list_keys(self) -> list[ApiKey]:
        with self._read() as conn:
            return keys.list_all(conn)

    def revoke_key(self, id_or_key: str) -> ApiKey | None:
        """Revoke by id or by the plain key; the commit's bump makes every cached lookup look again."""
        with self._write() as conn:
            return keys.revoke(conn, id_or_key)

    # ---- selling it (SPEC §6): key settings, budgets, credits ----------------------------------
    def create_key_with(
        self, settings: Mapping[str, Any], *, admin: bool = False
    ) -> tuple[KeyRecord, str, str]:
        """A key with settings; (record, plain key, webhook secret), the secrets shown this once."""
        with self._write(None) as conn:  # a new row: no reader has it cached
            return keys.create_with(conn, settings, admin=admin)

    def key_record(self, key_id: str) -> KeyRecord | None:
        with self._read() as conn:
            return keys.get(conn, key_id)

    def key_page(self, limit: int, after: str | None = None) -> list[KeyRecord]:
        with self._read() as conn:
            return keys.page(conn, limit, after)

    def update_key(self, key_id: str, settings: Mapping[str, Any]) -> KeyRecord | None:
        """Change settings; the commit's notice makes every API process read the key's policy again."""
        with self._write() as conn:
            return keys.update_settings(conn, key_id, settings)

    def credit_key(self, key_id: str, tokens: int, note: str | None, by: str | None) -> KeyRecord | None:
        with self._write() as conn:
            return keys.credit(conn, key_id, tokens, note, by)

    def key_credits(self, key_id: str, limit: int = 100) -> list[keys.Credit]:
        with self._read() as conn:
            return keys.credits_of(conn, key_id, limit)

    def all_usage(
        self, since: str | None = None, until: str | None = None, key_id: str | None = None
    ) -> list[tuple[str, UsageRow]]:
        """Every key's usage (or one key's) per UTC day and model: (key id, row) each."""
        with self._read() as conn:
            return usage.query_all(conn, since, until, key_id)

    def key_id_for(self, plain: str) -> str | None:
        """The id of an active key, or None (unknown, revoked or expired)."""
        with self._read() as conn:
            return keys.active_id(conn, plain)

    def webhook_secret(self, id_or_key: str) -> tuple[str, str] | None:
        """(key id, webhook signing secret) of a key (by id or plain key), made on first use; None: none."""
        with self._read() as conn:
            found = keys.webhook_secret(conn, id_or_key, make=False)
        if found is None:
            return None
        if found[1] is None:  # a key older than webhooks
            with self._write() as conn:
                found = keys.webhook_secret(conn, id_or_key)
            assert found is not None and found[1] is not None
        return found[0], found[1]

    def rotate_webhook_secret(self, id_or_key: str) -> tuple[str, str] | None:
        """A new signing secret for the key (by id or plain key); None: no such key."""
        with self._write() as conn:
            return keys.rotate_webhook_secret(conn, id_or_key)

    def ensure_local_key(self) -> str:
        with self._write() as conn:
            return keys.ensure_local(conn)

    # ---- tasks: create and read (database/tasks.py) ------------------------------------------
    def create_task(self, key_id: str, new: NewTask, quotas: Quotas | None = None) -> tuple[TaskRow, bool]:
        """Store a new queued task; returns (row, created).

        With an idempotency key, a task made under the same key in the last 24 h is
        returned instead (created=False); the unique index settles concurrent retries.
        """
        if new.idempotency_key is None:
            return self._insert_task(key_id, new, quotas), True
        for _ in range(3):
            with self._read() as conn:
                existing = tasks.by_idempotency_key(conn, key_id, new.idempotency_key)
            if existing is not None and existing.created_at > time.time() - IDEMPOTENCY_WINDOW_SECONDS:
                return existing, False
            if existing is not None:
                with self._write() as conn:
                    tasks.release_idempotency_key(conn, existing.id)
            try:
                return self._insert_task(key_id, new, quotas), True
            except IntegrityError:
                continue  # a concurrent request with the same key won: read its task
        raise RuntimeError("idempotency key contention did not settle")

    def create_tasks(
        self, requests: Sequence[tuple[str, NewTask]], quotas: Quotas | None = None
    ) -> list[TaskRow | QuotaExceeded]:
        """Store several creates in one transaction (group commit); one outcome per request, in order.

        An idempotency key's unique index still applies; a clash fails the whole transaction
        (IntegrityError), so creates with keys go one per transaction (see `create_task`).
        """
        now = time.time()
        try:
            with self._write(None) as conn:
                return tasks.insert_new(conn, requests, quotas, self._counts, now)
        except BaseException:
            self._counts.forget()
            raise

    def _insert_task(self, key_id: str, new: NewTask, quotas: Quotas | None) -> TaskRow:
        outcome = self.create_tasks([(key_id, new)], quotas)[0]
        if isinstance(outcome, QuotaExceeded):
            raise outcome
        return outcome

    def problem(self) -> str | None:
        """Readiness: None when the database answers a query now, else why not (one short line)."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            return f"database unavailable: {type(exc).__name__}"
        return None

    def get_task(self, task_id: str, key_id: str | None = None) -> TaskRow | None:
        """A task by id; with key_id, only when that key owns it."""
        with self._read() as conn:
            return tasks.get(conn, task_id, key_id)

    def get_inputs(self, task_id: str) -> dict[str, str]:
        with self._read() as conn:
            return tasks.get_inputs(conn, task_id)

    def models_of(self, task_ids: list[str]) -> dict[str, str]:
        """task id -> model, for the broker's per-pool queues (dispatch/broker.py)."""
        with self._read() as conn:
            return tasks.models_of(conn, task_ids)

    def has_queued(self) -> bool:
        with self._read() as conn:
            return tasks.has_queued(conn)

    def count_live(self) -> dict[str, int]:
        """Queued and processing tasks (the metrics' gauges)."""
        with self._read() as conn:
            return tasks.count_live(conn)

    def queued_by_model(self) -> dict[str, int]:
        with self._read() as conn:
            return tasks.queued_by_model(conn)

    def count_by_status(self) -> dict[str, int]:
        with self._read() as conn:
            return tasks.count_by_status(conn)

    # ---- the state machine (database/lifecycle.py) -------------------------------------------
    def claim_next(
        self,
        worker: str,
        lease_seconds: float,
        task_id: str | None = None,
        exclude_models: Collection[str] = (),
    ) -> TaskRow | None:
        """Atomically move the oldest queued task (or `task_id`) to processing for `worker`."""
        # Without task_id the oldest queued row, not known yet: a notice for every row.
        with self._write(Change.TASK if task_id else Change.ROWS, task_id) as conn:
            return lifecycle.claim(conn, worker, lease_seconds, task_id, exclude_models)

    def claim_relayed(
        self, worker: str, lease_seconds: float, models: Collection[str], limit: int
    ) -> list[TaskRow]:
        """Claim up to `limit` queued tasks of relayed models (a resume spends no attempt)."""
        with self._write() as conn:
            return lifecycle.claim_relayed(conn, worker, lease_seconds, models, limit)

    def renew_all(self, worker: str, lease_seconds: float) -> set[str]:
        """Extend every lease `worker` holds in one statement; returns the ids it still holds."""
        with self._write(None) as conn:  # only `lease_until`, which no reader shows
            return lifecycle.renew_all(conn, worker, lease_seconds)

    def aim_create(self, task_id: str, channel: str | None) -> None:
        """Note the upstream a create goes to before it is sent (lifecycle.aim_create)."""
        # No reader shows the column and the create's answer is written with TASK: nobody to tell.
        with self._write(None) as conn:
            lifecycle.aim_create(conn, task_id, channel)

    def record_upstream(
        self,
        task_id: str,
        upstream_id: str | None,
        credits: int | None = None,
        channel: str | None = None,
        replaces: str | None = None,
    ) -> bool:
        """Store the upstream task id (never replacing a known one, but `replaces`), its channel and
        credits on a live task."""
        with self._write(Change.TASK, task_id) as conn:
            return lifecycle.record_upstream(conn, task_id, upstream_id, credits, channel, replaces)

    def renew(self, task_id: str, worker: str, lease_seconds: float, progress: int) -> bool:
        """Extend the lease and record progress; False means the lease was lost (stop working)."""
        with self._write(Change.PROGRESS, task_id) as conn:
            return lifecycle.renew(conn, task_id, worker, lease_seconds, progress)

    def complete(
        self, task_id: str, worker: str, video_key: str, actual_duration: float, total_tokens: int
    ) -> bool:
        """Finish successfully and charge the key; False when this worker no longer owns the task."""
        with self._write(Change.TASK, task_id) as conn:
            return lifecycle.complete(conn, task_id, worker, video_key, actual_duration, total_tokens)

    def fail(self, task_id: str, error: str, worker: str | None = None) -> bool:
        """Fail a task: with `worker`, only while that worker owns it; else from any live state."""
        with self._write(Change.TASK, task_id) as conn:
            return lifecycle.fail(conn, task_id, error, worker)

    def release(self, task_id: str, worker: str, refund: bool = True) -> bool:
        """Hand a task back without spending an attempt (graceful shutdown while rendering)."""
        with self._write(Change.TASK, task_id) as conn:
            return lifecycle.release(conn, task_id, worker, refund)

    def expire_leases_of(self, worker_prefix: str) -> int:
        """Mark the leases of a worker known to be dead as lapsed, so the sweeper recovers them now."""
        with self._write(None) as conn:  # only `lease_until`, which no reader shows; the sweep tells
            return lifecycle.expire_leases_of(conn, worker_prefix)

    def sweep(
        self, max_attempts: int, queued_stale_seconds: float, off_peak_window: float | None = None
    ) -> SweepResult:
        """Recover lapsed leases (requeue, or fail after max_attempts), fail off-peak tasks past their
        window, and find queued rows left waiting."""
        with self._write_deciding() as pending:  # runs every few seconds: tells readers only of a change
            result = lifecycle.sweep(pending.conn, max_attempts, queued_stale_seconds, off_peak_window)
            if result.requeued or result.failed:
                pending.change = Change.ROWS
            return result

    # ---- the owner's task management: list, cancel, delete --------------------------------------
    def list_tasks(
        self,
        key_id: str,
        limit: int,
        before: tuple[float, str] | None = None,
        status: str | None = None,
        ascending: bool = False,
    ) -> list[TaskRow]:
        """The key's tasks newest first (oldest first with `ascending`), after the `before` position,
        optionally of one wire status."""
        with self._read() as conn:
            return tasks.list_for_key(conn, key_id, limit, before, status, ascending)

    def cancel(self, task_id: str, key_id: str) -> CancelResult:
        """Fail the key's live task as cancelled (lifecycle.cancel); the commit tells readers and workers."""
        with self._write(Change.TASK, task_id) as conn:
            return lifecycle.cancel(conn, task_id, key_id)

    def delete_task(self, task_id: str, key_id: str) -> TaskRow | None:
        """Delete the key's task row and inputs, cancelling it first in the same transaction if it is live
        (its worker's next renewal finds no row and stops); the deleted row, or None."""
        return self.delete_and_cancel(task_id, key_id).row

    def delete_and_cancel(self, task_id: str, key_id: str) -> CancelResult:
        """As `delete_task`, also saying whether the task was live (cancelled by this delete)."""
        with self._write(Change.TASK, task_id) as conn:
            cancelled = lifecycle.cancel(conn, task_id, key_id).cancelled
            return CancelResult(tasks.delete_owned(conn, task_id, key_id), cancelled)

    def queue_stats(
        self, max_queued: int, recent: int
    ) -> tuple[list[float], int, list[tuple[str, float]], list[str], dict[str, int]]:
        """The inputs of the polling hint (database/tasks.queue_stats)."""
        with self._read() as conn:
            return tasks.queue_stats(conn, max_queued, recent)

    # ---- usage (database/usage.py) -----------------------------------------------------------
    def usage(self, key_id: str, since: str | None = None, until: str | None = None) -> list[UsageRow]:
        """The key's usage per UTC day and model, optionally within [since, until] (YYYY-MM-DD)."""
        with self._read() as conn:
            return usage.query(conn, key_id, since, until)

    # ---- retention (database/tasks.py) -------------------------------------------------------
    def expired_videos(self, ttl_seconds: float, limit: int = 500) -> list[tuple[str, str]]:
        """(task id, video key) of completed tasks whose download link has expired and file still exists."""
        with self._read() as conn:
            return tasks.expired_videos(conn, time.time() - ttl_seconds, limit)

    def purge_finished(
        self,
        retention_seconds: float,
        limit: int = 500,
        remove_video: Callable[[str], None] | None = None,
    ) -> list[tuple[str, str | None]]:
        """Delete tasks finished more than `retention_seconds` ago; (id, key of the video it still had) each.

        Their videos go first (`remove_video`, outside any transaction: an S3 round trip must not hold
        the database), the rows after: a process that dies in between, or a delete that fails, leaves
        rows the next purge finds again, never a video that no row points to (nothing would remove it).
        """
        with self._read() as conn:
            finished = tasks.finished_before(conn, time.time() - retention_seconds, limit)
        if not finished:
            return []
        if remove_video is not None:
            for _task_id, key in finished:
                if key:
                    remove_video(key)
        with self._write(Change.ROWS) as conn:
            tasks.delete_finished(conn, [task_id for task_id, _ in finished])
        return finished

    def mark_video_deleted(self, task_id: str) -> None:
        with self._write(Change.TASK, task_id) as conn:
            tasks.mark_video_deleted(conn, task_id)

    # ---- the webhook outbox (database/webhooks.py) -------------------------------------------
    def claim_webhooks(
        self, owner: str, limit: int, lease_seconds: float, per_key: int | None = None
    ) -> list[WebhookEvent]:
        """Hold up to `limit` due webhook events for `owner`, at most `per_key` of one API key held by
        `owner` at once (webhooks.claim); an idle outbox costs one read, no write."""
        now = time.time()
        with self._read() as conn:
            if not webhooks.has_due(conn, now):
                return []
        with self._write(Change.OUTBOX) as conn:
            return webhooks.claim(conn, owner, limit, lease_seconds, per_key)

    def next_webhook_due(self) -> float | None:
        """When the earliest pending webhook event is due (None: none pending)."""
        with self._read() as conn:
            return webhooks.next_due(conn)

    def settle_webhook(
        self,
        event: WebhookEvent,
        owner: str,
        *,
        at: float,
        duration_ms: float,
        status_code: int | None,
        error: str | None,
        next_attempt_at: float | None,
    ) -> str:
        """Record an attempt and its consequence (delivered, retry at `next_attempt_at`, or given up)."""
        with self._write(Change.OUTBOX) as conn:  # may free the task's next event for every sender
            return webhooks.settle(
                conn,
                event,
                owner,
                at=at,
                duration_ms=duration_ms,
                status_code=status_code,
                error=error,
                next_attempt_at=next_attempt_at,
            )

    def release_webhooks(self, event_ids: Sequence[int], owner: str) -> None:
        with self._write(Change.OUTBOX) as conn:
            webhooks.release(conn, event_ids, owner)

    def webhook_attempts(self, task_id: str) -> list[DeliveryAttempt]:
        with self._read() as conn:
            return webhooks.attempts_of(conn, task_id)

    def purge_webhooks(self, retention_seconds: float) -> int:
        """Delete settled webhook events (and their attempts) older than `retention_seconds`."""
        cutoff = time.time() - retention_seconds
        with self._read() as conn:
            if not conn.execute(webhooks.purgeable(cutoff)).first():
                return 0
        with self._write(None) as conn:  # settled events only: nothing anyone waits for
            return webhooks.purge(conn, cutoff)
