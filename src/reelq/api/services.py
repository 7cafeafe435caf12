"""What the routes need, built once per API process and reached through `Annotated` dependencies."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from reelq.api.longpoll import LongPollHub
from reelq.config import Settings
from reelq.dispatch.doorbell import ring
from reelq.images import close_decoder_processes
from reelq.ratelimit import Limit, MemoryRateLimiter, RateLimiter
from reelq.storage import LocalStorage
from reelq.store import Quotas, TaskStore
from reelq.store.batcher import CreateBatcher
from reelq.store.fastread import TASK_COLUMNS, SqliteReader

TaskView = tuple[Any, ...]  # columns of fastread.TASK_COLUMNS, in that order
VIEW_FIELDS = [c.strip() for c in TASK_COLUMNS.split(",")]


@dataclass
class Services:
    settings: Settings
    store: TaskStore
    storage: LocalStorage
    reader: SqliteReader | None  # the inline SQLite read path; None on other databases
    limiter: RateLimiter = field(default_factory=MemoryRateLimiter)
    # Set when the server starts shutting down (cli.serve): held long-polls answer at once.
    draining: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        s = self.settings
        self.poll_limit = Limit(rate=s.poll_rate, burst=max(1.0, s.poll_burst))
        self.create_limit = Limit(rate=s.create_rate / 60.0, burst=max(1.0, s.create_rate))
        self.quotas = Quotas(max_active_per_key=s.max_active_per_key, max_queue=s.max_queue)
        self.creates = CreateBatcher(self.store, self.quotas, on_stored=self.notify_workers)
        self.long_polls = LongPollHub(self.reader.version if self.reader else None, self.draining)

    async def key_id_for(self, plain: str) -> str | None:
        if self.reader is not None:
            return self.reader.key_id_for(plain)
        return await run_in_threadpool(self.store.key_id_for, plain)

    async def task_view(self, task_id: str, key_id: str) -> TaskView | None:
        if self.reader is not None:
            return self.reader.task(task_id, key_id)
        row = await run_in_threadpool(self.store.get_task, task_id, key_id)
        return None if row is None else tuple(getattr(row, name) for name in VIEW_FIELDS)

    def notify_workers(self) -> None:
        """Wake idle workers now (embedded dispatch)."""
        ring(self.settings.run_dir)

    def close(self) -> None:
        """Store the creates still queued, then release the database and the image-checking processes."""
        self.creates.close()
        self.store.engine.dispose()
        close_decoder_processes()


async def get_services(request: Request) -> Services:
    # async on purpose: FastAPI runs a plain `def` dependency in the thread pool, per request.
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]
