"""The in-process tier: the whole node of `reelq serve` in the test process, without its processes.

`AppServer` answers like `tests.conftest.Server` (base_url, client(), new_key(), query(),
stored_videos()), so a contract test switches tiers by its fixture alone. What it runs here:

- the API: `create_asgi` over `build_services` (the real app over a migrated SQLite file), served
  by uvicorn's `DrainingServer` on a thread on a free port. A real socket rather than httpx's
  ASGI transport, because the contract tests long-poll, stream SSE and drive the `openai` SDK
  and `reelq.client` synchronously; an in-process ASGI client is `AppServer.asgi_client()`;
- render workers: `worker/process.py`'s `worker_loop` on threads (the loop the processes run,
  drained through its `stop` event), woken by the same doorbells; with REELQ_TEST_SCALED=1
  (PostgreSQL, RabbitMQ, S3, Redis) Celery render workers on threads instead (`CeleryThreadWorker`:
  `worker/celery.py`'s app and task, woken by the API's published messages);
- the sweeper: `Supervisor.sweep_once` (the supervisor's own sweep, and scaled out its reconciler)
  on a thread, with no processes spawned;
- webhooks: the `WebhookDeliverer` of `reelq serve`.

Keys are made with the store directly (`store_key`, for the process tier's servers too), not a
`reelq keys create` process per key.

What it does not run, and so what stays in the process tier (`make_server`): kill -9 and signals,
the supervisor's restarts, the connection guard's limits measured on a real process, the relay
worker process, Celery's worker processes (their start-up, signals and prefetch across processes),
probes, /metrics from worker processes, and the server's log. A test marked `scaled` runs on the
same node in both modes, so it proves the same behaviour on either backend.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.conftest import SCALED, Server

# os.environ is read by Settings; patched only while one is built (never while a test's code runs).
_ENVIRON_LOCK = threading.Lock()
# Whose lines `log()` holds: ours and uvicorn's (an exception in the app is logged by uvicorn.error).
LOGGERS = ("reelq", "uvicorn.error")


@contextlib.contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    with _ENVIRON_LOCK:
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)


def store_key(env: dict[str, str], name: str) -> str:
    """Create a key in the store `env` configures (the embedded SQLite file or PostgreSQL)."""
    from reelq.config import load_settings
    from reelq.database import TaskStore, ensure_schema, make_engine

    with _environ(env):
        settings = load_settings()
    settings.home_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.sqlalchemy_url)
    try:
        ensure_schema(engine)
        return TaskStore(engine).create_key(name)[1]
    finally:
        engine.dispose()


class CeleryThreadWorker:
    """A Celery render worker on a thread: what `reelq.worker.celery.worker_main` runs in a worker
    process (the same app and task, `render_app`; solo pool, one message at a time, no gossip,
    mingle or heartbeat), minus the process: its consumer runs Celery's blocking loop
    (`use_eventloop=False`), because the event loop's hub is one per process and every worker here
    shares this one. Stopped alone (`request_stop`): Celery's own test worker stops through a flag
    that would stop every worker of the process."""

    def __init__(self, settings: Any, name: str) -> None:
        self.settings = settings
        self.name = name
        self.ready = threading.Event()
        self.ctx: Any = None
        self.worker: Any = None

    def run(self) -> None:
        import socket

        from reelq.dispatch.broker import worker_queues
        from reelq.worker.bootstrap import render_context
        from reelq.worker.celery import render_app

        self.ctx = render_context(self.settings, self.name, hard_stop=None)
        app = render_app(self.settings, self.ctx)
        # Celery runs a message's task by name from the current app, which is per thread: this one's.
        app.set_current()
        self.worker = app.WorkController(
            pool="solo",
            concurrency=1,
            prefetch_multiplier=1,
            queues=worker_queues(self.settings),
            hostname=f"{self.name}@{socket.gethostname()}",
            loglevel=self.settings.log_level,
            without_gossip=True,
            without_mingle=True,
            without_heartbeat=True,
            use_eventloop=False,
            ready_callback=lambda _consumer: self.ready.set(),
        )
        try:
            self.worker.start()
        finally:
            self.ready.set()  # a worker that failed to start must not hold up start() either
            self.ctx.store.engine.dispose()

    def request_stop(self) -> None:
        """Hand back the render in flight (REELQ_DRAIN_SECONDS; 0 under AppServer), then a warm stop
        run by the worker's own thread: its consumer's next loop (within Celery's 2 s read timeout)
        raises WorkerShutdown, as Celery's own flag would. A stop from this thread instead would
        read the broker's answers on the socket the worker's thread is reading (a deadlock)."""
        from celery.exceptions import WorkerShutdown

        def shut_down() -> None:
            raise WorkerShutdown(0)

        self.ready.wait(60)
        if self.ctx is not None:
            self.ctx.start_drain()
        if self.worker is not None and self.worker.consumer is not None:
            self.worker.consumer.call_soon(shut_down)


class ShiftedTime:
    """The `time` module as reelq's modules see it under an `AppServer`: wall-clock time moved
    forward by `offset` (link expiry, leases, the sweeper's cutoffs, retention), everything else
    (monotonic clocks, sleeps) the real module's. A test advances the node's clock instead of
    sleeping out a TTL."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return _REAL_TIME.time() + self.offset

    def time_ns(self) -> int:
        return _REAL_TIME.time_ns() + int(self.offset * 1e9)

    def __getattr__(self, name: str) -> Any:
        return getattr(_REAL_TIME, name)


_REAL_TIME = time


@dataclass
class AppServer(Server):
    """`reelq serve`'s node on threads of this process (see the module's docstring)."""

    _threads: list[threading.Thread] = field(default_factory=list)
    _stop_workers: threading.Event = field(default_factory=threading.Event)
    _stop_sweeper: threading.Event = field(default_factory=threading.Event)
    _uvicorn: Any = None
    _deliverer: Any = None
    _log_handler: logging.Handler | None = None
    _log_levels: dict[str, int] = field(default_factory=dict)
    services: Any = None
    settings: Any = None
    clock: ShiftedTime = field(default_factory=ShiftedTime)
    _patched: list[Any] = field(default_factory=list)
    _celery: list[CeleryThreadWorker] = field(default_factory=list)

    def _settings(self, **overrides: Any) -> Any:
        from reelq.config import load_settings

        with _environ(self.env):
            return load_settings(**overrides)

    def start(self, workers: int = 2, timeout: float = 30) -> None:
        import uvicorn

        from reelq.api import create_asgi
        from reelq.api.app import build_services
        from reelq.api.server import DrainingServer, server_options
        from reelq.cli import _webhook_link_base
        from reelq.dispatch.supervisor import Supervisor
        from reelq.webhooks.delivery import WebhookDeliverer

        # A test's end stops the node at once, as the kill of `reelq serve` does: a render still in
        # flight is handed back rather than waited for (drain semantics are the process tier's).
        drain = None if "REELQ_DRAIN_SECONDS" in self.env else 0
        self.settings = settings = self._settings(
            workers=workers, root_path=self.root_path or None, drain_seconds=drain
        )
        self.services = services = build_services(settings)
        link_base = _webhook_link_base(settings, "127.0.0.1", self.port)
        self._deliverer = WebhookDeliverer(settings, services.store, services.tasks.render, link_base)
        config = uvicorn.Config(
            create_asgi(settings, services),
            **server_options(settings),
            host="127.0.0.1",
            port=self.port,
            log_level=settings.log_level.lower(),
            access_log=False,
            timeout_graceful_shutdown=5,
            loop="asyncio",
        )
        self._uvicorn = DrainingServer(config, services.draining)
        self._stop_workers.clear()
        self._stop_sweeper.clear()
        self._capture_log(settings.log_level)
        self._spawn(self._uvicorn.run, "api")
        for i in range(workers):
            self._start_worker(f"w{i}")
        # The supervisor's sweep (leases, retries, link expiry, retention, stale queued rows, and
        # with a broker the reconciler's re-publishing); its workers are the threads above, so it is
        # never started.
        sweeper = Supervisor(settings, 0)
        self._spawn(lambda: self._sweep(sweeper), "sweeper")
        self._deliverer.start()
        deadline = time.monotonic() + timeout
        while not self._uvicorn.started or not all(w.ready.is_set() for w in self._celery):
            # Any thread of the node that ended (the API, or a Celery worker that could not start
            # and set `ready` on its way out) is a failed start, not a node to test.
            if not all(t.is_alive() for t in self._threads) or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the in-process node did not start")
            time.sleep(0.01)

    def _start_worker(self, name: str) -> None:
        """One render worker on a thread: the doorbell loop, or with a broker a Celery worker."""
        from reelq.worker.process import worker_loop

        if not self.settings.broker_url:
            self._spawn(lambda: worker_loop(self.settings, name, self._stop_workers), name)
            return
        worker = CeleryThreadWorker(self.settings, f"{name}-{self.port}")
        self._celery.append(worker)
        self._spawn(worker.run, name)

    def _capture_log(self, level: str) -> None:
        """The node's log lines into a file, as `reelq serve`'s go to its output: `log()` reads them.
        (Other nodes of this process log there too while they run: tests read it for absences of
        secrets or tracebacks and for lines naming their own task ids.)"""
        self.log_path = self.home / f"server-{time.time_ns()}.log"
        handler = logging.FileHandler(self.log_path, encoding="utf-8")
        handler.setLevel(level.upper())
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self._log_handler = handler
        self._log_levels = {}
        for name in LOGGERS:
            logger = logging.getLogger(name)
            self._log_levels[name] = logger.level
            logger.setLevel(min(logger.getEffectiveLevel(), handler.level))
            logger.addHandler(handler)

    def _release_log(self) -> None:
        if self._log_handler is None:
            return
        for name in LOGGERS:
            logger = logging.getLogger(name)
            logger.removeHandler(self._log_handler)
            logger.setLevel(self._log_levels[name])
        self._log_handler.close()
        self._log_handler = None

    def _spawn(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=f"appserver-{self.port}-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _sweep(self, supervisor: Any) -> None:
        while not self._stop_sweeper.wait(self.settings.sweep_interval):
            try:
                supervisor.sweep_once()
            except Exception:
                if not self._stop_sweeper.is_set():
                    raise
        if supervisor.reconciler is not None:
            supervisor.reconciler.publisher.close()
        supervisor.store.engine.dispose()

    def advance(self, seconds: float) -> None:
        """Move the node's wall clock forward (this process's reelq modules read it: see ShiftedTime)."""
        # Scaled out, leases and the sweeper's cutoffs are judged by PostgreSQL's own clock (`now()`).
        assert not SCALED, "the database's clock cannot be moved: mark the test embedded_only"
        for module in list(sys.modules.values()):
            name = getattr(module, "__name__", "")
            if name.startswith("reelq.") and getattr(module, "time", None) is _REAL_TIME:
                module.time = self.clock  # type: ignore[attr-defined]
                self._patched.append(module)
        self.clock.offset += seconds

    def _unpatch_clock(self) -> None:
        for module in self._patched:
            module.time = _REAL_TIME  # type: ignore[attr-defined]
        self._patched = []
        self.clock.offset = 0.0

    def asgi_client(self, key: str | None = None) -> httpx.AsyncClient:
        """An async client straight over this node's ASGI app (no socket)."""
        from reelq.api import create_asgi

        assert self.services is not None, "start() first (not in scaled mode)"
        headers = {"Authorization": f"Bearer {key or self.keys[0]}"}
        transport = httpx.ASGITransport(app=create_asgi(self.settings, self.services))
        return httpx.AsyncClient(transport=transport, base_url=self.base_url, headers=headers, timeout=30)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        if not self._threads:
            return None
        # As `reelq serve` stops: the API drains (held long-polls answer), then the workers.
        self._uvicorn.handle_exit(signal.SIGTERM, None)
        self._threads[0].join(timeout)
        self._deliverer.stop()
        self._stop_workers.set()
        for worker in self._celery:
            worker.request_stop()  # their threads end within a couple of seconds: joined below
        self._celery = []
        self._stop_sweeper.set()
        for thread in self._threads[1:]:
            thread.join(timeout)
        alive = [t.name for t in self._threads if t.is_alive()]
        self._threads = []
        self._release_log()
        self._unpatch_clock()
        assert not alive, f"threads still running after stop: {alive}"
        return 0
