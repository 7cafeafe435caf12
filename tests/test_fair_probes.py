"""`reelq worker`'s probe port under a slowloris (issue 19, item 10): its threads are bounded, one client
address cannot take them all, and a request trickled a byte at a time is cut at a total deadline.
The real endpoint (dispatch/probes.py) on a loopback port, real sockets."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reelq.dispatch import probes
from reelq.metrics import MULTIPROC_ENV

pytestmark = [pytest.mark.service]

ATTACKER = "127.0.0.2"  # loopback, but another address than the prober's 127.0.0.1


@pytest.fixture
def endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, int]]:
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    server, _app = probes.serve_node_endpoint("127.0.0.1", 0)
    yield server, server.server_address[1]
    server.shutdown()
    server.server_close()


def _connect(port: int, source: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def _closed_by_server(sock: socket.socket, deadline: float) -> bool:
    """Whether the server ends the connection before `deadline` (whatever it answered first)."""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            if sock.recv(4096) == b"":
                return True
        except TimeoutError:
            return False
        except OSError:
            return True
    return False


def test_a_trickled_request_is_cut_at_its_deadline(
    endpoint: tuple[Any, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    _server, port = endpoint
    monkeypatch.setattr(probes._QuietHandler, "timeout", 1.0)  # read at each connection's start
    sock = _connect(port, "127.0.0.1")
    stop = threading.Event()

    def trickle() -> None:  # a byte every 0.2 s: each one restarted the old per-read timeout
        for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 10_000:
            if stop.wait(0.2):
                return
            try:
                sock.send(bytes([byte]))
            except OSError:
                return

    threading.Thread(target=trickle, daemon=True).start()
    try:
        # The handler's whole-request deadline is 1 s here; 60 s is far beyond it however loaded.
        assert _closed_by_server(sock, time.monotonic() + 60)
    finally:
        stop.set()
        sock.close()


def test_idle_connections_hold_a_bounded_number_of_threads(
    endpoint: tuple[Any, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    _server, port = endpoint
    # The admitted connections stay open for the whole test, however slowly it runs.
    monkeypatch.setattr(probes._QuietHandler, "timeout", 120.0)
    threads_before = threading.active_count()
    held = [_connect(port, ATTACKER) for _ in range(60)]
    try:
        # Every connection over the per-address bound is answered 503 and closed without a thread.
        refused = 0
        for sock in held[probes.MAX_CONNECTIONS_PER_ADDRESS :]:
            sock.settimeout(10)
            answer = sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 503"), answer
            assert b'"code":"overloaded"' in answer
            refused += 1
        assert refused == 60 - probes.MAX_CONNECTIONS_PER_ADDRESS
        assert threading.active_count() - threads_before <= probes.MAX_CONNECTIONS_PER_ADDRESS
        # A prober from another address is still answered.
        answer = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        assert answer.status_code == 200 and answer.json() == {"status": "ok"}
    finally:
        for sock in held:
            sock.close()
