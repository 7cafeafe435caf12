"""Local video storage: files under REELQ_HOME/videos, served through HMAC-signed URLs."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import hmac
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

FILES_ROUTE = "/v1/files/{task_id}.mp4"
TEMP_SUFFIX = ".part"
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


def _safe_name(worker: str) -> str:
    return worker.replace("/", "_").replace(":", "_")


def file_path_for(task_id: str) -> str:
    return FILES_ROUTE.format(task_id=task_id)


class LocalStorage:
    """Videos are written under a temporary name and renamed into place, so a half file is never served."""

    def __init__(self, root: Path, secret: bytes) -> None:
        self.root = root
        self.tmp_dir = root / ".tmp"
        self._secret = secret

    # ---- files ------------------------------------------------------------------------------
    def temp_path(self, task_id: str, worker: str) -> Path:
        """Where a worker renders; the worker id in the name lets a supervisor clean up after a dead child.

        The name is `<task id>.<host>_<pid>_<worker name>.part` (task ids have no dots).
        """
        # Made per render, not once at start: a volume that comes back must not need a restart,
        # and one that is broken must fail the task, not crash-loop the worker.
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        return self.tmp_dir / f"{task_id}.{_safe_name(worker)}{TEMP_SUFFIX}"

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

    # ---- signed URLs ------------------------------------------------------------------------
    def signature(self, task_id: str, expires: int) -> str:
        message = f"{file_path_for(task_id)}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one storage object per process; the HMAC is per poll
    def signed_url(self, base_url: str, task_id: str, expires: int) -> str:
        signature = self.signature(task_id, expires)
        return f"{base_url}{file_path_for(task_id)}?expires={expires}&signature={signature}"

    def verify(self, task_id: str, expires: int, signature: str) -> bool:
        # Compared as bytes: compare_digest refuses a str with non-ASCII characters (TypeError), and the
        # signature is whatever the client put in the query string. "replace" also covers lone surrogates.
        expected = self.signature(task_id, expires).encode("ascii")
        return hmac.compare_digest(expected, signature.encode("utf-8", "replace"))
