"""What every video storage offers (`Storage`), and the local temporary-render area they all share.

A render is always written to a local file first (encoders want a seekable file), under
`REELQ_HOME/videos/.tmp`; `commit` then makes it the task's video: a rename on local files,
an upload to S3. Callers (the worker, the sweeper, the API) hold a `Storage` built by
`reelq.storage.build_storage` and never know which one it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

TEMP_SUFFIX = ".part"


def video_key(task_id: str, attempt: int) -> str:
    """An attempt's video's key, in every storage: the attempt in it, so a late worker that lost its
    lease never replaces the file of the attempt that won (it deletes its own file instead)."""
    return f"{task_id}-{attempt}.mp4"


def _safe_name(worker: str) -> str:
    return worker.replace("/", "_").replace(":", "_")


class Storage(Protocol):
    """The video store the worker, the sweeper, the API and the CLI use."""

    tmp_dir: Path

    def temp_path(self, task_id: str, worker: str) -> Path:
        """Where a worker renders (a local file, whatever the storage)."""
        ...

    def commit(self, temp: Path, task_id: str, attempt: int) -> str:
        """Make a finished render the attempt's video (the temp file is gone after); its storage key."""
        ...

    def delete(self, key: str) -> None:
        """Remove a stored video (no error when it is already gone)."""
        ...

    @property
    def serves_files(self) -> bool:
        """True where videos are local files this API serves itself (`path`, behind the `/v1/files` links
        it signs: service/links.py); False where they are remote objects handed out as the store's own
        presigned links (`presigned_url`)."""
        ...

    def presigned_url(self, key: str, expires: int) -> str:
        """The remote store's own link to a video, valid until `expires` (Unix time); only where
        `serves_files` is False."""
        ...

    def link_origin(self) -> str | None:
        """The origin (`scheme://host[:port]`) of `presigned_url`'s links where they are not the API's own
        (the web page's Content-Security-Policy must allow it as a media source), else None."""
        ...

    def path(self, key: str) -> Path:
        """The local file of a stored video; only where `serves_files` is True."""
        ...

    def download(self, key: str, dest: Path) -> None:
        """Copy a stored video to a local file (`reelq generate`)."""
        ...

    def problem(self) -> str | None:
        """Why videos cannot be stored now (readiness), or None."""
        ...

    def remove_temp_files(self, worker_marker: str | None = None, older_than: float | None = None) -> int: ...

    def remove_dead_workers_temp_files(self, host: str, is_alive: Callable[[int], bool]) -> int: ...


class TempFiles:
    """The temporary renders under `<root>/.tmp`, named after their worker so a dead one's can be found."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / ".tmp"

    def temp_path(self, task_id: str, worker: str) -> Path:
        """Where a worker renders; the worker id in the name lets a supervisor clean up after a dead child.

        The name is `<task id>.<host>_<pid>_<worker name>.part` (task ids have no dots).
        """
        # Made per render, not once at start: a volume that comes back must not need a restart,
        # and one that is broken must fail the task, not crash-loop the worker.
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        return self.tmp_dir / f"{task_id}.{_safe_name(worker)}{TEMP_SUFFIX}"

    def remove_temp_files(self, worker_marker: str | None = None, older_than: float | None = None) -> int:
        """Delete temporary renders of one (dead) worker, or those older than `older_than` seconds."""
        removed = 0
        now = time.time()
        for entry in self.tmp_dir.glob(f"*{TEMP_SUFFIX}"):
            if worker_marker is not None and worker_marker not in entry.name:
                continue
            try:
                if older_than is not None and now - entry.stat().st_mtime < older_than:
                    continue
                entry.unlink()
                removed += 1
            except FileNotFoundError:
                continue
        return removed

    def remove_dead_workers_temp_files(self, host: str, is_alive: Callable[[int], bool]) -> int:
        """Delete the temporary renders of this host's workers whose process is gone.

        For start-up, after a kill of everything: the supervisor that would have cleaned up after them
        died too. Files of other hosts (a shared volume) are left to the age-based sweep, as are names
        this code did not write.
        """
        prefix = _safe_name(host) + "_"
        removed = 0
        for entry in self.tmp_dir.glob(f"*{TEMP_SUFFIX}"):
            _task, _, owner = entry.name.removesuffix(TEMP_SUFFIX).partition(".")
            pid = owner.removeprefix(prefix).partition("_")[0] if owner.startswith(prefix) else ""
            if not pid.isdigit() or is_alive(int(pid)):
                continue
            try:
                entry.unlink()
                removed += 1
            except FileNotFoundError:
                continue
        return removed
