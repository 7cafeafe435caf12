"""Run one claimed task end to end; shared by the embedded worker processes and the CLI.

claim (done by the caller) -> content policy -> inputs (SSRF-safe) -> Engine.render to a
temporary file (lease renewed and deadline watched by a heartbeat) -> the finish step shared with
the relay worker (worker/finish.py: probe the real file, move into place, conditional complete).
Every way out leaves the row terminal, or handed back for another try.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from reelq import metrics
from reelq.database import TaskRow
from reelq.database.errors import is_storage_full
from reelq.domain import CONTENT_POLICY_PREFIX, find_blocked_term
from reelq.engines.base import EngineBroken, RenderAborted, RenderCancelled, RenderError, RenderInputs
from reelq.fetch import FetchError, fetch_bytes
from reelq.images import ImageError, decode_image, is_data_uri, parse_data_uri
from reelq.logs import task_context
from reelq.storage.local import NO_SPACE_ERRNOS
from reelq.worker.context import Outcome, WorkerContext
from reelq.worker.finish import probe_video, settle_video, store_video
from reelq.worker.heartbeat import (
    Heartbeat,
    RenderDeadlineExceeded,
    deadline_error,
    discard_temp,
    render_deadline,
)

log = logging.getLogger("reelq.worker")

INPUT_FIELDS = ("first_image", "last_image")
FAULT_DRILL_EXIT_CODE = 86
NO_SPACE_RETRY_SECONDS = 5.0  # pause after handing a task back for lack of disk space
NO_SPACE_RELEASE_POLL_SECONDS = 0.25  # how often to retry recording that hand-back while the disk is full


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
    """Run a task this worker has claimed, and leave the row terminal or handed back.

    Counted in the metrics (metrics.py) and logged with the task's id on every line (logs.py).
    """
    engine = ctx.settings.engine_for(task.model)
    if task.attempts == 1:  # the wait of a retry would count the failed attempt's render too
        metrics.task_claimed(task.model, engine, time.time() - task.created_at)
    started = time.monotonic()
    metrics.render_started(task.model, engine)
    try:
        with task_context(task.id):
            outcome = _run_task(ctx, task, on_progress)
    finally:
        metrics.render_ended(task.model, engine)
    if outcome is Outcome.COMPLETED:
        metrics.task_finished(task.model, engine, True, time.monotonic() - started)
    elif outcome is Outcome.FAILED:
        # The reason is read back from the row (a failure is rare): the one place its message lives.
        row = ctx.store.get_task(task.id)
        reason = metrics.failure_reason(row.error if row is not None else None)
        metrics.task_finished(task.model, engine, False, reason=reason)
    return outcome


def _run_task(ctx: WorkerContext, task: TaskRow, on_progress: Callable[[int], None] | None) -> Outcome:
    settings = ctx.settings
    term = find_blocked_term(task.prompt, settings.blocked_terms)
    if term is not None:
        ctx.store.fail(task.id, f"{CONTENT_POLICY_PREFIX} prompt contains restricted content.", ctx.worker_id)
        return Outcome.FAILED

    crash_drill = _drill(settings.fault_drill_term, task.prompt)
    hang_drill = _drill(settings.fault_drill_hang_term, task.prompt)
    image_inputs = int(task.has_first_image) + int(task.has_last_image)
    heartbeat = Heartbeat(ctx, task.id, render_deadline(settings, task.spec, image_inputs))
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
        if heartbeat.cancelled.is_set():
            raise RenderCancelled("cancelled by its owner")
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
        video = store_video(settings, ctx.storage, task, temp, probe_video(temp))
    except RenderAborted:
        discard_temp(temp)
        if heartbeat.cancelled.is_set():
            # The row is already failed "Cancelled by user." (never charged); the worker moves on.
            log.info("task %s: cancelled by its owner, render stopped", task.id)
            return Outcome.CANCELLED
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
    except EngineBroken as exc:
        discard_temp(temp)
        if ctx.hard_stop is not None:
            log.critical(
                "task %s: %s; ending this worker process, a fresh one retries the task", task.id, exc
            )
            ctx.hard_stop()  # does not return in a worker process
        # No process of our own to end (a loop on a thread): the task must not wait on a broken engine.
        ctx.store.fail(task.id, f"Render failed: {exc}", ctx.worker_id)
        return Outcome.FAILED
    except (ImageError, FetchError, RenderError) as exc:
        discard_temp(temp)
        ctx.store.fail(
            task.id, str(exc) if not isinstance(exc, RenderError) else f"Render failed: {exc}", ctx.worker_id
        )
        return Outcome.FAILED
    except Exception as exc:
        discard_temp(temp)
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
        # The traceback is in the log, never in the answer: say where an operator finds it.
        ctx.store.fail(task.id, crash_error(task.id), ctx.worker_id)
        return Outcome.FAILED
    finally:
        heartbeat.stop()

    if settle_video(ctx.store, ctx.storage, task, ctx.worker_id, video):
        return Outcome.COMPLETED
    return Outcome.LOST


def crash_error(task_id: str) -> str:
    """A crashed render's error: what a client reads, and where whoever runs the server looks."""
    return f"Render failed: internal engine error (see the server log for task {task_id})."


def _hand_back_for_space(ctx: WorkerContext, task: TaskRow, heartbeat: Heartbeat) -> Outcome:
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
