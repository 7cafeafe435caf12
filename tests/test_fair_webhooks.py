"""Webhook delivery is fair across API keys (issue 19, item 2): one key's backlog to a receiver that
hangs holds at most its share of the send slots, and another key's healthy receiver still gets its
events. The store's lease on a real SQLite file and the real PostgreSQL server; the delivery loop with
real HTTP receivers on loopback."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reelq.config import Settings
from reelq.database import TaskStore, make_engine, migrate
from reelq.webhooks.delivery import WebhookDeliverer
from tests.test_store import _postgres_store, new
from tests.webhook_receiver import Receiver

pytestmark = [pytest.mark.service]


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TaskStore]:
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'reelq.db'}")
        migrate(engine)
        yield TaskStore(engine)
        engine.dispose()
    else:
        yield from _postgres_store()


def _processing_events(store: TaskStore, key_id: str, url: str, count: int) -> list[str]:
    """`count` tasks of the key, each claimed once: one pending `video.processing` event each."""
    ids = []
    for n in range(count):
        task, _ = store.create_task(key_id, new(f"task {n}", callback_url=url))
        assert store.claim_next("w", 300, task.id) is not None
        ids.append(task.id)
    return ids


def test_the_lease_takes_keys_in_turn_and_caps_each_key(store: TaskStore) -> None:
    greedy, _ = store.create_key("greedy")
    other, _ = store.create_key("other")
    third, _ = store.create_key("third")
    _processing_events(store, greedy.id, "https://a.example/hook", 12)
    _processing_events(store, other.id, "https://b.example/hook", 2)
    _processing_events(store, third.id, "https://c.example/hook", 1)  # the newest event of all

    # Round-robin: every key's first event before any key's second (the greedy key's are the oldest)...
    first = store.claim_webhooks("s1", 3, 60, per_key=3)
    assert sorted(e.key_id for e in first) == sorted([greedy.id, other.id, third.id])
    # ...and then at most 3 per key however many slots are free.
    first += store.claim_webhooks("s1", 10, 60, per_key=3)
    by_key = [e.key_id for e in first]
    assert by_key.count(greedy.id) == 3 and by_key.count(other.id) == 2 and by_key.count(third.id) == 1

    # The greedy key's share is held: more free slots give it nothing more while its sends run...
    assert store.claim_webhooks("s1", 10, 60, per_key=3) == []
    # ...and each one it settles frees one place for it, not more.
    settled = next(e for e in first if e.key_id == greedy.id)
    store.settle_webhook(
        settled, "s1", at=time.time(), duration_ms=1.0, status_code=204, error=None, next_attempt_at=None
    )
    again = store.claim_webhooks("s1", 10, 60, per_key=3)
    assert [e.key_id for e in again] == [greedy.id]
    # The cap is per sender: another `reelq serve` process has its own slots and its own share.
    assert [e.key_id for e in store.claim_webhooks("s2", 10, 60, per_key=2)] == [greedy.id] * 2


class HangingReceiver:
    """Accepts connections, reads whatever comes and never answers: a receiver that hangs."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.connections: list[socket.socket] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections.append(conn)

    def held(self) -> int:
        with self.lock:
            return len(self.connections)

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()
        with self.lock:
            for conn in self.connections:
                conn.close()


def test_a_hanging_receiver_of_one_key_does_not_delay_another_keys_events(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'reelq.db'}")
    migrate(engine)
    store = TaskStore(engine)
    # Attempts to the hanging receiver last the whole test: whatever they hold, they keep.
    settings = Settings(
        home=tmp_path, allow_private_urls=True, webhook_timeout=120, webhook_concurrency=16
    )
    hanging, healthy = HangingReceiver(), Receiver().start()
    greedy, _ = store.create_key("greedy")
    other, _ = store.create_key("other")
    _processing_events(store, greedy.id, hanging.url(), 40)
    (task_id,) = _processing_events(store, other.id, healthy.url(), 1)
    assert store.complete(task_id, "w", "v.mp4", 1.0, 100)

    deliverer = WebhookDeliverer(
        settings, store, lambda view, _base: {"id": view.id, "state": view.status}, "http://x"
    )
    deliverer.start()
    try:
        # Both of the healthy key's events arrive while the greedy key's 40 sends hang (on the old
        # first-come order, its 40 events took all 16 slots for the 120 s timeout).
        got = healthy.wait_for(lambda r: len(r) >= 2, timeout=30)
        assert [r.json["state"] for r in got] == ["processing", "completed"]
        # The greedy key never held more than its share of the slots.
        assert hanging.held() <= settings.webhook_concurrency_per_key
    finally:
        deliverer.stop()
        hanging.close()
        healthy.stop()
        engine.dispose()
