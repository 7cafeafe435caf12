"""Worker processes end with their supervisor (issue 19): a real `reelq serve` killed with SIGKILL
leaves no render worker behind, still claiming tasks with nobody to restart or stop it."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Server

pytestmark = [pytest.mark.process]


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    found = _stat(pid)
    return found is not None and found[0] != "Z"  # a zombie has ended; only its exit status is left


def _workers_of(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (_stat(int(entry.name)) or ("", 0))[1] == parent:
            with contextlib.suppress(OSError):
                if b"reelq.worker.process" in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
    return pids


def _wait(predicate: Callable[[], object], timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while not (found := predicate()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_render_workers_end_when_serve_is_killed(make_server: Callable[..., Server]) -> None:
    server = make_server(workers=2)
    assert server.process is not None
    serve = server.process.pid
    workers = _wait(lambda: (found := _workers_of(serve)) and len(found) == 2 and found, 30)
    assert isinstance(workers, list) and len(workers) == 2, workers
    try:
        os.kill(serve, signal.SIGKILL)  # the supervisor only: no chance to stop its workers
        server.process.wait(10)
        # Idle workers drain at once; the bound is the lifeline's check interval plus their drain.
        assert _wait(lambda: not any(_alive(pid) for pid in workers), 30), [
            (pid, _stat(pid)) for pid in workers
        ]
    finally:
        for pid in workers:  # on failure, leave nothing running
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
