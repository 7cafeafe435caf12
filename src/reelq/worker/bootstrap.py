"""What every worker process does first, written once: render (worker/process.py), Celery
(worker/celery.py) and relay (worker/relay.py) workers.

A worker process is started by the supervisor (`python -m <module> --name <name>`) with its settings
JSON on stdin: it binds its life to the supervisor's (lifeline) before anything else, reads the
settings, and logs per REELQ_LOG_LEVEL/REELQ_LOG_FORMAT. Its metrics need nothing here: it inherits
PROMETHEUS_MULTIPROC_DIR from the supervisor (metrics.prepare_multiprocess_dir). A render worker then
builds its `WorkerContext` (`render_context`), the same for the doorbell loop and the Celery worker.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from reelq.config import Settings
from reelq.database import TaskStore, ensure_schema, make_engine
from reelq.dispatch.children import make_worker_id
from reelq.engines import build_engines
from reelq.logs import setup_logging
from reelq.storage import build_storage
from reelq.worker.context import WorkerContext
from reelq.worker.lifeline import bind_to_supervisor

RENDER_DEADLINE_EXIT_CODE = 87


def end_worker_process() -> None:
    """The hard stop of a render worker process: a render that ignores its deadline cannot be stopped
    from another thread, so the process ends and the supervisor starts a fresh one (and removes the
    dead process's temporary files)."""
    os._exit(RENDER_DEADLINE_EXIT_CODE)


def start_worker_process(prog: str, default_name: str, argv: list[str] | None = None) -> tuple[Settings, str]:
    """Lifeline, `--name`, settings from stdin, logging: (the settings, this worker's name)."""
    bind_to_supervisor()  # first: a supervisor that dies while this starts is noticed too
    parser = argparse.ArgumentParser(prog=prog, description="Settings JSON on stdin.")
    parser.add_argument("--name", default=default_name)
    args = parser.parse_args(argv)
    settings = Settings.from_json(sys.stdin.buffer.read())
    setup_logging(settings)
    return settings, args.name


def render_context(settings: Settings, name: str, hard_stop: Callable[[], None] | None) -> WorkerContext:
    """A render worker's store (schema ensured), storage and engines (their models loaded here)."""
    engine = make_engine(settings.sqlalchemy_url)
    ensure_schema(engine)
    return WorkerContext(
        settings=settings,
        store=TaskStore(engine),
        storage=build_storage(settings),
        engines=build_engines(settings),
        worker_id=make_worker_id(name),
        hard_stop=hard_stop,
    )
