"""What the routes need, built once per API process and reached through `Annotated` dependencies."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from reelq.api.bodies import BodyBudget
from reelq.catalog import DEFAULT_POOL
from reelq.config import Settings
from reelq.database import TaskStore
from reelq.database.fastread import CachedReader
from reelq.dispatch.doorbell import ring
from reelq.images import close_decoder_processes
from reelq.metrics import ApiCollector, HttpStats
from reelq.ratelimit import MemoryRateLimiter, RateLimiter
from reelq.service import TaskService
from reelq.service.covers import Covers
from reelq.service.relay import RelayCallbacks
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
    # `reelq serve` on a node whose workers load weights (diffusers): why its render workers cannot
    # take work yet (Supervisor.worker_problem), so /readyz waits for the models; None elsewhere.
    workers_problem: Callable[[], str | None] | None = None

    def __post_init__(self) -> None:
        # With a broker, each stored create is published to the render workers' queue (dispatch/broker.py).
        self.publisher: Publisher | None = None
        if self.settings.broker_url:
            from reelq.dispatch.broker import Publisher

            self.publisher = Publisher(self.settings, self.store.models_of)
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
        self.metrics = ApiCollector(
            self.http_stats, self.tasks.create_stats, self.store, pool_of=self._pool_of
        )
        # Cover images (first frames) behind signed links (service/covers.py), made by the task service.
        self.covers: Covers = self.tasks.covers
        # Bytes of request bodies held at once (api/bodies.py), shared by both transports.
        self.bodies = BodyBudget(int(self.settings.body_budget_mb * 1024 * 1024))
        # The Vidu platform's callbacks (one per process: it remembers signatures against replays).
        self.relay_callbacks = RelayCallbacks(self.settings, self.store)

    def _pool_of(self, model: str) -> str:
        entry = self.settings.catalog.get(model)
        return entry.pool if entry is not None else DEFAULT_POOL

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
