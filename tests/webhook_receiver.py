"""A real HTTP receiver for webhooks, on a free port: records every request and answers as told.

Shared by tests/test_webhooks.py and benchmarks/webhook_latency.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson


@dataclass
class Received:
    at: float  # time.time() when the body was read
    headers: dict[str, str]
    body: bytes
    answered: int

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Receiver:
    """`answer(request_number) -> status` decides each answer (default 204)."""

    host: str = "127.0.0.1"
    answer: Callable[[int], int] = lambda _n: 204
    received: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _arrived: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self._arrived = threading.Condition(self._lock)

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    def url(self, path: str = "/hook", host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                now = time.time()
                with receiver._lock:
                    status = receiver.answer(len(receiver.received))
                    receiver.received.append(
                        Received(now, {k.lower(): v for k, v in self.headers.items()}, body, status)
                    )
                    receiver._arrived.notify_all()
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        class Quiet(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a sender killed mid-request resets its connection: expected in these tests

        self._server = Quiet((self.host, 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True, name="receiver").start()
        return self

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 30) -> list[Received]:
        """Block until `predicate(received)` holds; returns a copy of what arrived."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while not predicate(self.received):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"receiver: condition not met in {timeout} s; got {self.received}")
                self._arrived.wait(left)
            return list(self.received)

    def delivered(self) -> list[Received]:
        """The requests answered with 2xx."""
        with self._lock:
            return [r for r in self.received if 200 <= r.answered < 300]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
