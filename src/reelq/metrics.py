"""Prometheus metrics (`GET /metrics`), safe across the processes of one `reelq serve`.

Two kinds of numbers, kept apart on purpose:

- **Events of the render workers** (child processes): tasks completed and failed, render seconds,
  queue-wait seconds. These are prometheus-client metrics in multiprocess mode: each process writes
  its own memory-mapped files under `PROMETHEUS_MULTIPROC_DIR`, which `reelq serve` points at a
  fresh directory (`prepare_multiprocess_dir`) before any process imports prometheus-client, and
  the scrape adds them up (dead workers' counts included, as counters must).
- **The API process's own hot counters**: HTTP requests and their latency by route, tasks created.
  The status-read fast path answers in microseconds, and a labelled `Histogram.observe` (a lock,
  a label lookup, an mmap write) would cost a noticeable share of that. So these are plain Python
  ints in `HttpStats`/`CreateStats`, touched only by the event loop, and a custom collector turns
  them into Prometheus families at scrape time.

Gauges are computed at scrape from the task rows, the truth for every process on every host:
`reelq_queue_depth` (queued tasks) and `reelq_renders_running` (processing tasks). They are the
deployment's totals, the same on every API replica, so only the API exports them: a render worker
node (`reelq worker`, which serves its metrics on REELQ_METRICS_PORT: `dispatch/probes.py`)
exports what happened on that node only. Everything else sums across instances without counting
anything twice: each event is counted by the one process it happened in.

Node-local gauges: `reelq_worker_renders_running` (a multiprocess gauge in `livesum` mode: the
renders in flight in this node's live worker processes; a dead process's value goes with
`process_dead`) and, from the supervisor in the scraping process, `reelq_worker_processes` and
`reelq_worker_restarts_total` (`NodeCollector`).
"""

from __future__ import annotations

import os
import shutil
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from reelq.domain import CANCELLED_ERROR, CONTENT_POLICY_PREFIX

if TYPE_CHECKING:
    from reelq.config import Settings
    from reelq.database import TaskStore

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Latency buckets (seconds) for HTTP: a status read is ~50 µs, a create ~1 ms, a long-poll up to 60 s.
HTTP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                5.0, 10.0, 30.0, 60.0)  # fmt: skip
RENDER_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
                3600.0)  # fmt: skip
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


# ---- the multiprocess directory -------------------------------------------------------------------------


def prepare_multiprocess_dir(settings: Settings) -> Path:
    """Point PROMETHEUS_MULTIPROC_DIR at a fresh directory for this `reelq serve` (and its workers, which
    inherit the environment), unless the operator set one. Call before anything imports prometheus-client.

    One directory per serving process (`run/metrics-<pid>`), so two servers sharing a home never mix
    or wipe each other's files; the directories of processes that are gone are removed.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        return Path(given)
    base = settings.run_dir
    base.mkdir(parents=True, exist_ok=True)
    for old in base.glob("metrics-*"):
        pid = old.name.removeprefix("metrics-")
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    path = base / f"metrics-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)  # a reused pid's leftovers would add stale counts
    path.mkdir()
    os.environ[MULTIPROC_ENV] = str(path)  # read by prometheus-client when it is first imported
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---- render worker events (prometheus-client, multiprocess) --------------------------------------------


class _WorkerMetrics:
    """Created on first use, so that a process that never renders never imports prometheus-client."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        labels = ("model", "engine")
        # livesum: the sum over this node's live processes (a dead one's file goes in process_dead).
        self.running = Gauge(
            "reelq_worker_renders_running",
            "Renders in flight in this node's worker processes",
            labels,
            multiprocess_mode="livesum",
        )
        self.completed = Counter("reelq_tasks_completed", "Tasks completed", labels)
        # Cancels and deletes of unfinished tasks are failures too (the task reads `failed`), counted by
        # the API process that made them: created = completed + failed + still live, per model.
        self.failed = Counter("reelq_tasks_failed", "Tasks failed, by reason", (*labels, "reason"))
        self.render_seconds = Histogram(
            "reelq_render_seconds", "Seconds from claim to stored video", labels, buckets=RENDER_BUCKETS
        )
        self.queue_wait = Histogram(
            "reelq_queue_wait_seconds", "Seconds from create to first claim", labels, buckets=WAIT_BUCKETS
        )
        # Relay channels (engines/relay/channels.py): labels are the models file's models and channels.
        channel = ("model", "channel")
        self.upstream_in_flight = Gauge(
            "reelq_relay_upstream_in_flight",
            "Relayed tasks held by each upstream channel",
            channel,
            multiprocess_mode="livesum",
        )
        self.upstream_errors = Counter(
            "reelq_relay_upstream_errors", "Upstream calls that failed, by kind", (*channel, "kind")
        )
        self.upstream_seconds = Histogram(
            "reelq_relay_upstream_request_seconds",
            "Seconds an upstream call took (create, status read, download)",
            (*channel, "call"),
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )


