"""Run one claimed task end to end; shared by the embedded worker processes and the CLI.

claim (done by the caller) -> content policy -> inputs (SSRF-safe) -> Engine.render to a
temporary file (lease renewed and deadline watched by a heartbeat) -> probe the real file -> move
into place -> conditional finish. Every way out leaves the row terminal, or handed back for another try.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from reelq.config import Settings
from reelq.domain import CONTENT_POLICY_PREFIX, VideoSpec, find_blocked_term, total_tokens
from reelq.engines.base import Engine, RenderAborted, RenderError, RenderInputs
from reelq.fetch import FetchError, fetch_bytes
from reelq.images import ImageError, decode_image, is_data_uri, parse_data_uri
from reelq.media import probe
from reelq.storage import LocalStorage
from reelq.storage.local import NO_SPACE_ERRNOS
from reelq.store import TaskRow, TaskStore
from reelq.store.errors import is_storage_full

log = logging.getLogger("reelq.worker")

INPUT_FIELDS = ("first_image", "last_image")
FAULT_DRILL_EXIT_CODE = 86
NO_SPACE_RETRY_SECONDS = 5.0  # pause after handing a task back for lack of disk space
NO_SPACE_RELEASE_POLL_SECONDS = 0.25  # how often to retry recording that hand-back while the disk is full
RENDER_DEADLINE_EXIT_CODE = 87
_PIXELS_720P = 1280 * 720  # the unit of render work: one second of 16:9 720p video
_HARD_STOP_FAIL_TRIES = 3


class Outcome(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    RELEASED = "released"  # handed back (shutdown, or no disk space), it will run again
    LOST = "lost"  # the lease lapsed and someone else owns the task now


def make_worker_id(name: str = "") -> str:
    """host:pid:name — the supervisor finds a dead child's tasks by the `host:pid:` prefix."""
    return f"{socket.gethostname()}:{os.getpid()}:{name or 'w'}"


def worker_marker(pid: int, host: str | None = None) -> str:
    """The prefix of every worker id (and temp file) of one process."""
    return f"{host or socket.gethostname()}:{pid}:"


def render_deadline(settings: Settings, spec: VideoSpec, image_inputs: int = 0) -> int:
    """Seconds an attempt may take, from the claim: base + factor x work + the synthetic delay, plus the
    longest each input image's fetch may take. Whole seconds, rounded up, as the error message says."""
    work = spec.duration * spec.width * spec.height / _PIXELS_720P
    seconds = (
        settings.render_deadline_base
        + settings.render_deadline_factor * work
        + settings.synthetic_delay
        + image_inputs * settings.fetch_deadline
    )
    return math.ceil(seconds)


def deadline_error(seconds: int) -> str:
    return f"Render exceeded its deadline of {seconds} s."


class RenderDeadlineExceeded(RenderAborted):
    """Raised through the progress callback once a render is past its deadline."""


def end_worker_process() -> None:
    """The hard stop of a render worker process: a render that ignores its deadline cannot be stopped
    from another thread, so the process ends and the supervisor starts a fresh one (and removes the
    dead process's temporary files)."""
    os._exit(RENDER_DEADLINE_EXIT_CODE)


@dataclass
class WorkerContext:
    settings: Settings
    store: TaskStore
    storage: LocalStorage
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


