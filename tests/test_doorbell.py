"""The doorbell (dispatch/doorbell.py) on real Unix datagram sockets."""

from __future__ import annotations

import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from reelq.dispatch.doorbell import DoorbellListener, ring


@pytest.fixture
def run_dir() -> Iterator[Path]:
    # Not tmp_path: a Unix socket path must stay under ~107 bytes, and pytest's can be long.
    with tempfile.TemporaryDirectory(prefix="rq-bell-") as name:
        yield Path(name) / "run"


def test_a_ring_wakes_a_waiting_listener(run_dir: Path) -> None:
    listener = DoorbellListener(run_dir, "a")
    woke: list[bool] = []
    waiting = threading.Thread(target=lambda: woke.append(listener.wait(30)))
    waiting.start()
    try:
        assert ring(run_dir) == 1
        waiting.join(10)
        assert woke == [True]  # rung, long before its 30 s fallback
    finally:
        listener.close()


def test_every_listener_is_rung_and_pending_rings_are_drained_at_once(run_dir: Path) -> None:
    first, second = DoorbellListener(run_dir, "a"), DoorbellListener(run_dir, "b")
    try:
        assert ring(run_dir) == 2
        assert ring(run_dir) == 2
        assert first.wait(5) and second.wait(5)
        # The two rings woke each listener once: nothing is left to wake it again.
        assert not first.wait(0.05)
        assert not second.wait(0.05)
    finally:
        first.close()
        second.close()


def test_without_a_ring_wait_returns_false_after_its_timeout(run_dir: Path) -> None:
    listener = DoorbellListener(run_dir, "a")
    try:
        assert listener.wait(0.05) is False
    finally:
        listener.close()


def test_a_ring_with_no_listener_is_harmless(run_dir: Path) -> None:
    assert ring(run_dir) == 0  # the directory does not even exist yet
    run_dir.mkdir(parents=True)
    assert ring(run_dir) == 0
    (run_dir / "unrelated.txt").write_text("not a socket")
    assert ring(run_dir) == 0


def test_the_socket_of_a_dead_listener_is_removed_and_live_ones_still_rung(run_dir: Path) -> None:
    live = DoorbellListener(run_dir, "live")
    # What a killed worker leaves: a bound socket file that nobody reads any more.
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead_path = run_dir / "worker-dead.sock"
    dead.bind(str(dead_path))
    dead.close()
    try:
        assert dead_path.exists()
        assert ring(run_dir) == 1
        assert not dead_path.exists()
        assert live.wait(5)
    finally:
        live.close()


def test_close_removes_the_socket_and_a_restarted_listener_replaces_a_leftover(run_dir: Path) -> None:
    first = DoorbellListener(run_dir, "same")
    path = first.path
    first._sock.close()  # dies without unlinking its socket file
    second = DoorbellListener(run_dir, "same")  # the same name binds again over the leftover
    try:
        assert ring(run_dir) == 1
        assert second.wait(5)
    finally:
        second.close()
    assert not path.exists()
    assert ring(run_dir) == 0
