"""Celery dispatch (REELQ_BROKER_URL): the message only wakes a worker; the row's claim decides.

A create commits its row, then `Publisher` sends `reelq.run(<task id>)` to REELQ_QUEUE from
its own thread (the create never waits on the broker). A render worker (a Celery worker with
the solo pool, one per process, started by the supervisor: `worker_main`) receives it,
claims *that* row through the store (`TaskStore.claim_next(task_id=…)`) and runs it with the
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
import os
import queue
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from reelq.config import Settings

if TYPE_CHECKING:
    from celery import Celery

    from reelq.worker.context import WorkerContext

log = logging.getLogger("reelq.dispatch")

TASK_NAME = "reelq.run"
REPUBLISH_MAX_INTERVAL = 60.0  # a row left queued is re-published at most this far apart, at worst
READY_TIMEOUT = 1.5  # seconds a readiness check waits for the broker to accept a connection


def make_app(settings: Settings) -> Celery:
    """The Celery app of one deployment: its broker, its queue, the one task, the delivery settings."""
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
    app.task(name=TASK_NAME, ignore_result=True)(_run_message)
    return app


class Publisher:
    """Sends `reelq.run(id)` messages from one thread; `publish` never blocks its caller."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = make_app(settings)
        self._queue: queue.SimpleQueue[list[str] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, daemon=True, name="reelq-publisher")
        self._thread.start()

    def publish(self, task_ids: list[str]) -> None:
        self._queue.put(list(task_ids))

    def publish_now(self, task_ids: list[str]) -> int:
        """Send at once on the calling thread (the reconciler); how many were sent."""
        sent = 0
        for task_id in task_ids:
            try:
                self.app.send_task(TASK_NAME, args=[task_id], queue=self.settings.queue)
                sent += 1
            except Exception as exc:
                # The row stays queued: the reconciler sends it again once the broker is back.
                log.warning("could not publish task %s (%s: %s)", task_id, type(exc).__name__, exc)
                break
        return sent

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


# --- the worker side -------------------------------------------------------------------------

_context: WorkerContext | None = None
_relayed: frozenset[str] = frozenset()


def _run_message(task_id: str) -> str:
    """One message: claim that row (or nothing) and run it; what happened, for the log."""
    ctx = _context
    if ctx is None:  # pragma: no cover - only if someone runs the task outside `worker_main`
        raise RuntimeError("reelq.run executes only in a reelq render worker")
    if ctx.draining.is_set():
        # Shutting down: leave the row queued (the reconciler re-publishes it) rather than start a render.
        return "draining"
    task = ctx.store.claim_next(
        ctx.worker_id, ctx.settings.lease_seconds, task_id=task_id, exclude_models=_relayed
    )
    if task is None:
        return "not queued"  # someone else claimed it, it finished, or it is not ours to render
    from reelq.worker.run import run_task

    outcome = run_task(ctx, task)
    log.info("task %s: %s (attempt %d)", task.id, outcome.value, task.attempts)
    return outcome.value


def worker_main(settings: Settings, name: str) -> None:
    """Run one Celery render worker in this process (solo pool: the render runs on its main thread)."""
    global _context, _relayed
    from celery.signals import worker_shutting_down

    from reelq.database import TaskStore, ensure_schema, make_engine
    from reelq.engines import build_engines, relayed_models
    from reelq.storage import build_storage
    from reelq.worker.context import WorkerContext, make_worker_id
    from reelq.worker.process import end_worker_process

    engine = make_engine(settings.sqlalchemy_url)
    ensure_schema(engine)
    ctx = WorkerContext(
        settings=settings,
        store=TaskStore(engine),
        storage=build_storage(settings),
        engines=build_engines(settings),
        worker_id=make_worker_id(name),
        hard_stop=end_worker_process,
    )
    _context, _relayed = ctx, frozenset(relayed_models(settings))

    def _drain(**_: Any) -> None:
        # Celery's warm shutdown waits for the render in flight; ours hands it back after
        # REELQ_DRAIN_SECONDS (run_task watches `drain_expired`), so a stop is bounded.
        ctx.start_drain()

    worker_shutting_down.connect(_drain, weak=False)
    app = make_app(settings)
    log.info("celery render worker %s ready on queue %s", ctx.worker_id, settings.queue)
    app.worker_main(
        [
            # Celery's start-up banner is many lines of bare text on stdout: no JSON log may hold it
            # (the line above says which worker and queue). A global option: before `worker`.
            *(["--quiet"] if settings.log_format == "json" else []),
            "worker",
            "--pool=solo",
            "--concurrency=1",
            "--prefetch-multiplier=1",
            f"--queues={settings.queue}",
            f"--hostname={name}-{os.getpid()}@{socket.gethostname()}",
            f"--loglevel={settings.log_level}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
