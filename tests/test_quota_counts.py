"""The quota count cache (database/quotas.py: QuotaCounts) on a real SQLite file and a test clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from reelq.database import NewTask, Quotas, TaskStore, make_engine, migrate
from reelq.database.quotas import QuotaCounts

BIG = 1000  # a limit far away: counts are reused


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TaskStore]:
    engine = make_engine(f"sqlite:///{tmp_path / 'reelq.db'}")
    migrate(engine)
    yield TaskStore(engine)
    engine.dispose()


def _queue(store: TaskStore, key_id: str, n: int) -> None:
    new = NewTask(model="viduq3-turbo", prompt="p", duration=1, aspect_ratio="16:9", resolution="540p")
    store.create_tasks([(key_id, new)] * n)


def _get(counts: QuotaCounts, store: TaskStore, key_id: str | None, limit: int, unsaved: int = 0) -> int:
    # A transaction of its own for each count, like each create transaction (the store's begins
    # with BEGIN IMMEDIATE, so a connection held across the test would hold the write lock).
    with store.engine.begin() as conn:
        return counts.get(conn, key_id, limit, unsaved)


def test_a_count_is_reused_within_a_second_and_taken_again_after(store: TaskStore) -> None:
    clock = Clock()
    counts = QuotaCounts(clock=clock)
    key, _ = store.create_key()
    _queue(store, key.id, 2)
    assert _get(counts, store, key.id, BIG, 0) == 2
    assert _get(counts, store, None, BIG, 0) == 2
    _queue(store, key.id, 3)  # another process's creates: this cache cannot know
    clock.now += 0.9
    assert _get(counts, store, key.id, BIG, 0) == 2
    assert _get(counts, store, None, BIG, 0) == 2
    clock.now += 0.1
    assert _get(counts, store, key.id, BIG, 0) == 5
    assert _get(counts, store, None, BIG, 0) == 5


def test_a_count_within_a_tenth_of_its_limit_is_always_taken_afresh(store: TaskStore) -> None:
    counts = QuotaCounts(clock=Clock())
    key, _ = store.create_key()
    _queue(store, key.id, 18)
    assert _get(counts, store, key.id, 100, 0) == 18
    _queue(store, key.id, 1)
    assert _get(counts, store, key.id, 100, 0) == 18  # far from 100: reused
    assert _get(counts, store, key.id, 20, 0) == 19  # 18 is within a tenth of 20: counted again
    _queue(store, key.id, 1)
    assert _get(counts, store, key.id, 20, 0) == 20  # and again, at every call this close


def test_admitted_creates_advance_the_key_and_the_queue_count(store: TaskStore) -> None:
    counts = QuotaCounts(clock=Clock())
    key, _ = store.create_key()
    other, _ = store.create_key()
    _queue(store, other.id, 4)
    assert _get(counts, store, key.id, BIG, 0) == 0
    assert _get(counts, store, None, BIG, 0) == 4
    counts.added(key.id)
    counts.added(key.id)
    assert _get(counts, store, key.id, BIG, 0) == 2  # no row was stored: the cache counted them
    assert _get(counts, store, None, BIG, 0) == 6


def test_a_fresh_count_adds_the_creates_not_inserted_yet(store: TaskStore) -> None:
    counts = QuotaCounts(clock=Clock())
    key, _ = store.create_key()
    _queue(store, key.id, 1)
    assert _get(counts, store, key.id, BIG, 3) == 4


def test_forget_drops_every_count(store: TaskStore) -> None:
    counts = QuotaCounts(clock=Clock())
    key, _ = store.create_key()
    assert _get(counts, store, key.id, BIG, 0) == 0
    assert _get(counts, store, None, BIG, 0) == 0
    counts.added(key.id)  # admitted in a transaction that then failed: never stored
    counts.forget()
    assert _get(counts, store, key.id, BIG, 0) == 0
    assert _get(counts, store, None, BIG, 0) == 0


def test_the_cache_is_bounded(store: TaskStore) -> None:
    counts = QuotaCounts(clock=Clock())
    counts.MAX_KEYS = 3
    for i in range(10):
        _get(counts, store, f"key_{i}", BIG, 0)
        assert len(counts._counts) <= 3


def test_the_store_forgets_counts_when_a_create_transaction_fails(store: TaskStore) -> None:
    key, _ = store.create_key()
    quotas = Quotas(max_active_per_key=BIG, max_queue=BIG)
    new = NewTask(model="m", prompt="p", duration=1, aspect_ratio="16:9", resolution="540p")
    store.create_tasks([(key.id, new)], quotas)
    broken = NewTask(model=None, prompt="p", duration=1, aspect_ratio="16:9", resolution="540p")  # type: ignore[arg-type]
    with pytest.raises(IntegrityError):  # NOT NULL: the whole transaction rolls back
        store.create_tasks([(key.id, new), (key.id, broken)], quotas)
    assert store._counts._counts == {}
