"""A render worker process: claim a task, run it, wait on the doorbell, until told to drain.

Started by the supervisor (`python -m reelq.worker.process --name wN`) with its settings on stdin.
SIGTERM drains: no new claims; the render in flight finishes, or is handed back after
`REELQ_DRAIN_SECONDS`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from reelq.config import Settings
from reelq.database import TaskStore, ensure_schema, make_engine
from reelq.dispatch.doorbell import FALLBACK_POLL_SECONDS, DoorbellListener
from reelq.engines import build_engines, relayed_models
from reelq.logs import setup_logging
from reelq.storage import build_storage
from reelq.worker.context import WorkerContext, make_worker_id
from reelq.worker.run import run_task

log = logging.getLogger("reelq.worker")

RENDER_DEADLINE_EXIT_CODE = 87


def end_worker_process() -> None:
    """The hard stop of a render worker process: a render that ignores its deadline cannot be stopped
    from another thread, so the process ends and the supervisor starts a fresh one (and removes the
    dead process's temporary files)."""
    os._exit(RENDER_DEADLINE_EXIT_CODE)


def worker_loop(settings: Settings, name: str, stop: threading.Event | None = None) -> None:
    """Claim and run tasks until SIGTERM/SIGINT (or `stop`); a render in flight finishes or is handed back."""
    engine = make_engine(settings.sqlalchemy_url)
    ensure_schema(engine)
    ctx = WorkerContext(
        settings=settings,
        store=TaskStore(engine),
        storage=build_storage(settings),
        engines=build_engines(settings),
        worker_id=make_worker_id(name),
        # A render stuck past its deadline ends this process (the supervisor starts a fresh one); not
        # when the loop runs on a thread (`stop` given) of a process that is not a worker's own.
        hard_stop=end_worker_process if stop is None else None,
    )
    if stop is None:

        def _drain(_signum: int, _frame: object) -> None:
            ctx.start_drain()

        signal.signal(signal.SIGTERM, _drain)
        signal.signal(signal.SIGINT, _drain)
    else:
        threading.Thread(target=lambda: (stop.wait(), ctx.start_drain()), daemon=True).start()

    # Relayed models only wait on an upstream: the relay worker holds them, never a render slot.
    relayed = relayed_models(settings)
    listener = DoorbellListener(settings.run_dir, f"{os.getpid()}")
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
        engine.dispose()


def _worker_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="reelq-worker", description="Settings JSON on stdin.")
    parser.add_argument("--name", default="w")
    args = parser.parse_args(argv)
    settings = Settings.from_json(sys.stdin.buffer.read())
    setup_logging(settings)
    if settings.broker_url:
        from reelq.dispatch.broker import worker_main

        worker_main(settings, args.name)  # a Celery render worker: messages wake it, the claim decides
        return
    worker_loop(settings, args.name)


if __name__ == "__main__":
    _worker_main()
