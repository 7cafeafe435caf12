"""Local video storage: files under REELQ_HOME/videos, served through HMAC-signed URLs."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import hmac
import os
import shutil
import threading
from pathlib import Path

from reelq.storage.base import TempFiles

FILES_ROUTE = "/v1/files/{task_id}.mp4"
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


def file_path_for(task_id: str) -> str:
    return FILES_ROUTE.format(task_id=task_id)


class LocalStorage(TempFiles):
    """Videos are written under a temporary name and renamed into place, so a half file is never served."""

    def __init__(self, root: Path, secret: bytes) -> None:
        super().__init__(root)
        self._secret = secret

    # ---- files ------------------------------------------------------------------------------
    def commit(self, temp: Path, task_id: str, attempt: int) -> str:
        """Move a finished render into place; returns its storage key.

        The key carries the attempt so a late worker that lost its lease never replaces
        the file of the attempt that won (it deletes its own file instead).
        """
        key = f"{task_id}-{attempt}.mp4"
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

    # ---- signed URLs ------------------------------------------------------------------------
    def signature(self, task_id: str, expires: int) -> str:
        message = f"{file_path_for(task_id)}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def video_url(self, base_url: str, task_id: str, key: str | None, expires: int) -> str:
        return self.signed_url(base_url, task_id, expires)

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one storage object per process; the HMAC is per poll
    def signed_url(self, base_url: str, task_id: str, expires: int) -> str:
        signature = self.signature(task_id, expires)
        return f"{base_url}{file_path_for(task_id)}?expires={expires}&signature={signature}"

    def link_origin(self) -> str | None:
        return None  # `/v1/files` links on the API's own origin (or REELQ_PUBLIC_BASE_URL's)

    def verify(self, task_id: str, expires: int, signature: str) -> bool:
        # Compared as bytes: compare_digest refuses a str with non-ASCII characters (TypeError), and the
        # signature is whatever the client put in the query string. "replace" also covers lone surrogates.
        expected = self.signature(task_id, expires).encode("ascii")
        return hmac.compare_digest(expected, signature.encode("utf-8", "replace"))
