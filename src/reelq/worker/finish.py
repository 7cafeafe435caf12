"""The render-finish step, one for every worker: a render worker's own render (worker/run.py) and a
relayed task's re-hosted download (worker/relay.py) end the same way.

probe (frames, duration) -> price -> commit into storage under the attempt's key -> conditional
complete, which charges the key and queues the webhook in the same transaction
(database/lifecycle.py `complete`) -> on a lost lease, the attempt's file is deleted; on a complete,
the files earlier attempts may have left (a worker killed between its commit and its complete).

The steps are two calls, `store_video` then `settle_video`, because a render worker commits under its
heartbeat (a long upload keeps the lease, a full disk hands the task back) and completes after it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from reelq.config import Settings
from reelq.database import TaskRow, TaskStore
from reelq.engines.base import RenderError
from reelq.media import Probe, probe
from reelq.storage import Storage, video_key

log = logging.getLogger("reelq.worker")


class EmptyVideo(RenderError):
    """The finished file holds no frames: nothing to deliver."""


@dataclass(frozen=True)
class StoredVideo:
    """An attempt's committed video, priced, waiting for its conditional complete."""

    key: str
    duration: float
    tokens: int


def probe_video(temp: Path) -> Probe:
    """The finished file's probe; `EmptyVideo` when it has no frames (an unreadable one raises as `probe`)."""
    info = probe(temp)
    if info.frame_count <= 0 or info.duration <= 0:
        raise EmptyVideo("the engine produced an empty video")
    return info


def store_video(settings: Settings, storage: Storage, task: TaskRow, temp: Path, info: Probe) -> StoredVideo:
    """Price the video by its real duration and commit it under the attempt's key (the temp file is gone)."""
    tokens = settings.price(task.model, info.duration, task.resolution, task.off_peak)
    key = storage.commit(temp, task.id, task.attempts)
    return StoredVideo(key, info.duration, tokens)


def settle_video(
    store: TaskStore, storage: Storage, task: TaskRow, worker_id: str, video: StoredVideo
) -> bool:
    """Complete the task if this worker still owns it; False (and the file deleted) when it does not."""
    if store.complete(task.id, worker_id, video.key, video.duration, video.tokens):
        _remove_earlier_attempts(storage, task)
        return True
    # Someone else owns the task now: this attempt's file must never be served.
    storage.delete(video.key)
    return False


def _remove_earlier_attempts(storage: Storage, task: TaskRow) -> None:
    """A worker killed after committing its attempt's file and before completing left that file,
    which nothing serves or expires: the attempt that completes removes every earlier one's (best
    effort: the task is complete whatever happens here)."""
    for attempt in range(1, task.attempts):
        try:
            storage.delete(video_key(task.id, attempt))
        except Exception as exc:
            log.warning("task %s: attempt %d's file not removed (%s)", task.id, attempt, exc)
