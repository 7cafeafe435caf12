"""The webhook outbox: events written with the status change that causes them, claimed and settled by
the delivery loop (reelq/webhooks/delivery.py), and the record of every attempt.

A transactional outbox: `record` runs inside the transaction of the state change (database/lifecycle.py),
so an event exists exactly when its change committed; a crash loses neither. Events are delivered in
order per task: an event is claimable only while no earlier event of its task is still pending, so a
`completed` never overtakes the `processing` before it, even while that one waits for a retry. A sender
holds an event by a lease (like a render holds its task), so several `reelq serve` processes never send
the same attempt twice; a sender that dies mid-attempt leaves a lease that lapses, and the event is
sent again (at least once, the same `webhook-id`).

Functions take an open connection; `TaskStore` chooses the transaction.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Connection, and_, case, delete, exists, func, insert, literal, or_, select, update
from sqlalchemy.orm import aliased

from reelq.database.tables import tasks, webhook_attempts, webhook_events

PENDING, DELIVERED, GIVEN_UP = "pending", "delivered", "failed"
# What an attempt led to, as `GET …/deliveries` shows it.
OUTCOME_DELIVERED, OUTCOME_RETRYING, OUTCOME_GIVEN_UP = "delivered", "retrying", "given_up"
EVENT_PREFIX = "video."
# Attempts listed per task at most (a day of retries with the default backoff is ~100 per event).
MAX_LISTED_ATTEMPTS = 1000


def new_webhook_id() -> str:
    return "msg_" + secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """A claimed event: where it goes, what it says (the task as it was) and how often it was tried."""

    id: int
    webhook_id: str
    task_id: str
    key_id: str
    url: str
    event: str
    created_at: float
    model: str
    status: str
    task_created_at: float
    started_at: float | None
    progress: int
    finished_at: float | None
    actual_duration: float | None
    total_tokens: int | None
    error: str | None
    video_key: str | None  # where the video is stored (an S3 link is presigned for the object)
    attempts: int


_EVENT_FIELDS = tuple(f.name for f in fields(WebhookEvent))


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    webhook_id: str
    event: str
    attempt: int
    at: float
    duration_ms: float | None
    status_code: int | None
    error: str | None
    outcome: str


# ---- the outbox (called by database/lifecycle.py inside the state change's transaction) ---------------
def record(conn: Connection, status: str, task_ids: Iterable[str]) -> None:
    """Queue a `video.<status>` event for each of these tasks that has a callback_url, carrying the row as
    it is now (the update that changed its status already ran in this transaction)."""
    ids = list(task_ids)
    if not ids:
        return
    now = time.time()
    rows = conn.execute(
        select(
            tasks.c.id,
            tasks.c.key_id,
            tasks.c.callback_url,
            tasks.c.model,
            tasks.c.status,
            tasks.c.created_at,
            tasks.c.started_at,
            tasks.c.progress,
            tasks.c.finished_at,
            tasks.c.actual_duration,
            tasks.c.total_tokens,
            tasks.c.error,
            tasks.c.video_key,
        ).where(tasks.c.id.in_(ids), tasks.c.callback_url.is_not(None))
    ).all()
    if not rows:
        return
    conn.execute(
        insert(webhook_events),
        [
            {
                "webhook_id": new_webhook_id(),
                "task_id": row.id,
                "key_id": row.key_id,
                "url": row.callback_url,
                "event": EVENT_PREFIX + status,
                "created_at": now,
                "model": row.model,
                # The status the client would read: a claimed row is `processing` whatever happens next.
                "status": status,
                "task_created_at": row.created_at,
                "started_at": row.started_at,
                "progress": row.progress,
                "finished_at": row.finished_at,
                "actual_duration": row.actual_duration,
                "total_tokens": row.total_tokens,
                "error": row.error,
                "video_key": row.video_key,
                "state": PENDING,
                "attempts": 0,
                "next_attempt_at": now,
            }
            for row in rows
        ],
    )


# ---- the delivery loop ----------------------------------------------------------------------------------
def _first_of_its_task() -> Any:
    """No earlier event of the same task is still pending (order per task)."""
    earlier = aliased(webhook_events)
    return ~exists().where(
        earlier.c.task_id == webhook_events.c.task_id,
        earlier.c.state == PENDING,
        earlier.c.id < webhook_events.c.id,
    )


def _claimable(now: float) -> Any:
    """Pending, due, not held by a live lease, and the oldest pending event of its task."""
    free = or_(webhook_events.c.lease_until.is_(None), webhook_events.c.lease_until < now)
    return and_(
        webhook_events.c.state == PENDING, webhook_events.c.next_attempt_at <= now, free, _first_of_its_task()
    )


def has_due(conn: Connection, now: float) -> bool:
    """Whether `claim` would find anything (a read, so an idle loop never writes)."""
    return conn.execute(select(literal(1)).where(_claimable(now)).limit(1)).first() is not None


def next_due(conn: Connection) -> float | None:
    """When the next event becomes claimable with no other change: the first of its task, once due and
    once its lease (if any) lapses. Events waiting behind an earlier one become claimable only when that
    one is settled, a write the sender hears of anyway. None: nothing pending."""
    held_until = case(
        (webhook_events.c.lease_until > webhook_events.c.next_attempt_at, webhook_events.c.lease_until),
        else_=webhook_events.c.next_attempt_at,
    )
    return conn.execute(
        select(func.min(held_until)).where(webhook_events.c.state == PENDING, _first_of_its_task())
    ).scalar()


def claim(
    conn: Connection, owner: str, limit: int, lease_seconds: float, per_key: int | None = None
) -> list[WebhookEvent]:
    """Hold up to `limit` due events for `owner` for `lease_seconds`, fairly across API keys.

    Events are taken round-robin over the keys (each key's soonest due first; a key with fewer
    events already held by `owner` goes first), and no key gets more than `per_key` held by `owner`
    at once. Without this, one key's backlog to a receiver that hangs took every send slot for the
    attempt timeout, again and again, and another key's healthy receiver waited behind all of it.
    """
    now = time.time()
    free = or_(webhook_events.c.lease_until.is_(None), webhook_events.c.lease_until < now)
    cap = per_key if per_key is not None else limit
    held = (
        select(webhook_events.c.key_id, func.count().label("n"))
        .where(webhook_events.c.state == PENDING, webhook_events.c.owner == owner, ~free)
        .group_by(webhook_events.c.key_id)
        .subquery("held")
    )
    ranked = (
        select(
            webhook_events.c.id,
            webhook_events.c.key_id,
            webhook_events.c.next_attempt_at,
            func.row_number()
            .over(
                partition_by=webhook_events.c.key_id,
                order_by=(webhook_events.c.next_attempt_at, webhook_events.c.id),
            )
            .label("rn"),
        )
        .where(_claimable(now))
        .subquery("ranked")
    )
    turn = ranked.c.rn + func.coalesce(held.c.n, 0)  # this event's place in its key's line of held sends
    pick = (
        select(webhook_events.c.id)
        .join(ranked, ranked.c.id == webhook_events.c.id)
        .outerjoin(held, held.c.key_id == ranked.c.key_id)
        .where(turn <= cap)
        .order_by(turn, ranked.c.next_attempt_at, ranked.c.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True, of=webhook_events)
    ids: list[int] = list(conn.execute(pick).scalars())
    if not ids:
        return []
    rows = conn.execute(
        update(webhook_events)
        .where(webhook_events.c.id.in_(ids), webhook_events.c.state == PENDING, free)
        .values(owner=owner, lease_until=now + lease_seconds)
        .returning(*(webhook_events.c[name] for name in _EVENT_FIELDS))
    ).mappings()
    return sorted((WebhookEvent(**row) for row in rows), key=lambda e: e.id)


def settle(
    conn: Connection,
    event: WebhookEvent,
    owner: str,
    *,
    at: float,
    duration_ms: float,
    status_code: int | None,
    error: str | None,
    next_attempt_at: float | None,
) -> str:
    """Record one attempt and what follows: delivered (2xx), another try at `next_attempt_at`, or given
    up (`next_attempt_at` None). Returns the outcome. The attempt is recorded even when the lease was
    lost meanwhile (it happened); the event is then left to its new holder."""
    delivered = status_code is not None and 200 <= status_code < 300
    if delivered:
        outcome, values = OUTCOME_DELIVERED, {"state": DELIVERED, "finished": at}
    elif next_attempt_at is None:
        outcome, values = OUTCOME_GIVEN_UP, {"state": GIVEN_UP, "finished": at}
    else:
        outcome, values = OUTCOME_RETRYING, {"next_attempt_at": next_attempt_at}
    attempt = event.attempts + 1
    conn.execute(
        update(webhook_events)
        .where(webhook_events.c.id == event.id, webhook_events.c.owner == owner)
        .values(attempts=attempt, owner=None, lease_until=None, **values)
    )
    conn.execute(
        insert(webhook_attempts).values(
            event_id=event.id,
            task_id=event.task_id,
            attempt=attempt,
            at=at,
            duration_ms=duration_ms,
            status_code=status_code,
            error=error,
            outcome=outcome,
        )
    )
    return outcome


def release(conn: Connection, event_ids: Iterable[int], owner: str) -> None:
    """Hand back events held by `owner` without an attempt (the sender is stopping)."""
    ids = list(event_ids)
    if ids:
        conn.execute(
            update(webhook_events)
            .where(webhook_events.c.id.in_(ids), webhook_events.c.owner == owner)
            .values(owner=None, lease_until=None)
        )


def attempts_of(conn: Connection, task_id: str) -> list[DeliveryAttempt]:
    """Every recorded attempt for a task's events, oldest first."""
    rows = conn.execute(
        select(
            webhook_events.c.webhook_id,
            webhook_events.c.event,
            webhook_attempts.c.attempt,
            webhook_attempts.c.at,
            webhook_attempts.c.duration_ms,
            webhook_attempts.c.status_code,
            webhook_attempts.c.error,
            webhook_attempts.c.outcome,
        )
        .join(webhook_events, webhook_events.c.id == webhook_attempts.c.event_id)
        .where(webhook_attempts.c.task_id == task_id)
        .order_by(webhook_attempts.c.id)
        .limit(MAX_LISTED_ATTEMPTS)
    ).mappings()
    return [DeliveryAttempt(**row) for row in rows]


def purgeable(cutoff: float, limit: int = 500) -> Any:
    """The ids of events settled before `cutoff` (a query)."""
    return (
        select(webhook_events.c.id)
        .where(webhook_events.c.state != PENDING, webhook_events.c.finished < cutoff)
        .limit(limit)
    )


def purge(conn: Connection, cutoff: float, limit: int = 500) -> int:
    """Delete settled events (and their attempts) settled before `cutoff`; returns how many."""
    ids: list[int] = list(conn.execute(purgeable(cutoff, limit)).scalars())
    if ids:
        conn.execute(delete(webhook_attempts).where(webhook_attempts.c.event_id.in_(ids)))
        conn.execute(delete(webhook_events).where(webhook_events.c.id.in_(ids)))
    return len(ids)
