"""What the supervisor and its worker processes agree on, with neither importing the other.

The supervisor (dispatch/supervisor.py) starts workers by module name and reads what they leave: the
worker id prefix of a dead child's leases and temporary files, the file a render worker writes once
its models are loaded, the variable that names the supervisor's pid (worker/lifeline.py). Workers
import this module; the supervisor never imports a worker.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reelq.config import Settings

PARENT_ENV = "REELQ_SUPERVISOR_PID"  # the supervisor's pid, in each child's environment


def make_worker_id(name: str = "") -> str:
    """host:pid:name — the supervisor finds a dead child's tasks by the `host:pid:` prefix."""
    return f"{socket.gethostname()}:{os.getpid()}:{name or 'w'}"


def worker_marker(pid: int, host: str | None = None) -> str:
    """The prefix of every worker id (and temp file) of one process."""
    return f"{host or socket.gethostname()}:{pid}:"


def loaded_marker(run_dir: Path, pid: int) -> Path:
    """The file a render worker process writes once its engines (and their models) are loaded."""
    return run_dir / f"models-loaded-{pid}"


def mark_models_loaded(settings: Settings) -> None:
    """Called by a render worker process after building its engines, before it claims anything."""
    path = loaded_marker(settings.run_dir, os.getpid())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
