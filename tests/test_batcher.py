"""Group commit of creates (database/batcher.py) on a real SQLite file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from reelq.database import NewTask, QuotaExceeded, Quotas, TaskStore, make_engine, migrate
from reelq.database.batcher import CreateBatcher


@pytest.fixture
def store(tmp_path: Path) -> TaskStore:
    engine = make_engine(f"sqlite:///{tmp_path / 'reelq.db'}")
    migrate(engine)
    return TaskStore(engine)


def _new(prompt: str = "batched", **extra: object) -> NewTask:
    return NewTask(
        model="viduq3-turbo", prompt=prompt, duration=1, aspect_ratio="16:9", resolution="540p", **extra
    )  # type: ignore[arg-type]


def test_concurrent_creates_share_transactions_and_all_land(store: TaskStore) -> None:
    key, _ = store.create_key("k")
    batches: list[int] = []
    real = store.create_tasks

    def counting(requests, quotas=None):  # type: ignore[no-untyped-def]
        batches.append(len(requests))
        return real(requests, quotas)

    store.create_tasks = counting  # type: ignore[method-assign]
    rings: list[int] = []
    batcher = CreateBatcher(store, Quotas(max_active_per_key=1000, max_queue=1000), lambda: rings.append(1))

    async def burst() -> list[tuple[object, bool]]:
        return await asyncio.gather(*(batcher.create(key.id, _new(f"p{i}")) for i in range(200)))

    results = asyncio.run(burst())
    batcher.close()
    ids = {row.id for row, created in results if created}  # type: ignore[attr-defined]
    assert len(ids) == 200
    assert [row.prompt for row, _ in results] == [f"p{i}" for i in range(200)]  # type: ignore[attr-defined]
    assert sum(batches) == 200 and len(batches) < 200  # some creates shared a transaction
    assert len(rings) == len(batches)  # the workers are woken once per stored batch
    for task_id in ids:
        assert store.get_task(task_id) is not None


def test_quotas_inside_one_batch_are_exact(store: TaskStore) -> None:
    key, _ = store.create_key("k")
    other, _ = store.create_key("other")
    quotas = Quotas(max_active_per_key=3, max_queue=5)
    outcomes = store.create_tasks([(key.id, _new()) for _ in range(4)] + [(other.id, _new())] * 3, quotas)
    kinds = [o.kind if isinstance(o, QuotaExceeded) else "ok" for o in outcomes]
    assert kinds == ["ok", "ok", "ok", "active", "ok", "ok", "queue"]
    # Later transactions see the stored rows (the reused counts are never below the truth).
    again = store.create_tasks([(other.id, _new())], quotas)
    assert isinstance(again[0], QuotaExceeded) and again[0].kind == "queue"


def test_a_failed_transaction_fails_every_create_in_it_and_the_thread_survives(store: TaskStore) -> None:
    key, _ = store.create_key("k")
    batcher = CreateBatcher(store, None)
    real = store.create_tasks
    store.create_tasks = lambda *a, **k: (_ for _ in ()).throw(OSError("disk full"))  # type: ignore[method-assign]

    async def scenario() -> None:
        with pytest.raises(OSError, match="disk full"):
            await batcher.create(key.id, _new())
        store.create_tasks = real  # type: ignore[method-assign]
        row, created = await batcher.create(key.id, _new("after"))
        assert created and row.prompt == "after"

    asyncio.run(scenario())
    batcher.close()


def test_idempotent_creates_in_a_burst_make_one_task(store: TaskStore) -> None:
    key, _ = store.create_key("k")
    batcher = CreateBatcher(store, None)
    same = _new(idempotency_key="retry-1", request_hash="h")

    async def burst() -> list[tuple[object, bool]]:
        return await asyncio.gather(*(batcher.create(key.id, same) for _ in range(20)))

    results = asyncio.run(burst())
    batcher.close()
    assert len({row.id for row, _ in results}) == 1  # type: ignore[attr-defined]
    assert sum(created for _, created in results) == 1