_worker: _WorkerMetrics | None = None


def worker_metrics() -> _WorkerMetrics:
    global _worker
    if _worker is None:
        _worker = _WorkerMetrics()
    return _worker


# The `reason` of reelq_tasks_failed_total: a closed set, whatever an engine or upstream writes.
FAILURE_REASONS = (
    "content_policy",  # the prompt or the upstream's moderation refused it
    "render_error",  # the engine failed or produced nothing usable
    "deadline",  # the render ran past its deadline
    "upstream",  # the relay's upstream refused, failed or lost the task
    "fetch",  # an input image could not be fetched or decoded
    "storage",  # the video could not be written
    "worker_lost",  # the sweeper gave up after max_attempts (workers died or stopped answering)
    "cancelled",  # its owner cancelled it
    "deleted",  # its owner deleted it unfinished
    "other",
)
_REASON_PREFIXES = (
    (CONTENT_POLICY_PREFIX, "content_policy"),
    (CANCELLED_ERROR, "cancelled"),
    ("Render exceeded its deadline", "deadline"),  # worker/heartbeat.deadline_error
    ("Render failed after", "worker_lost"),  # database/lifecycle.sweep
    ("Render failed", "render_error"),
    ("Upstream", "upstream"),  # engines/relay
    ("Relay failed", "upstream"),
    ("Storage error", "storage"),
    ("first_image", "fetch"),  # fetch.FetchError, images.ImageError name the input first
    ("last_image", "fetch"),
)


def failure_reason(error: str | None) -> str:
    """The bounded `reason` label of a task's error message (the messages the code writes)."""
    text = error or ""
    for prefix, reason in _REASON_PREFIXES:
        if text.startswith(prefix):
            return reason
    return "other"


def task_finished(
    model: str, engine: str, completed: bool, render_seconds: float | None = None, reason: str = "other"
) -> None:
    """One task reached completed or failed (a render worker, the sweeper giving up on it, or the API
    process cancelling or deleting it); `reason`: one of FAILURE_REASONS."""
    m = worker_metrics()
    if completed:
        m.completed.labels(model, engine).inc()
        if render_seconds is not None:
            m.render_seconds.labels(model, engine).observe(render_seconds)
    else:
        m.failed.labels(model, engine, reason if reason in FAILURE_REASONS else "other").inc()


def task_claimed(model: str, engine: str, queued_seconds: float) -> None:
    worker_metrics().queue_wait.labels(model, engine).observe(max(0.0, queued_seconds))


def render_started(model: str, engine: str) -> None:
    worker_metrics().running.labels(model, engine).inc()


def render_ended(model: str, engine: str) -> None:
    worker_metrics().running.labels(model, engine).dec()


def upstream_in_flight(model: str, channel: str, delta: int) -> None:
    worker_metrics().upstream_in_flight.labels(model, channel).inc(delta)


def upstream_error(model: str, channel: str, kind: str) -> None:
    worker_metrics().upstream_errors.labels(model, channel, kind).inc()


def upstream_call(model: str, channel: str, call: str, seconds: float) -> None:
    worker_metrics().upstream_seconds.labels(model, channel, call).observe(seconds)


