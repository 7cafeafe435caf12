"""A render worker process: claim a task, run it, wait on the doorbell, until told to drain.

Started by the supervisor (`python -m reelq.worker.process --name wN`) with its settings on stdin.
SIGTERM drains: no new claims; the render in flight finishes, or is handed back after
`REELQ_DRAIN_SECONDS`.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from reelq.config import Settings
from reelq.dispatch.children import mark_models_loaded
from reelq.dispatch.doorbell import FALLBACK_POLL_SECONDS, DoorbellListener
from reelq.engines import unrendered_models
from reelq.worker.bootstrap import end_worker_process, render_context, start_worker_process
from reelq.worker.run import run_task

log = logging.getLogger("reelq.worker")

def worker_loop(settings: Settings, name: str, stop: threading.Event | None = None) -> None:
    """Claim and run tasks until SIGTERM/SIGINT (or `stop`); a render in flight finishes or is handed back."""
    # A render stuck past its deadline ends this process (the supervisor starts a fresh one); not
    # when the loop runs on a thread (`stop` given) of a process that is not a worker's own.
    ctx = render_context(settings, name, hard_stop=end_worker_process if stop is None else None)
    if stop is None:  # a worker process of its own: tell the supervisor its models are loaded
        mark_models_loaded(settings)

        def _drain(_signum: int, _frame: object) -> None:
            ctx.start_drain()

        signal.signal(signal.SIGTERM, _drain)
        signal.signal(signal.SIGINT, _drain)
    else:

        def _drain_when_stopped() -> None:
            stop.wait()
            ctx.start_drain()

        threading.Thread(target=_drain_when_stopped, daemon=True).start()

    # Relayed models only wait on an upstream: the relay worker holds them, never a render slot; a model
    # of another pool is another pool's workers' (SPEC §7): neither is claimed here.
    relayed = unrendered_models(settings)
    # Named by process and loop: loops on threads of one process (tests/harness.py) each get a bell.
    listener = DoorbellListener(settings.run_dir, f"{os.getpid()}-{name}")
    log.info("worker %s ready", ctx.worker_id)
    try:
        while not ctx.draining.is_set():
            try:
                task = ctx.store.claim_next(ctx.worker_id, settings.lease_seconds, exclude_models=relayed)
            except Exception as exc:
                # A database that cannot be written (disk full, locked past its timeout) is a
                # condition to wait out, not a reason to die: a restarted worker would meet it too.
                log.warning("claim failed (%s: %s); retrying", type(exc).__name__, exc)
                listener.wait(FALLBACK_POLL_SECONDS)
                continue
            if task is None:
                listener.wait(FALLBACK_POLL_SECONDS)
                continue
            try:
                outcome = run_task(ctx, task)
            except Exception:
                # run_task settles every render error itself; this is the store failing under us.
                # The lease brings the task back; this process stays up for the next one.
                log.exception("task %s: could not be settled; its lease will lapse", task.id)
                continue
            log.info("task %s: %s (attempt %d)", task.id, outcome.value, task.attempts)
    finally:
        listener.close()
        ctx.store.engine.dispose()


def _worker_main(argv: list[str] | None = None) -> None:
    settings, name = start_worker_process("reelq-worker", "w", argv)
    if settings.broker_url:
        from reelq.worker.celery import worker_main

        worker_main(settings, name)  # a Celery render worker: messages wake it, the claim decides
        return
    worker_loop(settings, name)


if __name__ == "__main__":
    _worker_main()
