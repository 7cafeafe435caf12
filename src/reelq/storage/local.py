"""Local video storage: files under REELQ_HOME/videos, served by the API itself (`/v1/files` links signed
by service/links.py)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
from pathlib import Path

from reelq.storage.base import TempFiles, video_key

# Free space below which a filesystem counts as full for readiness: a render or a few thousand task rows
# need more than this, and an operator needs the warning before the last byte goes.
READY_RESERVE_BYTES = 8 * 1024 * 1024
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_PROBE_BYTES = 4096


def room_problem(directory: Path, what: str, reserve: int = READY_RESERVE_BYTES) -> str | None:
    """Why `directory`'s filesystem cannot take `what` now (full, or failing), or None.

    Free space as an unprivileged writer sees it (statvfs f_bavail: root may still write into the
    blocks a filesystem reserves, the service should not count on them), then a small real write:
    it also catches what statvfs does not show (no inodes left, a quota, a read-only remount).
    """
    try:
        stats = os.statvfs(directory)
    except OSError as exc:
        return f"storage for {what} unavailable ({exc.strerror or type(exc).__name__})"
    free = stats.f_bavail * stats.f_frsize
    if free < reserve:
        return f"storage for {what} is full ({free // 1024} KiB free, {reserve // 1024} KiB needed)"
    probe = directory / f".ready-probe-{os.getpid()}-{threading.get_ident()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * _PROBE_BYTES)
    except OSError as exc:
        if exc.errno in NO_SPACE_ERRNOS:
            return f"storage for {what} is full ({exc.strerror})"
        return f"storage for {what} unavailable ({exc.strerror or type(exc).__name__})"
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return None


class LocalStorage(TempFiles):
    """Videos are written under a temporary name and renamed into place, so a half file is never served."""

    @property
    def serves_files(self) -> bool:
        return True

    # ---- files ------------------------------------------------------------------------------
    def commit(self, temp: Path, task_id: str, attempt: int) -> str:
        """Move a finished render into place; returns its storage key (`video_key`)."""
        key = video_key(task_id, attempt)
        with open(temp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temp, self.root / key)
        return key

    def path(self, key: str) -> Path:
        return self.root / key

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / key).unlink()

    def download(self, key: str, dest: Path) -> None:
        shutil.copyfile(self.path(key), dest)

    def problem(self) -> str | None:
        """A missing or full videos volume (a full disk fails every render: not ready)."""
        if not self.tmp_dir.is_dir():
            return "storage unavailable"
        return room_problem(self.tmp_dir, "videos")

    # ---- links ------------------------------------------------------------------------------
    def presigned_url(self, key: str, expires: int) -> str:
        raise TypeError("local videos are served by the API: sign a /v1/files link (service/links.py)")

    def link_origin(self) -> str | None:
        return None  # `/v1/files` links on the API's own origin (or REELQ_PUBLIC_BASE_URL's)