def process_dead(pid: int) -> None:
    """A worker process of this node ended: its live gauges stop counting (its counters stay: they must)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


# ---- the node's own gauges (the supervisor in the scraping process) ---------------------------------------


class WorkerPool(Protocol):
    def process_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """(live processes by kind, restarts by kind)."""
        ...


class NodeCollector:
    """The supervisor's worker processes, read at scrape: how many are alive now, how many died and were
    restarted. Both `serve` and `worker` scrape in the supervisor's own process, so plain ints suffice."""

    def __init__(self) -> None:
        self._pools: list[WorkerPool] = []
        self._lock = threading.Lock()

    def add(self, pool: WorkerPool) -> None:
        with self._lock:
            self._pools.append(pool)

    def remove(self, pool: WorkerPool) -> None:
        with self._lock:
            if pool in self._pools:
                self._pools.remove(pool)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        with self._lock:
            pools = list(self._pools)
        if not pools:
            return
        alive: dict[str, int] = {}
        restarts: dict[str, int] = {}
        for pool in pools:
            live, died = pool.process_counts()
            for kind, n in live.items():
                alive[kind] = alive.get(kind, 0) + n
            for kind, n in died.items():
                restarts[kind] = restarts.get(kind, 0) + n
        processes = GaugeMetricFamily(
            "reelq_worker_processes", "Worker processes of this node alive now", labels=["kind"]
        )
        for kind, n in sorted(alive.items()):
            processes.add_metric([kind], n)
        yield processes
        restarted = CounterMetricFamily(
            "reelq_worker_restarts",
            "Worker processes of this node that died and were restarted (crash, OOM, render past deadline)",
            labels=["kind"],
        )
        for kind, n in sorted(restarts.items()):
            restarted.add_metric([kind], n)
        yield restarted


NODE = NodeCollector()


# ---- `reelq worker`'s own endpoint -------------------------------------------------------------------------


def node_registry() -> Any:
    """The registry a `reelq worker` node's `/metrics` serves (dispatch/probes.py): every worker process's
    files, plus `NODE`. Call after `prepare_multiprocess_dir`."""
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(NODE)
    return registry


# ---- the API process's hot counters (plain ints) ----------------------------------------------------------


class RouteStats:
    """One route's answers by status and its latency histogram, in plain numbers."""

    __slots__ = ("by_status", "cells")

    def __init__(self) -> None:
        self.by_status: dict[int, int] = {}
        self.cells: list[float] = [0] * (len(HTTP_BUCKETS) + 2)  # per bucket (last: +Inf), then the sum

    def observe(self, status: int, seconds: float) -> None:
        by_status = self.by_status
        by_status[status] = by_status.get(status, 0) + 1
        cells = self.cells
        cells[bisect_left(HTTP_BUCKETS, seconds)] += 1
        cells[-1] += seconds


class HttpStats:
    """Requests by (method, route template): status counts and a latency histogram.

    Touched by the event loop only, so no lock; a scrape reads a consistent-enough snapshot (a
    counter may be one request ahead of its histogram, which Prometheus tolerates). The fast path
    holds its two routes' `RouteStats` and pays one method call per answer (~0.4 µs).
    """

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], RouteStats] = {}

    def route(self, method: str, template: str) -> RouteStats:
        stats = self.routes.get((method, template))
        if stats is None:
            stats = self.routes[(method, template)] = RouteStats()
        return stats

    def observe(self, method: str, template: str, status: int, seconds: float) -> None:
        self.route(method, template).observe(status, seconds)


class CreateStats:
    """Tasks created by (model, engine): one dict update per create."""

    def __init__(self, engine_for: Callable[[str], str]) -> None:
        self.created: dict[str, int] = {}
        self._engine_for = engine_for
        # Creates refused by a key's own limits (SPEC §6) by reason: budget, max_active, create_rate
        # (the key's own rate), model_not_allowed. No key label: the number of keys is unbounded.
        self.refusals: dict[str, int] = {}

    def created_one(self, model: str) -> None:
        self.created[model] = self.created.get(model, 0) + 1

    def refused(self, reason: str) -> None:
        self.refusals[reason] = self.refusals.get(reason, 0) + 1

    def by_engine(self) -> Iterator[tuple[str, str, int]]:
        for model, n in list(self.created.items()):
            yield model, self._engine_for(model), n


