"""The heartbeat beside every render: it renews the lease with the latest progress and watches the deadline.

Renewal is also how a render learns that its owner cancelled it: the cancel fails the row
(database/lifecycle.py `cancel`), the next renewal matches nothing, and `cancelled` is set for the
progress callback to raise `RenderCancelled` (within one renewal interval, at most a second).

A render's deadline is proportional to its work (`render_deadline`). The render stops at the deadline
when it next reports progress (`RenderDeadlineExceeded` through the progress callback); one that never
reports again would keep its lease alive for ever, so the heartbeat itself fails the task after a grace
period and calls the context's hard stop (a worker process ends; the supervisor starts a fresh one).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from reelq.config import Settings
from reelq.domain import CANCELLED_ERROR, Status, VideoSpec
from reelq.engines.base import RenderAborted

if TYPE_CHECKING:
    from reelq.worker.context import WorkerContext

log = logging.getLogger("reelq.worker")

_PIXELS_720P = 1280 * 720  # the unit of render work: one second of 16:9 720p video
_HARD_STOP_FAIL_TRIES = 3


def render_deadline(settings: Settings, spec: VideoSpec, image_inputs: int = 0) -> int:
    """Seconds an attempt may take, from the claim: base + factor x work + the synthetic delay, plus the
    longest each input image's fetch may take. Whole seconds, rounded up, as the error message says."""
    work = spec.duration * spec.width * spec.height / _PIXELS_720P
    entry = settings.catalog.get(spec.model)
    factor = entry and entry.render_deadline_factor
    seconds = (
        settings.render_deadline_base
        + (factor or settings.render_deadline_factor) * work
        + settings.synthetic_delay
        + image_inputs * settings.fetch_deadline
    )
    return math.ceil(seconds)


def deadline_error(seconds: int) -> str:
    return f"Render exceeded its deadline of {seconds} s."


class RenderDeadlineExceeded(RenderAborted):
    """Raised through the progress callback once a render is past its deadline."""


class Heartbeat(threading.Thread):
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
        # Set with `lost` when the reason the row is no longer ours is its owner's cancel (or delete).
        self.cancelled = threading.Event()
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
                    if self._was_cancelled():
                        self.cancelled.set()
                    self.lost.set()
            except Exception:  # a busy database must not kill the heartbeat; the lease has slack
                log.warning("lease renewal failed for %s", self.task_id, exc_info=True)

    def _was_cancelled(self) -> bool:
        """Why the renewal matched nothing: the owner's cancel (the row failed as cancelled, or deleted)
        rather than a lapsed lease taken over by another worker. One read, only once per render."""
        row = self.ctx.store.get_task(self.task_id)
        return row is None or (row.status == Status.FAILED and row.error == CANCELLED_ERROR)

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
        discard_temp(self.temp)
        if ctx.hard_stop is not None:
            ctx.hard_stop()

    def stop(self) -> None:
        self._stop_event.set()


def discard_temp(path: Path | None) -> None:
    """Remove a render's temporary file, if any (never raises: it runs on every way out)."""
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink()
