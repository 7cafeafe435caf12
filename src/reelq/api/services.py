"""What the routes need, built once per API process and reached through `Annotated` dependencies."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from reelq.config import Settings
from reelq.database import TaskStore
from reelq.database.fastread import CachedReader
from reelq.dispatch.doorbell import ring
from reelq.images import close_decoder_processes
from reelq.metrics import ApiCollector, HttpStats
from reelq.ratelimit import MemoryRateLimiter, RateLimiter
from reelq.service import TaskService
from reelq.service.covers import Covers
from reelq.storage import Storage

if TYPE_CHECKING:
    from reelq.dispatch.broker import Publisher


@dataclass
class Services:
    settings: Settings
    store: TaskStore
    storage: Storage
    reader: CachedReader | None  # the cached read path (database/fastread.py); None on an in-memory database
    limiter: RateLimiter = field(default_factory=MemoryRateLimiter)
    # Set when the server starts shutting down (cli.serve): held long-polls answer at once.
    draining: threading.Event = field(default_factory=threading.Event)
    # Request counts and latency of both transports, plain ints (metrics.py).
    http_stats: HttpStats = field(default_factory=HttpStats)

    def __post_init__(self) -> None:
        # With a broker, each stored create is published to the render workers' queue (dispatch/broker.py).
        self.publisher: Publisher | None = None
        if self.settings.broker_url:
            from reelq.dispatch.broker import Publisher

            self.publisher = Publisher(self.settings)
        # The task rules both transports call (api/vidu.py, api/fastpath.py).
        self.tasks = TaskService(
            self.settings,
            self.store,
            self.storage,
            self.reader,
            self.limiter,
            self.draining,
            on_stored=self.notify_workers,
            on_created=self.publisher.publish if self.publisher is not None else None,
        )
        self.metrics = ApiCollector(self.http_stats, self.tasks.create_stats, self.store)
        # Cover images (first frames) behind signed links: the Vidu platform's and OpenAI's surfaces.
        self.covers = Covers(self.settings.secret_bytes())

    def notify_workers(self) -> None:
        """Wake idle workers now (embedded dispatch; with a broker the published message wakes them)."""
        if self.publisher is None:
            ring(self.settings.run_dir)

    def close(self) -> None:
        """Store the creates still queued, then release the database and the image-checking processes."""
        self.tasks.close()
        if self.publisher is not None:
            self.publisher.close()  # after the last batch: its messages go out before the exit
        if self.reader is not None:
            self.reader.close()
        self.store.engine.dispose()
        close_decoder_processes()


async def get_services(request: Request) -> Services:
    # async on purpose: FastAPI runs a plain `def` dependency in the thread pool, per request.
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]
