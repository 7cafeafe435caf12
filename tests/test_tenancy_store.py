"""Selling it (SPEC §6) in the store, on SQLite and PostgreSQL: fair share, per-key limits at claim,
budgets with reservations (the 40-way race), the off-peak tier and the credit ledger."""

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
from reelq.database.keys import BudgetInUse
from reelq.database.lifecycle import OFF_PEAK_ERROR
from reelq.domain import CANCELLED_ERROR, Status

pytestmark = [pytest.mark.service]

POSTGRES_URL = os.environ.get("REELQ_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TaskStore]:
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'reelq.db'}")
        migrate(engine)
        yield TaskStore(engine)
        engine.dispose()
        return
    admin = make_engine(POSTGRES_URL)
    schema = f"reelq_{uuid.uuid4().hex[:12]}"
    try:
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
    except Exception as exc:  # pragma: no cover - depends on the machine
        if os.environ.get("CI"):
            raise
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


def new(price: int | None = None, off_peak: bool = False, prompt: str = "tenancy") -> NewTask:
    return NewTask(
        model="viduq3-pro",
        prompt=prompt,
        duration=5,
        aspect_ratio="16:9",
        resolution="720p",
        price=price,
        off_peak=off_peak,
    )


def backlog(store: TaskStore, key_id: str, n: int, **extra: object) -> list[str]:
    return [store.create_task(key_id, new(**extra))[0].id for _ in range(n)]  # type: ignore[arg-type]


def claims(store: TaskStore, n: int, names: dict[str, str]) -> str:
    """Claim `n` tasks one after another; the names of their keys, in order."""
    order = []
    for i in range(n):
        task = store.claim_next(f"w{i}", 30)
        assert task is not None
        order.append(names[task.key_id])
    return "".join(order)


# ---- fair share -------------------------------------------------------------------------------------
def test_a_new_customer_waits_at_most_one_task_behind_a_backlog(store: TaskStore) -> None:
    a, _, _ = store.create_key_with({"name": "a"})
    backlog(store, a.id, 200)
    assert claims(store, 3, {a.id: "a"}) == "aaa"  # A is alone: its backlog runs
    b, _, _ = store.create_key_with({"name": "b"})
    late = store.create_task(b.id, new())[0]
    started = [store.claim_next(f"x{i}", 30) for i in range(2)]
    assert late.id in [t.id for t in started if t is not None]


def test_a_key_returning_from_idle_does_not_take_every_slot(store: TaskStore) -> None:
    a, _, _ = store.create_key_with({"name": "a"})
    b, _, _ = store.create_key_with({"name": "b"})
    backlog(store, b.id, 1)
    claims(store, 1, {b.id: "b"})  # B ran once and went idle
    backlog(store, a.id, 60)
    claims(store, 40, {a.id: "a"})  # A has claimed 40 times since
    backlog(store, b.id, 30)  # B comes back with a burst: shares with A, does not run 40 in a row
    order = claims(store, 10, {a.id: "a", b.id: "b"})
    assert 4 <= order.count("b") <= 6, order


def test_weights_three_to_one(store: TaskStore) -> None:
    a, _, _ = store.create_key_with({"name": "a", "weight": 3.0})
    b, _, _ = store.create_key_with({"name": "b", "weight": 1.0})
    backlog(store, b.id, 30)  # B's tasks are older: FIFO would run them all first
    backlog(store, a.id, 30)
    order = claims(store, 40, {a.id: "a", b.id: "b"})
    assert order.count("a") == 30 and order.count("b") == 10, order
    for start in range(0, 40, 4):  # and interleaved, not in blocks
        assert order[start : start + 4].count("b") == 1, order


def test_within_a_key_oldest_first(store: TaskStore) -> None:
    a, _, _ = store.create_key_with({"name": "a"})
    ids = backlog(store, a.id, 5)
    got = [store.claim_next("w", 30) for _ in range(5)]
    assert [t.id for t in got if t is not None] == ids


# ---- max_processing ---------------------------------------------------------------------------------
def test_max_processing_leaves_idle_workers_to_other_keys(store: TaskStore) -> None:
    a, _, _ = store.create_key_with({"name": "a", "max_processing": 2})
    b, _, _ = store.create_key_with({"name": "b"})
    backlog(store, a.id, 10)
    backlog(store, b.id, 3)
    order = claims(store, 5, {a.id: "a", b.id: "b"})
    assert order.count("a") == 2 and order.count("b") == 3, order
    assert store.claim_next("idle", 30) is None  # only A waits, and A is at its limit
    running = [t for t in store.list_tasks(a.id, 50) if t.status == Status.PROCESSING]
    assert len(running) == 2
    assert store.complete(running[0].id, running[0].worker or "", "v.mp4", 5.0, 1500)
    nxt = store.claim_next("freed", 30)
    assert nxt is not None and nxt.key_id == a.id


def test_max_processing_holds_under_concurrent_claims(store: TaskStore) -> None:
    a, _, _ = store.create_key_with({"name": "a", "max_processing": 3})
    backlog(store, a.id, 30)
    barrier = threading.Barrier(12)
    got: list[object] = []

    def worker(i: int) -> None:
        barrier.wait()
        got.append(store.claim_next(f"c{i}", 30))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(1 for t in got if t is not None) == 3


