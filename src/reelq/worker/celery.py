"""The Celery render worker (REELQ_BROKER_URL): a Celery worker with the solo pool, one per process.

Started like every render worker (`python -m reelq.worker.process`, which runs `worker_main` when the
settings name a broker). Its one task, `reelq.run(<task id>)`, only wakes it: it claims the fairest
queued row through the store (`TaskStore.claim_next`, SPEC §6 fair share), whichever task the message
names, and runs it with the same `run_task` as the doorbell workers. The app, its queues and the
delivery settings (and why) are dispatch/broker.py's, shared with the `Publisher`.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from reelq.config import Settings
from reelq.dispatch.broker import TASK_NAME, make_app, worker_queues
from reelq.dispatch.children import mark_models_loaded
from reelq.engines import unrendered_models
from reelq.worker.bootstrap import end_worker_process, render_context
from reelq.worker.context import WorkerContext

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger("reelq.dispatch")


def render_app(settings: Settings, ctx: WorkerContext) -> Celery:
    """The Celery app of one render worker: `reelq.run` bound to this worker's context."""
    relayed = frozenset(unrendered_models(settings))  # what it does not render (relayed, other pools)
    app = make_app(settings)

    def run(task_id: str) -> str:
        return _run_message(ctx, relayed, task_id)

    # Not shared: a shared task is added to every Celery app the process makes, so a second worker's
    # app (several on threads of one process, tests/harness.py) would run the first one's context.
    app.task(name=TASK_NAME, ignore_result=True, shared=False)(run)
    return app


def _run_message(ctx: WorkerContext, relayed: frozenset[str], task_id: str) -> str:
    """One message: claim that row (or nothing) and run it; what happened, for the log."""
    if ctx.draining.is_set():
        # Shutting down: leave the row queued (the reconciler re-publishes it) rather than start a render.
        return "draining"
    # The message only wakes this worker: it claims the fairest task (SPEC §6 fair share), not the
    # message's. Every create sends one message, so each queued task still has a wake-up of its own.
    task = ctx.store.claim_next(ctx.worker_id, ctx.settings.lease_seconds, exclude_models=relayed)
    if task is None:
        return "not queued"  # someone else claimed it, it finished, or it is not ours to render
    from reelq.worker.run import run_task

    outcome = run_task(ctx, task)
    log.info("task %s: %s (attempt %d)", task.id, outcome.value, task.attempts)
    return outcome.value


def worker_main(settings: Settings, name: str) -> None:
    """Run one Celery render worker in this process (solo pool: the render runs on its main thread)."""
    from celery.signals import worker_shutting_down

    ctx = render_context(settings, name, hard_stop=end_worker_process)
    app = render_app(settings, ctx)
    mark_models_loaded(settings)  # the engines above loaded their models: readiness may count this one

    def _drain(**_: Any) -> None:
        # Celery's warm shutdown waits for the render in flight; ours hands it back after
        # REELQ_DRAIN_SECONDS (run_task watches `drain_expired`), so a stop is bounded.
        ctx.start_drain()

    worker_shutting_down.connect(_drain, weak=False)
    queues = ",".join(worker_queues(settings))
    log.info("celery render worker %s ready on queue %s", ctx.worker_id, queues)
    app.worker_main(
        [
            # Celery's start-up banner is many lines of bare text on stdout: no JSON log may hold it
            # (the line above says which worker and queue). A global option: before `worker`.
            *(["--quiet"] if settings.log_format == "json" else []),
            "worker",
            "--pool=solo",
            "--concurrency=1",
            "--prefetch-multiplier=1",
            f"--queues={queues}",
            f"--hostname={name}-{os.getpid()}@{socket.gethostname()}",
            f"--loglevel={settings.log_level}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