class _Heartbeat(threading.Thread):
    """Renews the lease (with the latest progress) while the render runs, and watches its deadline.

    The render itself stops at the deadline when it next reports progress. One that never does would
    keep its lease alive for ever; `grace` seconds later the watchdog fails the task and calls the
    context's hard stop.
    """

    def __init__(self, ctx: WorkerContext, task_id: str, deadline_s: int) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{task_id}")
        self.ctx = ctx
        self.task_id = task_id
        self.progress = 0
        self.lost = threading.Event()
        self.deadline_s = deadline_s
        self.deadline_at = time.monotonic() + deadline_s
        self.temp: Path | None = None  # the render's temporary file, removed by a hard stop
        self._stop_event = threading.Event()
        # Renew well before the lease lapses, and often enough that progress reads feel live.
        self.interval = min(ctx.settings.lease_seconds / 3, 1.0)

    def overdue(self) -> bool:
        return time.monotonic() >= self.deadline_at

    def run(self) -> None:
        hard_stop_at = self.deadline_at + self.ctx.settings.render_deadline_grace
        while not self._stop_event.wait(self.interval):
            if time.monotonic() >= hard_stop_at:
                self._hard_stop()
                return
            if self.lost.is_set():
                continue  # not ours to renew any more; still watched, so a stuck render cannot stay
            try:
                if not self.ctx.store.renew(
                    self.task_id, self.ctx.worker_id, self.ctx.settings.lease_seconds, self.progress
                ):
                    self.lost.set()
            except Exception:  # a busy database must not kill the heartbeat; the lease has slack
                log.warning("lease renewal failed for %s", self.task_id, exc_info=True)

    def _hard_stop(self) -> None:
        ctx = self.ctx
        log.error(
            "task %s: render still running %g s after its deadline of %d s; %s",
            self.task_id,
            ctx.settings.render_deadline_grace,
            self.deadline_s,
            "ending this worker process" if ctx.hard_stop else "failing the task, the render runs on",
        )
        # Failed before the process ends, so the supervisor's recovery finds it terminal, not retryable.
        for attempt in range(_HARD_STOP_FAIL_TRIES):
            try:
                if not self.lost.is_set():
                    ctx.store.fail(self.task_id, deadline_error(self.deadline_s), ctx.worker_id)
                break
            except Exception:
                log.warning("task %s: could not record the deadline failure", self.task_id, exc_info=True)
                if attempt + 1 < _HARD_STOP_FAIL_TRIES:
                    time.sleep(self.interval)
        _discard(self.temp)
        if ctx.hard_stop is not None:
            ctx.hard_stop()

    def stop(self) -> None:
        self._stop_event.set()


def load_inputs(ctx: WorkerContext, task: TaskRow) -> RenderInputs:
    """Decode data URIs and fetch URLs; raises ImageError/FetchError naming the field."""
    stored = ctx.store.get_inputs(task.id) if (task.has_first_image or task.has_last_image) else {}
    images: dict[str, object] = {}
    digests: list[str] = []
    for name in INPUT_FIELDS:
        value = stored.get(name)
        if value is None:
            continue
        if is_data_uri(value):
            data = parse_data_uri(value, name)
        else:
            data = fetch_bytes(
                value,
                field=name,
                allow_private=ctx.settings.allow_private_urls,
                timeout=ctx.settings.fetch_timeout,
                total_deadline=ctx.settings.fetch_deadline,
            )
        image, digest = decode_image(data, name)
        images[name] = image
        digests.append(f"{name}:{digest}")
    return RenderInputs(
        first_image=images.get("first_image"),  # type: ignore[arg-type]
        last_image=images.get("last_image"),  # type: ignore[arg-type]
        digests=tuple(digests),
    )


