"""Group commit for creates: one writer thread stores whatever creates are waiting in one transaction.

Creates come in bursts, and on SQLite every write transaction is serialised anyway. One
request per transaction, from the thread pool, paid a commit (~230 µs of WAL writes here),
two quota counts and SQLAlchemy's per-statement work each time, and the pool's threads
queued on the write lock in SQLite's busy handler, which sleeps in growing steps: 32
concurrent creates ran at ~250/s. Here the event loop hands each create to one thread; that
thread takes everything queued since its last transaction (up to MAX_BATCH) and stores it
with `TaskStore.create_tasks`: one BEGIN, one count per quota, one multi-row INSERT, one
COMMIT. A lone create is stored at once (no waiting for a batch to fill); under load the
batch grows by itself while the previous transaction runs.

Creates carrying an Idempotency-Key go through the same thread one per transaction
(`TaskStore.create_task`), because their unique index may refuse one and that must not
fail the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from reelq.database.errors import StorageFull, is_storage_full
from reelq.database.quotas import QuotaExceeded, Quotas
from reelq.database.tasks import NewTask, TaskRow
from reelq.database.taskstore import TaskStore

log = logging.getLogger("reelq.database")

MAX_BATCH = 256
Outcome = tuple[TaskRow, bool] | BaseException
_FULL_LOG_EVERY = 60.0  # seconds: a full disk refuses every create, and one line a minute says so


@dataclass(slots=True)
class _Pending:
    key_id: str
    new: NewTask
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[tuple[TaskRow, bool]]


class CreateBatcher:
    """`await batcher.create(key_id, new)` from any event loop; `on_stored` runs once per batch that
    stored a task (in the writer thread: it wakes the render workers once, not once per create)."""

    def __init__(
        self,
        store: TaskStore,
        quotas: Quotas | None,
        on_stored: Callable[[], object] | None = None,
        on_created: Callable[[list[str]], object] | None = None,
    ) -> None:
        self.store = store
        self.quotas = quotas
        self.on_stored = on_stored
        # With a broker: the ids of the tasks a batch created, once it committed (dispatch/broker.py).
        self.on_created = on_created
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False
        self._full_logged = float("-inf")

    async def create(self, key_id: str, new: NewTask) -> tuple[TaskRow, bool]:
        """Store one create; (row, created) as `TaskStore.create_task`, or its QuotaExceeded, or
        StorageFull when the database has no room (the transaction rolled back: nothing stored)."""
        self._ensure_started()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[TaskRow, bool]] = loop.create_future()
        self._queue.put(_Pending(key_id, new, loop, future))
        # A client that hangs up cancels the future; the task is stored all the same (as a create
        # whose answer was lost in transit would be) and its outcome is dropped in `_settle`.
        return await future

    def close(self, timeout: float = 10.0) -> None:
        """Store what is queued, then stop the thread."""
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)

    def _ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:  # started on first use: never before a fork, and only where creates arrive
            if self._closed:
                raise RuntimeError("the create batcher is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="reelq-creates", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            try:
                outcomes = self._store(batch)
            except BaseException as exc:  # never leave a request waiting forever
                outcomes = [exc] * len(batch)
                log.exception("create batch failed")
            self._resolve(batch, outcomes)
            if self.on_stored is not None and any(isinstance(o, tuple) and o[1] for o in outcomes):
                try:
                    self.on_stored()
                except Exception:
                    log.exception("waking the workers failed")
            if self.on_created is not None:
                created = [o[0].id for o in outcomes if isinstance(o, tuple) and o[1]]
                if created:
                    try:
                        self.on_created(created)
                    except Exception:
                        log.exception("dispatching the new tasks failed; the reconciler will")

    def _store(self, batch: list[_Pending]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(batch)
        plain = [i for i, p in enumerate(batch) if p.new.idempotency_key is None]
        if plain:
            try:
                stored = self.store.create_tasks(
                    [(batch[i].key_id, batch[i].new) for i in plain], self.quotas
                )
                for i, result in zip(plain, stored, strict=True):
                    outcomes[i] = result if isinstance(result, QuotaExceeded) else (result, True)
            except Exception as exc:  # the transaction failed as a whole: every create in it did
                failure = self._failure(exc, len(plain))
                for i in plain:
                    outcomes[i] = failure
        for i, pending in enumerate(batch):
            if outcomes[i] is None:
                try:
                    outcomes[i] = self.store.create_task(pending.key_id, pending.new, self.quotas)
                except Exception as exc:
                    outcomes[i] = self._failure(exc, 1)
        return [o if o is not None else RuntimeError("create not stored") for o in outcomes]

    def _failure(self, exc: Exception, count: int) -> Exception:
        """What the waiting creates get: StorageFull for a full disk (logged once a minute), else `exc`."""
        if not is_storage_full(exc):
            log.warning("storing %d creates failed: %s: %s", count, type(exc).__name__, exc)
            return exc
        now = time.monotonic()
        if now - self._full_logged >= _FULL_LOG_EVERY:
            self._full_logged = now
            log.error("the database's disk is full: creates answer 503 until there is room (%s)", exc)
        return StorageFull(str(exc))

    @staticmethod
    def _resolve(batch: list[_Pending], outcomes: list[Outcome]) -> None:
        # One wake-up per event loop per batch, not one per create.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Pending, Outcome]]] = defaultdict(list)
        for pending, outcome in zip(batch, outcomes, strict=True):
            by_loop[pending.loop].append((pending, outcome))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting any more
                loop.call_soon_threadsafe(_settle, settled)


def _settle(settled: list[tuple[_Pending, Outcome]]) -> None:
    for pending, outcome in settled:
        if pending.future.done():
            continue
        if isinstance(outcome, BaseException):
            pending.future.set_exception(outcome)
        else:
            pending.future.set_result(outcome)
