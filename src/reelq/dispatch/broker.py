"""Celery dispatch (REELQ_BROKER_URL): the message only wakes a worker; the row's claim decides.

A create commits its row, then `Publisher` sends `reelq.run(<task id>)` to REELQ_QUEUE from
its own thread (the create never waits on the broker). A render worker (a Celery worker with
the solo pool, one per process, started by the supervisor: `reelq.worker.celery`) receives it,
claims the fairest queued row through the store (`TaskStore.claim_next`, SPEC §6 fair share: the
message only wakes it, whichever task it names) and runs it with the
same `run_task` as the embedded workers. A message whose row is already claimed, finished or
gone claims nothing and is acknowledged: duplicates cost one UPDATE that matches no row.

Delivery settings, and why:
- `acks_late`: the message is acknowledged after the render, so a worker that dies mid-render
  leaves it unacknowledged and the broker hands it to another worker;
- `reject_on_worker_lost`: the same when the pool loses its process;
- prefetch 1: a busy worker holds no message another idle worker could run;
- no broker heartbeat: the solo pool renders on the thread that would answer heartbeats, so a
  render longer than two intervals would have its connection closed and its message redelivered
  (harmless, but noisy); dead peers are found by TCP keepalive instead.

Messages can still be lost (a broker restarted without persistence, a publish that failed):
the reconciler (`Reconciler`, run by the supervisor's sweeper) re-publishes rows left queued
longer than REELQ_QUEUED_REDISPATCH_SECONDS, each with a doubling interval so a deep backlog
does not flood the queue with duplicates, and publishes lapsed leases the sweep requeued at once.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from reelq.catalog import DEFAULT_POOL
from reelq.config import Settings

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger("reelq.dispatch")

TASK_NAME = "reelq.run"
REPUBLISH_MAX_INTERVAL = 60.0  # a row left queued is re-published at most this far apart, at worst
READY_TIMEOUT = 1.5  # seconds a readiness check waits for the broker to accept a connection


def make_app(settings: Settings) -> Celery:
    """The Celery app of one deployment: its broker, its queue, the delivery settings (the one task is
    registered by the render worker, worker/celery.py; the publisher sends it by name)."""
    try:
        from celery import Celery
    except ImportError:  # pragma: no cover - depends on the install
        raise RuntimeError("REELQ_BROKER_URL needs Celery: pip install 'reelq[celery]'") from None
    app = Celery("reelq", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_default_queue=settings.queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        broker_heartbeat=0,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a broker restart is waited out, never a reason to exit
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_enable_remote_control=False,  # no pidbox queues: the row is the only state we need
        worker_send_task_events=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


def pool_queue(settings: Settings, pool: str) -> str:
    """The broker queue of one pool (SPEC §7): REELQ_QUEUE for the default pool, `<queue>.<pool>` else,
    so a deployment without pools keeps its one queue and a pool's workers get only its tasks."""
    return settings.queue if pool == DEFAULT_POOL else f"{settings.queue}.{pool}"


def worker_queues(settings: Settings) -> list[str]:
    """The queues a render worker consumes: its pools' (every pool's without --pool)."""
    pools = settings.pools or sorted({entry.pool for entry in settings.catalog.values()})
    return [pool_queue(settings, pool) for pool in pools]


class Publisher:
    """Sends `reelq.run(id)` messages from one thread; `publish` never blocks its caller.

    With models in several pools, each message goes to its model's pool queue: `models_of` (the
    store's, one query a batch) says which model each task is of.
    """

    def __init__(
        self, settings: Settings, models_of: Callable[[list[str]], dict[str, str]] | None = None
    ) -> None:
        self.settings = settings
        self._models_of = models_of
        self._pooled = len({entry.pool for entry in settings.catalog.values()}) > 1
        self.app = make_app(settings)
        self._queue: queue.SimpleQueue[list[str] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, daemon=True, name="reelq-publisher")
        self._thread.start()

    def publish(self, task_ids: list[str]) -> None:
        self._queue.put(list(task_ids))

    def publish_now(self, task_ids: list[str]) -> int:
        """Send at once on the calling thread (the reconciler); how many were sent."""
        sent = 0
        queues = self._queues(task_ids)
        for task_id in task_ids:
            try:
                self.app.send_task(TASK_NAME, args=[task_id], queue=queues.get(task_id, self.settings.queue))
                sent += 1
            except Exception as exc:
                # The row stays queued: the reconciler sends it again once the broker is back.
                log.warning("could not publish task %s (%s: %s)", task_id, type(exc).__name__, exc)
                break
        return sent

    def _queues(self, task_ids: list[str]) -> dict[str, str]:
        """task id -> its pool's queue (all on REELQ_QUEUE when there is one pool)."""
        if not self._pooled or self._models_of is None or not task_ids:
            return {}
        try:
            models = self._models_of(task_ids)
        except Exception as exc:  # the rows stay queued: the reconciler publishes them again
            log.warning("could not read the models of %d task(s) (%s)", len(task_ids), exc)
            return {}
        catalog = self.settings.catalog
        return {
            task_id: pool_queue(self.settings, catalog[model].pool)
            for task_id, model in models.items()
            if model in catalog
        }

    def problem(self) -> str | None:
        """Readiness: None when the broker accepts a connection now, else why not (one short line).

        One attempt, bounded by READY_TIMEOUT: a probe must answer within a couple of seconds, and a
        retry would sleep kombu's 2 s interval first; the prober's own retries absorb a blip.
        """
        try:
            with self.app.connection_for_write(connect_timeout=READY_TIMEOUT) as conn:
                conn.ensure_connection(max_retries=0, timeout=READY_TIMEOUT)
        except Exception as exc:
            return f"broker unavailable: {type(exc).__name__}"
        return None

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            # Everything waiting goes in this round: a burst of creates publishes back to back.
            while True:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self.publish_now(batch)
                    return
                batch.extend(more)
            self.publish_now(batch)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)


class Reconciler:
    """Re-publishes rows left queued, each at a doubling interval (the sweeper calls `run` each sweep)."""

    def __init__(self, publisher: Publisher, stale_seconds: float) -> None:
        self.publisher = publisher
        self.stale_seconds = stale_seconds
        self._next: dict[str, tuple[float, float]] = {}  # task id -> (next publish at, interval)

    def run(self, requeued: list[str], stale_queued: list[str]) -> int:
        now = time.monotonic()
        due = list(requeued)  # a lapsed lease requeued just now has no message anywhere: publish at once
        stale = set(stale_queued)
        for task_id in list(self._next):
            if task_id not in stale:
                del self._next[task_id]  # claimed (or gone) since
        for task_id in stale_queued:
            at, interval = self._next.get(task_id, (0.0, self.stale_seconds / 2))
            if now >= at and task_id not in due:
                due.append(task_id)
                interval = min(REPUBLISH_MAX_INTERVAL, interval * 2)
                self._next[task_id] = (now + interval, interval)
        if not due:
            return 0
        sent = self.publisher.publish_now(due)
        log.info("re-published %d queued task(s)", sent)
        return sent