# ---- budgets ----------------------------------------------------------------------------------------
def test_forty_simultaneous_creates_against_room_for_ten(store: TaskStore) -> None:
    key, _, _ = store.create_key_with({"name": "race", "budget": 15000})
    barrier = threading.Barrier(40)
    outcomes: list[object] = []
    lock = threading.Lock()

    def create() -> None:
        barrier.wait()
        try:
            result: object = store.create_task(key.id, new(price=1500), Quotas(100, 10000))[0]
        except QuotaExceeded as exc:
            result = exc
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=create) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    stored = [o for o in outcomes if not isinstance(o, QuotaExceeded)]
    refused = [o for o in outcomes if isinstance(o, QuotaExceeded)]
    assert len(stored) == 10 and len(refused) == 30
    assert all(o.kind == "budget" for o in refused)
    record = store.key_record(key.id)
    assert record is not None and (record.spent, record.reserved, record.available) == (0, 15000, 0)
    assert len(store.list_tasks(key.id, 100)) == 10  # nothing stored for a refused create


def test_settle_release_and_never_twice(store: TaskStore) -> None:
    key, _, _ = store.create_key_with({"name": "b", "budget": 10000})
    done, failed, cancelled, deleted = (store.create_task(key.id, new(price=1500))[0] for _ in range(4))
    assert store.key_record(key.id).reserved == 6000  # type: ignore[union-attr]
    for worker in ("w0", "w1"):  # claims `done` and `failed`, the oldest
        assert store.claim_next(worker, 30) is not None
    row = store.get_task(done.id)
    assert row is not None and row.worker
    # A longer video than asked is still charged at most what was reserved (the quoted price).
    assert store.complete(done.id, row.worker, "v.mp4", 5.04, 1512)
    assert not store.complete(done.id, row.worker, "v.mp4", 5.0, 1500)  # a retried finish: no-op
    assert store.get_task(done.id).total_tokens == 1500  # type: ignore[union-attr]
    assert store.fail(failed.id, "boom")
    assert not store.fail(failed.id, "boom again")
    assert store.cancel(cancelled.id, key.id).cancelled
    assert not store.cancel(cancelled.id, key.id).cancelled
    assert store.get_task(cancelled.id).error == CANCELLED_ERROR  # type: ignore[union-attr]
    assert store.delete_task(deleted.id, key.id) is not None
    record = store.key_record(key.id)
    assert record is not None
    assert (record.spent, record.reserved, record.available) == (1500, 0, 8500)
    assert sum(u.tokens for u in store.usage(key.id)) == 1500


def test_sweep_failure_releases(store: TaskStore) -> None:
    key, _, _ = store.create_key_with({"name": "s", "budget": 3000})
    task = store.create_task(key.id, new(price=1500))[0]
    assert store.claim_next("dead", 30) is not None
    store.expire_leases_of("dead")
    assert task.id in store.sweep(max_attempts=1, queued_stale_seconds=3600).failed
    assert store.key_record(key.id).reserved == 0  # type: ignore[union-attr]


def test_credits_are_a_ledger_and_never_break_the_invariant(store: TaskStore) -> None:
    key, _, _ = store.create_key_with({"name": "c", "budget": 1000})
    with pytest.raises(QuotaExceeded):
        store.create_task(key.id, new(price=1500))
    assert store.credit_key(key.id, 2000, "top-up", "key_admin") is not None
    store.create_task(key.id, new(price=1500))
    with pytest.raises(BudgetInUse):  # 3000 - 1600 < 1500 reserved
        store.credit_key(key.id, -1600, "clawback", None)
    with pytest.raises(BudgetInUse):
        store.update_key(key.id, {"budget": 1000})
    after = store.credit_key(key.id, -1500, "clawback", None)
    assert after is not None and (after.budget, after.available) == (1500, 0)
    ledger = store.key_credits(key.id)
    assert [(c.tokens, c.note, c.by) for c in ledger] == [
        (-1500, "clawback", None),
        (2000, "top-up", "key_admin"),
    ]
    unlimited, _, _ = store.create_key_with({"name": "u"})
    with pytest.raises(ValueError):
        store.credit_key(unlimited.id, 10, None, None)
    assert store.credit_key("key_nope", 10, None, None) is None


# ---- off-peak ---------------------------------------------------------------------------------------
def test_off_peak_runs_only_when_nothing_else_waits(store: TaskStore) -> None:
    a, _, _ = store.create_key_with({"name": "a"})
    b, _, _ = store.create_key_with({"name": "b"})
    cheap = store.create_task(a.id, new(off_peak=True))[0]  # oldest of all
    normal = backlog(store, b.id, 2)
    got = [store.claim_next(f"w{i}", 30) for i in range(3)]
    assert [t.id for t in got if t is not None] == [*normal, cheap.id]


def test_off_peak_window_fails_uncharged(store: TaskStore) -> None:
    key, _, _ = store.create_key_with({"name": "o", "budget": 5000})
    task = store.create_task(key.id, new(price=750, off_peak=True))[0]
    assert store.key_record(key.id).reserved == 750  # type: ignore[union-attr]
    assert task.id not in store.sweep(3, 3600, off_peak_window=3600).failed
    time.sleep(0.05)
    assert task.id in store.sweep(3, 3600, off_peak_window=0.01).failed
    row = store.get_task(task.id)
    assert row is not None
    assert (row.status, row.error, row.total_tokens) == (Status.FAILED, OFF_PEAK_ERROR, None)
    assert store.key_record(key.id).reserved == 0  # type: ignore[union-attr]
