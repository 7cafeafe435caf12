"""What a worker carries from task to task: its id, store, storage, engines and drain state.

Worker ids (`make_worker_id`, `worker_marker`) are dispatch/children.py's: the supervisor reads them too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from reelq.config import Settings
from reelq.database import TaskStore
from reelq.engines.base import Engine
from reelq.storage import Storage


class Outcome(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    RELEASED = "released"  # handed back (shutdown, or no disk space), it will run again
    LOST = "lost"  # the lease lapsed and someone else owns the task now
    CANCELLED = "cancelled"  # the owner cancelled (or deleted) the task while it rendered


@dataclass
class WorkerContext:
    settings: Settings
    store: TaskStore
    storage: Storage
    engines: dict[str, Engine]
    worker_id: str
    # Called by the watchdog after it has failed a task whose render ignored the deadline past the grace
    # period: a worker process sets `end_worker_process`; in-process callers (the CLI) leave it None, and
    # the render then stops only if it ever reports progress again.
    hard_stop: Callable[[], None] | None = None
    draining: threading.Event = field(default_factory=threading.Event)
    drain_started: float | None = None

    def start_drain(self) -> None:
        if not self.draining.is_set():
            self.drain_started = time.monotonic()
            self.draining.set()

    def drain_expired(self) -> bool:
        return (
            self.drain_started is not None
            and time.monotonic() - self.drain_started > self.settings.drain_seconds
        )
