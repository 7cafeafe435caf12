"""Hardening found by the adversarial probe (issue 9 §2): signed links, disk full, dead workers' files."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from reelq.dispatch.embedded import _pid_alive
from reelq.storage import LocalStorage
from tests.conftest import Server, wait_terminal
from tests.test_api import assert_error

T = TypeVar("T")
BODY = {"model": "viduq3-turbo", "prompt": "a lighthouse at dusk", "duration": 1}

# --- signed links ----------------------------------------------------------------------------------------

ODD_SIGNATURES = ["%C3%A9", "%FF", "%00", "%E2%80%8B" * 64, "%F0%9F%8E%AC", "%ED%A0%80", "é" * 10]


@pytest.mark.parametrize("signature", ODD_SIGNATURES)
def test_non_ascii_signature_is_403_without_a_traceback(shared_server: Server, signature: str) -> None:
    before = shared_server.log()
    path = f"/v1/files/video_{uuid.uuid4()}.mp4?expires=4102444800&signature={signature}"
    for method in ("GET", "HEAD"):
        response = httpx.request(method, f"{shared_server.base_url}{path}")
        assert response.status_code == 403
        if method == "GET":
            assert assert_error(response, 403, None)["code"] == "invalid_signature"
    assert "Traceback" not in shared_server.log()[len(before) :]


def test_verify_refuses_any_string(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, b"k" * 32)
    task_id = f"video_{uuid.uuid4()}"
    good = storage.signature(task_id, 100)
    assert storage.verify(task_id, 100, good)
    for bad in ("é", "\udcff", good[:-1] + "é", good.upper(), "", good + "0", "\x00" * 64):
        assert not storage.verify(task_id, 100, bad)


# --- dead workers' temporary files -----------------------------------------------------------------------


def test_kill_9_of_everything_leaves_no_part_file_after_restart(make_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_server(workers=1, REELQ_SYNTHETIC_DELAY="30", REELQ_LEASE_SECONDS="2")
    tmp_dir = server.home / "videos" / ".tmp"
    with server.client() as client:
        task = client.post("/v1/vidu/videos", json=BODY).json()
    stale = wait_for(lambda: list(tmp_dir.glob(f"{task['id']}.*.part")), 30)
    assert len(stale) == 1
    server.stop(signal.SIGKILL)
    assert stale[0].exists()  # nobody was left to clean up

    server.env["REELQ_SYNTHETIC_DELAY"] = "1"
    server.start(workers=1)
    started = time.monotonic()
    wait_for(lambda: not stale[0].exists(), 2)
    assert time.monotonic() - started < 2
    with server.client() as client:
        assert wait_terminal(client, task["id"], timeout=60)["status"] == "completed"
    assert not list(tmp_dir.glob("*.part"))


def test_start_up_keeps_the_part_files_of_live_processes(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, b"k" * 32)
    host = socket.gethostname()
    task = f"video_{uuid.uuid4()}"
    live = storage.temp_path(task, f"{host}:{os.getpid()}:w0")
    dead = storage.temp_path(task, f"{host}:{dead_pid()}:w1")
    other_host = storage.temp_path(task, f"other-{host}:{dead_pid()}:w0")
    odd = tmp_path / ".tmp" / "not-ours.part"
    for path in (live, dead, other_host, odd):
        path.write_bytes(b"x")
    assert storage.remove_dead_workers_temp_files(host, _pid_alive) == 1
    assert not dead.exists()
    assert live.exists() and other_host.exists() and odd.exists()


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def wait_for(condition: Callable[[], T], timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            assert value, f"condition not met within {timeout}s"
            return value
        time.sleep(0.05)
