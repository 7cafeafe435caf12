"""The webhook outbox in the store, on a real SQLite file and on the real PostgreSQL server: events are
written by the state change that causes them, ordered per task, held by one sender at a time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from reelq.database import TaskStore, make_engine, migrate
from reelq.database.tables import webhook_events
from reelq.database.webhooks import OUTCOME_DELIVERED, OUTCOME_GIVEN_UP, OUTCOME_RETRYING
from tests.test_store import _postgres_store, new

HOOK = "https://receiver.example/hook"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TaskStore]:
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'reelq.db'}")
        migrate(engine)
        yield TaskStore(engine)
        engine.dispose()
    else:
        yield from _postgres_store()


def _events(store: TaskStore) -> list[tuple[str, str, str]]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(webhook_events.c.task_id, webhook_events.c.event, webhook_events.c.state).order_by(
                webhook_events.c.id
            )
        )
        return [tuple(row) for row in rows]


def _settle(store: TaskStore, event, owner: str, status: int | None, retry_at: float | None = None) -> str:  # type: ignore[no-untyped-def]
    return store.settle_webhook(
        event,
        owner,
        at=time.time(),
        duration_ms=1.0,
        status_code=status,
        error=None if status else "connection refused",
        next_attempt_at=retry_at,
    )


def test_visible_changes_queue_events_and_silent_ones_do_not(store: TaskStore) -> None:
    key, _ = store.create_key("k")
    hooked, _ = store.create_task(key.id, new(callback_url=HOOK))
    plain, _ = store.create_task(key.id, new())
    assert _events(store) == []  # queued is the create's own answer

    assert store.claim_next("w1", 30, hooked.id) is not None
    assert store.claim_next("w1", 30, plain.id) is not None
    assert _events(store) == [(hooked.id, "video.processing", "pending")]
    # Handed back and claimed again: still `processing` to a client, so no second event.
    assert store.release(hooked.id, "w1")
    assert store.claim_next("w2", 30, hooked.id) is not None
    assert store.complete(hooked.id, "w2", "k.mp4", 5.0, 1500)
    assert store.complete(plain.id, "w1", "p.mp4", 5.0, 1500)
    assert [e[1] for e in _events(store)] == ["video.processing", "video.completed"]
    # A late worker's failure changes nothing, so it queues nothing.
    assert not store.fail(hooked.id, "late", "w1")
    assert len(_events(store)) == 2


def test_failures_by_worker_sweeper_and_anyone_queue_a_failed_event(store: TaskStore) -> None:
    key, _ = store.create_key("k")
    by_worker, _ = store.create_task(key.id, new("a", callback_url=HOOK))
    by_sweep, _ = store.create_task(key.id, new("b", callback_url=HOOK))
    queued, _ = store.create_task(key.id, new("c", callback_url=HOOK))
    store.claim_next("w1", 30, by_worker.id)
    assert store.fail(by_worker.id, "Render failed: boom", "w1")
    store.claim_next("w1", 0.01, by_sweep.id)
    time.sleep(0.05)
    assert by_sweep.id in store.sweep(max_attempts=1, queued_stale_seconds=60).failed
    assert store.fail(queued.id, "Cancelled by user.")  # no worker: from any live state
    failed = {(task_id, event) for task_id, event, _ in _events(store) if event == "video.failed"}
    assert failed == {(task.id, "video.failed") for task in (by_worker, by_sweep, queued)}
    claimed = {e.task_id: e for e in store.claim_webhooks("s", 10, 30)}
    # The snapshot is the task as it was: its status and the error a client reads.
    assert claimed[queued.id].status == "failed" and claimed[queued.id].error == "Cancelled by user."
    assert claimed[queued.id].started_at is None  # a queued task failed without ever running


def test_events_of_a_task_go_one_at_a_time_in_order(store: TaskStore) -> None:
    key, _ = store.create_key("k")
    task, _ = store.create_task(key.id, new(callback_url=HOOK))
    store.claim_next("w", 30, task.id)
    store.complete(task.id, "w", "k.mp4", 5.0, 1500)

    first = store.claim_webhooks("s1", 10, 30)
    assert [e.event for e in first] == ["video.processing"]
    # Held by s1: nobody else gets it, and its task's next event waits behind it.
    assert store.claim_webhooks("s2", 10, 30) == []
    # A failed attempt schedules a retry; the next event still waits (order per task).
    # (Its retry is a second away: a stall of a loaded machine must not make it due before the checks.)
    retry_at = time.time() + 1.0
    assert _settle(store, first[0], "s1", 500, retry_at=retry_at) == OUTCOME_RETRYING
    assert store.claim_webhooks("s2", 10, 30) == []
    due = store.next_webhook_due()  # the retry's time (the event behind it waits for it to settle)
    assert due == pytest.approx(retry_at, abs=1e-3)
    time.sleep(max(0.0, retry_at - time.time()) + 0.05)
    again = store.claim_webhooks("s2", 10, 30)
    assert [(e.webhook_id, e.attempts) for e in again] == [(first[0].webhook_id, 1)]
    assert _settle(store, again[0], "s2", 204) == OUTCOME_DELIVERED
    last = store.claim_webhooks("s1", 10, 30)
    assert [e.event for e in last] == ["video.completed"]
    assert _settle(store, last[0], "s1", None) == OUTCOME_GIVEN_UP  # no retry time: given up
    assert store.claim_webhooks("s1", 10, 30) == []
    assert store.next_webhook_due() is None

    attempts = store.webhook_attempts(task.id)
    assert [(a.event, a.attempt, a.status_code, a.outcome) for a in attempts] == [
        ("video.processing", 1, 500, "retrying"),
        ("video.processing", 2, 204, "delivered"),
        ("video.completed", 1, None, "given_up"),
    ]
    assert attempts[2].error == "connection refused"
    assert store.purge_webhooks(retention_seconds=3600) == 0
    assert store.purge_webhooks(retention_seconds=0) == 2
    assert store.webhook_attempts(task.id) == [] and _events(store) == []


def test_a_lapsed_lease_lets_another_sender_retry_and_a_release_hands_back_at_once(store: TaskStore) -> None:
    key, _ = store.create_key("k")
    a, _ = store.create_task(key.id, new("a", callback_url=HOOK))
    b, _ = store.create_task(key.id, new("b", callback_url=HOOK))
    store.claim_next("w", 30, a.id)
    store.claim_next("w", 30, b.id)
    leased_from = time.time()
    held = store.claim_webhooks("dead", 10, 0.05)
    assert {e.task_id for e in held} == {a.id, b.id}  # different tasks go side by side
    due = store.next_webhook_due()  # when the leases lapse
    # Bounded by the claim's own time, not by "now": a loaded machine may well stall past 50 ms here.
    assert due is not None and leased_from + 0.05 <= due <= time.time() + 0.05
    time.sleep(0.1)
    retaken = store.claim_webhooks("alive", 1, 30)
    assert len(retaken) == 1
    store.release_webhooks([retaken[0].id], "alive")
    assert len(store.claim_webhooks("third", 10, 30)) == 2
    # The dead sender's late record of its attempt is kept, but the event stays with its new holder.
    _settle(store, held[0], "dead", 204)
    assert store.claim_webhooks("fourth", 10, 30) == []


def test_each_key_has_a_secret_and_rotation_replaces_it(store: TaskStore) -> None:
    one, plain = store.create_key("one")
    two, _ = store.create_key("two")
    found = store.webhook_secret(one.id)
    assert found is not None and found[1].startswith("whsec_")
    assert store.webhook_secret(plain) == found  # by the key itself
    assert store.webhook_secret(two.id)[1] != found[1]  # type: ignore[index]
    rotated = store.rotate_webhook_secret(one.id)
    assert rotated is not None and rotated[1] != found[1]
    assert store.webhook_secret(one.id) == rotated
    assert store.webhook_secret("key_missing") is None
    assert store.rotate_webhook_secret("key_missing") is None
    assert all("whsec" not in repr(k) for k in store.list_keys())
