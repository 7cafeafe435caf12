"""Worker processes end with the supervisor that started them, however it ends (kill -9 included).

A render, relay or Celery worker is a child process of `reelq serve` / `reelq worker` (dispatch/
supervisor.py). A supervisor that exits cleanly stops them; one killed with SIGKILL, or crashed, used to
leave them running, still claiming and rendering with nobody to restart, drain or count them (a worker
was found alive 18 minutes after its `reelq serve` was gone). Two bounds, the first Linux-only:

- `prctl(PR_SET_PDEATHSIG, SIGTERM)`: the kernel sends SIGTERM the moment the parent dies;
- a watchdog thread that compares `getppid()` with the supervisor's pid (REELQ_SUPERVISOR_PID, set by
  the supervisor) every CHECK_INTERVAL seconds: the portable fallback, and the only way to notice a
  parent that died before the prctl call.

SIGTERM is the worker's own drain (a render in flight is handed back, or finishes within its drain
time); a worker still alive GRACE seconds after its parent died is ended with `os._exit`, and its task
comes back through its lease like any dead worker's.

PR_SET_PDEATHSIG fires when the parent *thread* that started the child ends: the supervisor starts
workers from the serving thread and restarts them from its monitor thread, both of which live as long
as the supervisor does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
import time

from reelq.dispatch.children import PARENT_ENV

log = logging.getLogger("reelq.worker")

CHECK_INTERVAL = 1.0
GRACE = 60.0
_PR_SET_PDEATHSIG = 1


def _set_parent_death_signal(signum: int) -> bool:
    """Ask Linux to send `signum` when the parent dies; False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def bind_to_supervisor() -> None:
    """End this process (SIGTERM to itself, then `os._exit` after GRACE) once its supervisor is gone.
    No-op for a process not started by a supervisor (no REELQ_SUPERVISOR_PID): a worker loop in tests."""
    text = os.environ.get(PARENT_ENV, "")
    if not text.isdigit():
        return
    parent = int(text)
    signalled = _set_parent_death_signal(signal.SIGTERM)
    threading.Thread(
        target=_watch, args=(parent, signalled), daemon=True, name="reelq-lifeline"
    ).start()


def _watch(parent: int, signalled: bool) -> None:
    while os.getppid() == parent:
        time.sleep(CHECK_INTERVAL)
    log.warning("the supervisor (pid %d) is gone: this worker process ends", parent)
    if not signalled or os.getppid() != parent:
        # The kernel's signal may have come before our prctl (a parent that died during our start):
        # a second SIGTERM is harmless, the drain is idempotent.
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(GRACE)
    log.error("still running %g s after the supervisor died: exiting now", GRACE)
    os._exit(1)