def build_info() -> Any:
    """`reelq_build_info{version, python} 1`: which release a scraped process runs (a fleet mid-upgrade
    shows both), in Prometheus's `*_info` convention."""
    import platform

    from prometheus_client.core import GaugeMetricFamily

    from reelq import __version__

    info = GaugeMetricFamily("reelq_build_info", "reelq's version, always 1", labels=["version", "python"])
    info.add_metric([__version__, platform.python_version()], 1)
    return info


class ApiCollector:
    """The API process's plain-int counters and the gauges read from the task rows, as Prometheus families."""

    def __init__(
        self,
        http: HttpStats,
        creates: CreateStats,
        store: TaskStore,
        pool_of: Callable[[str], str] | None = None,
    ) -> None:
        self.http = http
        self.creates = creates
        self.store = store
        # model -> its pool (SPEC §7): the queue depth per pool, what a pool's autoscaler watches.
        self.pool_of = pool_of

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        yield build_info()
        created = CounterMetricFamily("reelq_tasks_created", "Tasks created", labels=["model", "engine"])
        for model, engine, n in self.creates.by_engine():
            created.add_metric([model, engine], n)
        yield created

        refused = CounterMetricFamily(
            "reelq_creates_refused", "Creates refused by a key's limits (SPEC §6)", labels=["reason"]
        )
        for reason in ("budget", "max_active", "create_rate", "model_not_allowed"):
            refused.add_metric([reason], self.creates.refusals.get(reason, 0))
        yield refused

        requests = CounterMetricFamily(
            "reelq_http_requests", "HTTP requests answered", labels=["method", "route", "status"]
        )
        routes = list(self.http.routes.items())
        for (method, route), stats in routes:
            for status, n in list(stats.by_status.items()):
                requests.add_metric([method, route, str(status)], n)
        yield requests
        latency = HistogramMetricFamily(
            "reelq_http_request_duration_seconds",
            "Seconds from request to the last byte of the answer, by route template",
            labels=["method", "route"],
        )
        bounds = [*(repr(b) for b in HTTP_BUCKETS), "+Inf"]
        for (method, route), stats in routes:
            cells = list(stats.cells)
            cumulative, buckets = 0, []
            for bound, cell in zip(bounds, cells[:-1], strict=True):
                cumulative += int(cell)
                buckets.append((bound, cumulative))
            latency.add_metric([method, route], buckets, sum_value=cells[-1])
        yield latency

        counts = self._live_counts()
        queue = GaugeMetricFamily("reelq_queue_depth", "Tasks waiting for a render worker")
        running = GaugeMetricFamily("reelq_renders_running", "Tasks being rendered now")
        if counts is not None:
            queue.add_metric([], counts.get("queued", 0))
            running.add_metric([], counts.get("processing", 0))
        yield queue
        yield running
        if self.pool_of is not None:
            pools = GaugeMetricFamily(
                "reelq_queue_depth_by_pool",
                "Tasks waiting, by the pool of workers that serves them",
                labels=["pool"],
            )
            for pool, n in sorted(self._queued_by_pool().items()):
                pools.add_metric([pool], n)
            yield pools
        up = GaugeMetricFamily("reelq_database_up", "1 when the task database answered this scrape")
        up.add_metric([], 0 if counts is None else 1)
        yield up

    def _queued_by_pool(self) -> dict[str, int]:
        assert self.pool_of is not None
        try:
            by_model = self.store.queued_by_model()
        except Exception:
            return {}
        out: dict[str, int] = {}
        for model, n in by_model.items():
            pool = self.pool_of(model)
            out[pool] = out.get(pool, 0) + n
        return out

    def _live_counts(self) -> dict[str, int] | None:
        try:
            return self.store.count_live()
        except Exception:
            return None


def render_metrics(collector: ApiCollector) -> bytes:
    """The text exposition of every process's metrics plus this process's own (runs in a thread)."""
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:  # one process (an embedded app in tests, `reelq generate`): its own registry
        registry = CollectorRegistry()
        registry.register(_Forward(REGISTRY))
    registry.register(collector)
    registry.register(NODE)
    return generate_latest(registry)


class _Forward:
    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Any]:
        yield from self.registry.collect()
