"""The supervisor of the embedded render workers, and the sweeper.

`reelq serve` = uvicorn (API) in the main process + `Supervisor` threads; each render worker is
a child process (`python -m reelq.worker.process`) in the same process group, so a kill of the
group takes everything down and the leases bring the work back on restart. A child reads its
settings from stdin (`Settings.to_json`), never from the environment: it runs with what the
supervisor validated, and the signing secret stays out of `ps`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from reelq import metrics
from reelq.config import Settings
from reelq.database import TaskStore, ensure_schema, make_engine
from reelq.dispatch.children import PARENT_ENV, loaded_marker, worker_marker
from reelq.dispatch.doorbell import ring
from reelq.engines import relayed_models
from reelq.storage import build_storage

log = logging.getLogger("reelq.dispatch")

RESTART_BACKOFF_MAX = 10.0
QUICK_DEATH_SECONDS = 5.0  # dying younger backs off; until a restart outlives it, not ready
MONITOR_INTERVAL = 0.2
TEMP_FILE_MAX_AGE_FACTOR = 4  # x lease: a temp file this old belongs to no live render


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (a reused pid reads as alive: kept, not lost)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """A killed worker whose new parent never reaps it (PID 1 in some containers) still has a pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state follows the command name, which is in parentheses and may itself hold ") ".
    state_at = stat.rfind(")") + 2
    return stat[state_at : state_at + 1] == "Z"


RENDER_WORKER_MODULE = "reelq.worker.process"
RELAY_WORKER_MODULE = "reelq.worker.relay"


@dataclass
class _Child:
    name: str
    module: str = RENDER_WORKER_MODULE
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    next_start: float = 0.0
    replaced: bool = False  # a process of this slot died: its replacement must prove itself (readiness)


# Engines that load weights when a worker starts (minutes for a large checkpoint): on a node serving
# one, a render worker counts as ready only once it says its models are loaded.
LOADING_ENGINES = frozenset({"diffusers"})


def _kind(child: _Child) -> str:
    return "relay" if child.module == RELAY_WORKER_MODULE else "render"