def run_task(ctx: WorkerContext, task: TaskRow, on_progress: Callable[[int], None] | None = None) -> Outcome:
    """Run a task this worker has claimed, and leave the row terminal or handed back."""
    settings = ctx.settings
    term = find_blocked_term(task.prompt, settings.blocked_terms)
    if term is not None:
        ctx.store.fail(task.id, f"{CONTENT_POLICY_PREFIX} prompt contains restricted content.", ctx.worker_id)
        return Outcome.FAILED

    crash_drill = _drill(settings.fault_drill_term, task.prompt)
    hang_drill = _drill(settings.fault_drill_hang_term, task.prompt)
    image_inputs = int(task.has_first_image) + int(task.has_last_image)
    heartbeat = _Heartbeat(ctx, task.id, render_deadline(settings, task.spec, image_inputs))
    heartbeat.start()
    temp: Path | None = None

    def progress(fraction: float) -> None:
        # Never report 100 before the row is completed: 100 means "done" to clients.
        heartbeat.progress = max(heartbeat.progress, min(99, int(fraction * 100)))
        if on_progress is not None:
            on_progress(heartbeat.progress)
        if crash_drill and fraction >= 0.1:
            log.warning("task %s: fault drill, this worker process dies now", task.id)
            os._exit(FAULT_DRILL_EXIT_CODE)
        if hang_drill and fraction >= 0.1:
            log.warning("task %s: fault drill, this render hangs without reporting progress", task.id)
            threading.Event().wait()
        if heartbeat.lost.is_set():
            raise RenderAborted("lease lost")
        if heartbeat.overdue():
            raise RenderDeadlineExceeded(deadline_error(heartbeat.deadline_s))
        if ctx.drain_expired():
            raise RenderAborted("draining")

    try:
        inputs = load_inputs(ctx, task)
        engine = ctx.engines[task.model]
        temp = heartbeat.temp = ctx.storage.temp_path(task.id, ctx.worker_id)
        engine.render(task.spec, inputs, temp, progress)
        info = probe(temp)
        if info.frame_count <= 0:
            raise RenderError("the engine produced an empty video")
        tokens = total_tokens(
            task.model, info.duration, task.resolution, settings.model_rates, settings.resolution_factors
        )
        key = ctx.storage.commit(temp, task.id, task.attempts)
    except RenderAborted:
        _discard(temp)
        if heartbeat.lost.is_set():
            log.warning("task %s: lease lost, abandoning this attempt", task.id)
            return Outcome.LOST
        if heartbeat.overdue():
            # Not handed back for another try: the same request would run away again.
            log.warning("task %s: render exceeded its deadline of %d s", task.id, heartbeat.deadline_s)
            ctx.store.fail(task.id, deadline_error(heartbeat.deadline_s), ctx.worker_id)
            return Outcome.FAILED
        ctx.store.release(task.id, ctx.worker_id)
        log.info("task %s: handed back while draining", task.id)
        return Outcome.RELEASED
    except (ImageError, FetchError, RenderError) as exc:
        _discard(temp)
        ctx.store.fail(
            task.id, str(exc) if not isinstance(exc, RenderError) else f"Render failed: {exc}", ctx.worker_id
        )
        return Outcome.FAILED
    except Exception as exc:
        _discard(temp)
        # The encoder reports a write error from its own thread, wrapped (`raise ... from`): the cause
        # says what really happened.
        os_error = _os_error_in(exc)
        if os_error is not None and os_error.errno in NO_SPACE_ERRNOS:
            # Nothing wrong with the task: hand it back, attempt refunded, to run once there is room.
            return _hand_back_for_space(ctx, task, heartbeat)
        if os_error is not None:
            log.exception("task %s: storage error", task.id)
            reason = os_error.strerror or os_error
            ctx.store.fail(task.id, f"Storage error: could not write the video ({reason}).", ctx.worker_id)
            return Outcome.FAILED
        log.exception("task %s: render crashed", task.id)
        ctx.store.fail(task.id, "Render failed: internal engine error.", ctx.worker_id)
        return Outcome.FAILED
    finally:
        heartbeat.stop()

    if ctx.store.complete(task.id, ctx.worker_id, key, info.duration, tokens):
        return Outcome.COMPLETED
    # Someone else owns the task now: this attempt's file must never be served.
    ctx.storage.delete(key)
    return Outcome.LOST


def _hand_back_for_space(ctx: WorkerContext, task: TaskRow, heartbeat: _Heartbeat) -> Outcome:
    """Release a task whose video found no room on disk, once the database (often on the same disk)
    can record it; the heartbeat keeps the lease meanwhile, so no sweep requeues it at an attempt's cost."""
    log.warning("task %s: no space left to write the video; handing it back to retry later", task.id)
    while True:
        try:
            released = ctx.store.release(task.id, ctx.worker_id)
            break
        except Exception as exc:
            if not is_storage_full(exc):
                raise
            if heartbeat.lost.is_set() or ctx.drain_expired():
                return Outcome.LOST  # the lease brings it back
            time.sleep(NO_SPACE_RELEASE_POLL_SECONDS)
    heartbeat.stop()
    if not released:
        return Outcome.LOST
    # Claiming it again at once would only fill the disk again: pause (a drain cuts the pause short).
    ctx.draining.wait(NO_SPACE_RETRY_SECONDS)
    return Outcome.RELEASED


def _os_error_in(exc: BaseException) -> OSError | None:
    """`exc` if it is an OSError, else the first OSError among its explicit causes (`raise ... from`)."""
    seen: BaseException | None = exc
    for _ in range(8):  # causes form short chains; the bound keeps a cycle harmless
        if seen is None or isinstance(seen, OSError):
            return seen
        seen = seen.__cause__
    return None


def _drill(term: str | None, prompt: str) -> bool:
    if not term:
        return False
    return term.lower() in prompt.lower()


def _discard(path: Path | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink()
