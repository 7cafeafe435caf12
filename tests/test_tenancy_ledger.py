"""The budget arithmetic (SPEC §6) under any interleaving of create, complete, fail, cancel, delete,
sweep and credit: `spent + reserved <= budget`, `available >= 0`, and `reserved` always equal to what
the live tasks hold, on a real SQLite store."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from reelq.database import NewTask, QuotaExceeded, TaskStore, make_engine, migrate
from reelq.database.keys import BudgetInUse
from reelq.database.tables import api_keys, tasks
from reelq.domain import Status

pytestmark = [pytest.mark.unit]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TaskStore]:
    path: Path = tmp_path_factory.mktemp("ledger") / "reelq.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    yield TaskStore(engine)
    engine.dispose()


def _new(price: int, off_peak: bool) -> NewTask:
    return NewTask(
        model="viduq3-pro", prompt="p", duration=5, aspect_ratio="16:9", resolution="720p", price=price,
        off_peak=off_peak,
    )


KEY = st.integers(0, 2)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("create"), KEY, st.integers(0, 3000), st.booleans()),
        st.tuples(st.just("complete"), st.integers(-50, 50)),
        st.tuples(st.just("fail")),
        st.tuples(st.just("cancel"), KEY),
        st.tuples(st.just("delete"), KEY),
        st.tuples(st.just("credit"), KEY, st.integers(-5000, 5000)),
        st.tuples(st.just("lapse")),
    ),
    max_size=40,
)


def check_invariant(store: TaskStore) -> None:
    with store.engine.connect() as conn:
        for key_id, budget, spent, reserved in conn.execute(
            select(api_keys.c.id, api_keys.c.budget, api_keys.c.spent, api_keys.c.reserved)
        ):
            held = conn.execute(
                select(func.coalesce(func.sum(tasks.c.reserved_tokens), 0)).where(
                    tasks.c.key_id == key_id,
                    tasks.c.status.in_([Status.QUEUED.value, Status.PROCESSING.value]),
                )
            ).scalar_one()
            assert reserved == held, key_id
            assert spent >= 0 and reserved >= 0
            if budget is not None:
                assert spent + reserved <= budget, key_id


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(budgets=st.lists(st.one_of(st.none(), st.integers(0, 8000)), min_size=3, max_size=3), ops=OPS)
def test_any_interleaving_keeps_the_budget(
    store: TaskStore,
    budgets: list[int | None],
    ops: list[tuple],  # type: ignore[type-arg]
) -> None:
    keys = [store.create_key_with({"budget": b} if b is not None else {})[0].id for b in budgets]
    mine: list[list[str]] = [[], [], []]
    for op in ops:
        kind = op[0]
        if kind == "create":
            _, k, price, off_peak = op
            try:
                mine[k].append(store.create_task(keys[k], _new(price, off_peak))[0].id)
            except QuotaExceeded as exc:
                assert exc.kind == "budget"
                record = store.key_record(keys[k])
                assert record is not None and record.available is not None and record.available < price
        elif kind == "complete":
            task = store.claim_next("w", 30)
            if task is not None:
                reserved = task.reserved_tokens or 0
                assert store.complete(task.id, "w", "v.mp4", 5.0, max(0, reserved + op[1]))
                done = store.get_task(task.id)
                assert done is not None and done.total_tokens is not None
                assert done.total_tokens <= max(0, reserved + op[1])
        elif kind == "fail":
            task = store.claim_next("w", 30)
            if task is not None:
                assert store.fail(task.id, "boom", "w")
                assert not store.fail(task.id, "boom")  # a second failure moves nothing
        elif kind in ("cancel", "delete"):
            k = op[1]
            if mine[k]:
                task_id = mine[k].pop(0)
                if kind == "cancel":
                    store.cancel(task_id, keys[k])
                    store.cancel(task_id, keys[k])  # twice: released once
                else:
                    store.delete_task(task_id, keys[k])
        elif kind == "credit":
            _, k, tokens = op
            with contextlib.suppress(ValueError, BudgetInUse):  # unlimited key, or below what is held
                store.credit_key(keys[k], tokens, None, None)
        elif kind == "lapse" and store.claim_next("dying", 30) is not None:
            store.expire_leases_of("dying")
            store.sweep(max_attempts=1, queued_stale_seconds=3600)
        check_invariant(store)
