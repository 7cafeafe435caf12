"""Idle connections do not keep the connection limit full (issue 19, item 15): at the limit, a new
connection takes the place of the one idle longest, so `/healthz` and other clients keep being served
however many silent connections one client holds open. A real `reelq serve`, raw sockets on loopback."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tests.conftest import Server
from tests.test_connections import closed_by_server, connect

pytestmark = [pytest.mark.process]


def test_silent_connections_make_room_for_probes_and_clients(make_server) -> None:  # type: ignore[no-untyped-def]
    # The idle limits are far away: only the connection limit can close the silent connections here.
    server: Server = make_server(workers=0, REELQ_MAX_CONNECTIONS="40", REELQ_HEADER_TIMEOUT="120")
    silent = [connect(server) for _ in range(40)]
    clients = [httpx.Client(base_url=server.base_url, timeout=10) for _ in range(30)]
    try:
        for client in clients:
            # Served on a new connection that then stays open (idle between requests, like a
            # keep-alive client's or a prober's): each one makes room for itself.
            answer = client.get("/healthz")
            assert answer.status_code == 200, answer.text
        # The connections closed to make room were the silent ones, oldest first.
        deadline = time.monotonic() + 60
        while sum(closed_by_server(s) for s in silent) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        closed = [closed_by_server(s) for s in silent]
        assert sum(closed) == 30
        assert all(closed[:30])
        # The kept-alive clients are served again on the connections they kept.
        for client in clients:
            assert client.get("/healthz").status_code == 200
    finally:
        for client in clients:
            client.close()
        for sock in silent:
            sock.close()


def test_busy_connections_are_never_closed_to_make_room(make_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_server(workers=0, REELQ_MAX_CONNECTIONS="20", REELQ_HEADER_TIMEOUT="120")
    # Each has sent part of a request: waiting on its client, but not idle.
    busy = [connect(server) for _ in range(20)]
    for sock in busy:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
    time.sleep(0.5)  # all accepted by now
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(4096).startswith(b"HTTP/1.1 503")
    assert not any(closed_by_server(s) for s in busy)
    for sock in busy:
        sock.sendall(b"Host: x\r\n\r\n")  # the requests complete and are answered
        sock.settimeout(10)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.close()