class Supervisor:
    """Starts N worker processes, restarts the ones that die, and sweeps the store."""

    def __init__(self, settings: Settings, workers: int, gpus: list[str] | None = None) -> None:
        self.settings = settings
        self.gpus = gpus or []  # worker i renders on gpus[i % len(gpus)]: one GPU ("0") or a group ("0,1")
        engine = make_engine(settings.sqlalchemy_url)
        ensure_schema(engine)
        self.store = TaskStore(engine)
        self.storage = build_storage(settings)
        self.children = [_Child(name=f"w{i}") for i in range(workers)]
        # Relayed models wait on an upstream: one asynchronous relay worker holds them all, beside
        # (never instead of) the render workers, whatever --workers says.
        if relayed_models(settings):
            from reelq.config import ConfigError
            from reelq.engines.relay.clients import check_upstream_keys

            try:  # here, not when the models file is read: `reelq keys create` needs no upstream secret
                check_upstream_keys(settings)
            except ValueError as exc:
                raise ConfigError(f"invalid configuration: REELQ_MODELS: {exc}") from None
            self.children.append(_Child(name="relay", module=RELAY_WORKER_MODULE))
        # With a broker the children are Celery render workers (worker/process.py decides from the
        # settings) and the sweeper re-publishes rows left queued instead of ringing doorbells.
        self.reconciler = None
        if settings.broker_url:
            from reelq.dispatch.broker import Publisher, Reconciler

            publisher = Publisher(settings, self.store.models_of)
            self.reconciler = Reconciler(publisher, settings.queued_redispatch_seconds)
        self._settings_json = settings.to_json().encode()
        self.awaits_models = any(entry.engine in LOADING_ENGINES for entry in settings.catalog.values())
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._restarts: dict[str, int] = {}  # worker processes that died, by kind (metrics.NodeCollector)

    def process_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """Live worker processes and restarts, by kind: `reelq_worker_processes` and `_restarts_total`."""
        alive = {"render": 0}  # reported even with none configured: an alert can read "no render workers"
        for child in self.children:
            proc = child.process
            kind = _kind(child)
            alive[kind] = alive.get(kind, 0) + int(proc is not None and proc.poll() is None)
        return alive, dict(self._restarts)

    def worker_problem(self) -> str | None:
        """Readiness of the worker processes: why no process of a kind this node runs can take work, or None.

        A slot's first process counts at once; a replacement only once it has outlived the quick-death
        window: a crash-looping worker is alive for a moment between its restarts, and that moment must
        not read as ready. Read from a probe's thread; the monitor thread owns the children.
        """
        now = time.monotonic()
        configured: dict[str, int] = {}
        steady: dict[str, int] = {}
        for child in self.children:
            kind = _kind(child)
            configured[kind] = configured.get(kind, 0) + 1
            proc = child.process
            if (
                proc is not None
                and proc.poll() is None
                and (not child.replaced or now - child.started >= QUICK_DEATH_SECONDS)
            ):
                steady[kind] = steady.get(kind, 0) + 1
        for kind, n in configured.items():
            if not steady.get(kind):
                return (
                    f"none of this node's {n} {kind} worker process{'es' if n > 1 else ''} is running "
                    "(exited at start or crashing; see the node's log)"
                )
        if self.awaits_models:
            return self._loading_problem()
        return None

    def _loading_problem(self) -> str | None:
        """Why a node whose workers load weights is not ready yet: live render workers still loading."""
        processes = [child.process for child in self.children if child.module == RENDER_WORKER_MODULE]
        live = [proc.pid for proc in processes if proc is not None and proc.poll() is None]
        loaded = sum(loaded_marker(self.settings.run_dir, pid).exists() for pid in live)
        if loaded < len(live):
            return f"render workers are loading their models ({loaded} of {len(live)} loaded)"
        return None

    @property
    def draining(self) -> bool:
        """`stop` was called: the workers finish or hand back their renders and take no more."""
        return self._stopping.is_set()

    def healthy(self) -> bool:
        """Liveness: the monitor thread, which restarts dead workers, runs (or the node is stopping)."""
        return self._stopping.is_set() or all(thread.is_alive() for thread in self._threads)

    def start(self) -> None:
        # After a kill of the whole group, nobody saw those workers die: their half-written renders go
        # now rather than after the hour the age-based sweep waits (no worker of ours runs yet).
        try:
            removed = self.storage.remove_dead_workers_temp_files(socket.gethostname(), _pid_alive)
            if removed:
                log.info("removed %d temporary file(s) of dead render workers", removed)
        except OSError:
            log.warning("could not clean up temporary files of dead workers", exc_info=True)
        for child in self.children:
            self._spawn(child)
        metrics.NODE.add(self)
        for target in (self._monitor, self._sweeper):
            thread = threading.Thread(target=target, daemon=True, name=f"reelq-{target.__name__.strip('_')}")
            thread.start()
            self._threads.append(thread)

    def _spawn(self, child: _Child) -> None:
        # One BLAS thread: an idle OpenBLAS pool spins and steals the core x264 needs.
        env = dict(os.environ)
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        env[PARENT_ENV] = str(os.getpid())  # the child ends when this process does (worker/lifeline.py)
        if self.gpus and child.module == RENDER_WORKER_MODULE:
            # One GPU (or one group) per worker: in the worker the model loads on `cuda`, which is this GPU.
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[self.children.index(child) % len(self.gpus)]
        # Before the process is visible: a probe must never pair a new process with the last one's start.
        child.started = time.monotonic()
        child.process = subprocess.Popen(
            [sys.executable, "-m", child.module, "--name", child.name],
            env=env,
            stdin=subprocess.PIPE,
        )
        assert child.process.stdin is not None
        # The child reads this first thing; one that died before reading is the monitor's to restart.
        with contextlib.suppress(BrokenPipeError), child.process.stdin:
            child.process.stdin.write(self._settings_json)
        log.info("started %s worker %s (pid %d)", _kind(child), child.name, child.process.pid)

    def _monitor(self) -> None:
        while not self._stopping.wait(MONITOR_INTERVAL):
            for child in self.children:
                proc = child.process
                if proc is not None and proc.poll() is not None and not self._stopping.is_set():
                    log.warning(
                        "%s worker %s (pid %d) exited with %s",
                        _kind(child),
                        child.name,
                        proc.pid,
                        proc.returncode,
                    )
                    self._recover(proc.pid)
                    loaded_marker(self.settings.run_dir, proc.pid).unlink(missing_ok=True)
                    kind = _kind(child)
                    self._restarts[kind] = self._restarts.get(kind, 0) + 1
                    # Quick deaths in a row back off, so a broken install does not spin.
                    quick = time.monotonic() - child.started < QUICK_DEATH_SECONDS
                    child.failures = child.failures + 1 if quick else 0
                    child.next_start = time.monotonic() + min(RESTART_BACKOFF_MAX, 0.2 * 2**child.failures)
                    child.process = None
                    child.replaced = True
                if (
                    child.process is None
                    and time.monotonic() >= child.next_start
                    and not self._stopping.is_set()
                ):
                    try:
                        self._spawn(child)
                    except OSError:
                        log.exception("could not start render worker %s", child.name)
                        child.next_start = time.monotonic() + RESTART_BACKOFF_MAX

    def _recover(self, pid: int) -> None:
        """A child died: its tasks need not wait for the lease to lapse, and its temp files go."""
        metrics.process_dead(pid)  # its renders-in-flight gauge stops counting; its counters stay
        marker = worker_marker(pid)
        try:
            expired = self.store.expire_leases_of(marker)
            self.storage.remove_temp_files(worker_marker=marker.replace(":", "_"))
            if expired:
                self.sweep_once()
        except Exception:
            log.exception("recovery after worker %d died failed; the sweeper will retry", pid)

    def sweep_once(self) -> None:
        result = self.store.sweep(
            self.settings.max_attempts, self.settings.queued_redispatch_seconds, self.settings.off_peak_window
        )
        for task_id in result.failed:
            log.warning("task %s failed after %d attempts", task_id, self.settings.max_attempts)
            row = self.store.get_task(task_id)
            if row is not None:
                engine = self.settings.engine_for(row.model)
                metrics.task_finished(row.model, engine, False, reason=metrics.failure_reason(row.error))
        if self.reconciler is not None:
            self.reconciler.run(result.requeued, result.stale_queued)
        elif result.requeued or result.stale_queued:
            ring(self.settings.run_dir)
        for task_id, key in self.store.expired_videos(self.settings.video_url_ttl):
            self.storage.delete(key)
            self.store.mark_video_deleted(task_id)
        self.store.purge_finished(self.settings.task_retention, remove_video=self.storage.delete)
        self.storage.remove_temp_files(
            older_than=max(3600.0, self.settings.lease_seconds * TEMP_FILE_MAX_AGE_FACTOR)
        )

    def _sweeper(self) -> None:
        while not self._stopping.wait(self.settings.sweep_interval):
            try:
                self.sweep_once()
            except Exception:
                log.exception("sweep failed; retrying next interval")

    def stop(self, timeout: float | None = None) -> None:
        """Drain: workers stop claiming, finish or hand back their render, then exit."""
        self._stopping.set()
        deadline = time.monotonic() + (timeout if timeout is not None else self.settings.drain_seconds + 10)
        for child in self.children:
            if child.process is not None and child.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGTERM)
        for child in self.children:
            if child.process is None:
                continue
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("render worker %s did not drain in time; killing it", child.name)
                child.process.kill()
                child.process.wait()
                self._recover(child.process.pid)
                continue
            metrics.process_dead(child.process.pid)
        for child in self.children:
            if child.process is not None:
                loaded_marker(self.settings.run_dir, child.process.pid).unlink(missing_ok=True)
        metrics.NODE.remove(self)
        for thread in self._threads:
            thread.join(timeout=2)
        self.store.engine.dispose()
