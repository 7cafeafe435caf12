"""The server `reelq serve` runs: uvicorn's, which tells the app when a shutdown begins
(`DrainingServer`), served through a connection guard that bounds what a slow or greedy client can
hold of it.

uvicorn bounds only the idle gap between two requests (`timeout_keep_alive`). A client that
connects and sends nothing, or sends its request headers or body a byte at a time, holds its
connection (and a file descriptor) forever; enough of them exhaust the process's descriptors and
`/healthz` stops answering. This module serves uvicorn's httptools protocol with three bounds:

- request headers must be complete within `header_timeout` of the connection opening or of the
  first byte after the previous answer (an idle keep-alive connection is uvicorn's to close), and
  be at most 64 KiB (httptools has no limit of its own);
- a request body must arrive within `body_timeout` plus one second per `body_min_rate` bytes
  received so far (Apache mod_reqtimeout's scheme): a 50 MB upload over a slow but honest link
  keeps earning time, a trickle of a byte every few seconds is cut after `body_timeout`;
- at most `max_connections` connections are open. At the limit, a new connection takes the place of
  the open connection that has been idle longest (connected or kept alive and sending nothing: it
  is closed without an answer, as a keep-alive expiry would), so that silent connections, however
  many one client opens, never keep `/healthz` or anyone else out. Only when none is idle is the
  new one answered `503` and closed at once.

Time the server itself holds a request up is not counted against the client: reading paused
by flow control (a pipelined request waiting, a body the app has not consumed yet) or header
bytes of a pipelined request arriving while this connection's answer is still being written
(a held long-poll, a download). Responses are never cut: once a request has been read, the
connection is out of these bounds until its answer ends.

All the timing is one sweep a second over the open connections (a timer per request would
cost the hot status-read path). Overload is logged once when it starts, then as one summary
line a minute, never a line per connection.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import threading
import time
from collections import Counter
from http import HTTPStatus
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from reelq.config import Settings
from reelq.service.errors import error_body

log = logging.getLogger("reelq.server")
# The event loop's own clock (asyncio's loop.time() is time.monotonic()), without its method call.
_now = time.monotonic

# Request headers beyond this are refused with 431: httptools itself accepts headers of any size.
MAX_HEADER_BYTES = 64 * 1024
# uvicorn's default listen backlog, kept where the open-file limit allows it.
DEFAULT_BACKLOG = 2048
# Descriptors kept for what is not a client connection: the database, video files being
# downloaded (one per download on top of its socket), image fetches, worker pipes, logs.
MIN_RESERVED_FDS = 256

# What a connection waits for (read by the sweep from uvicorn's state, GuardedHttpToolsProtocol._phase).
_IDLE = 0  # nothing from the client: an answer is due, or uvicorn's keep-alive timer runs
_HEADERS = 1
_BODY = 2

_REASONS = {
    "refused": "refused at the connection limit",
    "idle_evicted": "closed while idle to make room at the connection limit",
    "slow_headers": "closed for slow request headers",
    "slow_body": "closed for a slow request body",
    "headers_too_large": "closed for request headers over 64 KiB",
    "invalid": "closed for an invalid HTTP request",
    "out_of_files": "not accepted: the process is out of file descriptors",
}
_ACCEPT_FAILED = "socket.accept() out of system resource"


def _raw_response(status: int, code: str, message: str, extra: bytes = b"") -> bytes:
    """A whole HTTP/1.1 answer in the SPEC §4 envelope, written straight to the socket."""
    body = error_body(code, message)
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n%s\r\n" % (status, HTTPStatus(status).phrase.encode(), len(body), extra)
    )
    return head + body


class ConnectionGuard:
    """The limits, the sweep that enforces the time limits, and the overload log of one server."""

    def __init__(
        self,
        *,
        header_timeout: float,
        body_timeout: float,
        body_min_rate: float,
        max_connections: int,
        summary_seconds: float = 60.0,
    ) -> None:
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.body_min_rate = body_min_rate
        self.max_connections = max_connections
        self.summary_seconds = summary_seconds
        # A quarter of the shortest limit (at most a second): a limit is enforced within 25 %.
        self.interval = min(1.0, header_timeout / 4, body_timeout / 4)
        self.counts: Counter[str] = Counter()
        self._episode = False  # overload announced and not yet followed by a quiet summary period
        self._last_line = 0.0
        self._connections: set[Any] | None = None
        self._last_sweep = 0.0
        self.refusal = _raw_response(
            503,
            "overloaded",
            "The server has too many open connections; retry shortly.",
            b"retry-after: 1\r\n",
        )
        self.header_timeout_answer = _raw_response(
            408, "request_timeout", f"The request headers did not arrive within {header_timeout:g} s."
        )
        self.body_timeout_answer = _raw_response(
            408,
            "request_timeout",
            f"The request body arrived too slowly (allowed: {body_timeout:g} s plus 1 s per "
            f"{body_min_rate:g} bytes).",
        )
        self.headers_too_large_answer = _raw_response(
            431, "headers_too_large", f"The request headers are larger than {MAX_HEADER_BYTES // 1024} KiB."
        )

    def protocol_class(self) -> type[GuardedHttpToolsProtocol]:
        """The class to hand uvicorn as `Config(http=...)`, bound to this guard."""
        guard = self

        class BoundProtocol(GuardedHttpToolsProtocol):
            pass

        BoundProtocol.guard = guard
        return BoundProtocol

    def make_room(self, connections: set[Any]) -> bool:
        """Close the connection idle longest to make room for a new one; False when none is idle.

        Runs only at the limit, so its scan costs nothing in normal operation."""
        victim = None
        closing = 0
        for connection in connections:
            if not isinstance(connection, GuardedHttpToolsProtocol):
                continue
            if connection.transport is not None and connection.transport.is_closing():
                closing += 1  # a victim already closed leaves `connections` a moment later
            elif connection.idle() and (victim is None or connection._since < victim._since):
                victim = connection
        if len(connections) - closing < self.max_connections:
            return True
        if victim is None:
            return False
        victim.transport.close()
        self.note("idle_evicted")
        return True

    def watch(self, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        """Start the sweep on the first connection (the loop runs only once uvicorn serves)."""
        if self._connections is None:
            self._connections = connections
            self._last_sweep = _now()
            loop.call_later(self.interval, self._sweep, loop)
            loop.set_exception_handler(self._loop_exception)

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """asyncio logs a traceback per failed accept() when descriptors run out: up to `backlog`
        of them per attempt, every second (a log of 150 MB once the limit was reached). Counted here
        instead."""
        if context.get("message") == _ACCEPT_FAILED:
            self.note("out_of_files")
        else:
            loop.default_exception_handler(context)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = _now()
        elapsed, self._last_sweep = now - self._last_sweep, now
        try:
            for connection in list(self._connections or ()):
                if isinstance(connection, GuardedHttpToolsProtocol):
                    connection.check(now, elapsed)
            self.summarise(now)
        except Exception:  # the sweep must survive anything, or the limits silently stop
            log.exception("connection sweep failed")
        loop.call_later(self.interval, self._sweep, loop)

    def note(self, reason: str) -> None:
        """Count one dropped connection; the first of an overload episode is logged at once."""
        if self._episode:
            self.counts[reason] += 1
            return
        self._episode = True
        self._last_line = time.monotonic()
        log.warning(
            "overload: a connection %s (limits: %d connections, headers %g s, body %g s + 1 s per %g "
            "bytes); further drops are summarised once a minute",
            _REASONS[reason],
            self.max_connections,
            self.header_timeout,
            self.body_timeout,
            self.body_min_rate,
        )

    def summarise(self, now: float) -> None:
        """At most one line per `summary_seconds`; a quiet period ends the episode."""
        if not self._episode or now - self._last_line < self.summary_seconds:
            return
        self._last_line = now
        if not self.counts:
            self._episode = False
            return
        parts = ", ".join(f"{n} {_REASONS[reason]}" for reason, n in self.counts.most_common())
        open_now = len(self._connections) if self._connections is not None else 0
        log.warning(
            "overload in the last %.0f s: %s; %d connections open", self.summary_seconds, parts, open_now
        )
        self.counts.clear()


_Base = HttpToolsProtocol


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol under a ConnectionGuard's limits (see the module docstring).

    What a connection is waiting for is read by the sweep from uvicorn's own state (the current
    request cycle, the keep-alive timer, flow control), so a status read pays only for the one
    overrides it cannot do without: counting header bytes as they arrive (httptools keeps every
    header it parses, so their size must be bounded as they come) and marking the end of a
    message. Overriding every parser callback to note the phase cost about 2.5 µs a request
    here, some 5 % of a status read.
    """

    guard: ClassVar[ConnectionGuard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._waiting: tuple[int, Any] = (_HEADERS, None)  # (phase, cycle) the sweep last timed
        self._since = 0.0  # when that wait began, moved on by the time the server held it up
        self._got = 0  # bytes of request headers received since the last request began
        self._body_of: Any = None  # the cycle whose body bytes `_body_got` counts
        self._body_got = 0
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        guard = self.guard
        if len(self.connections) >= guard.max_connections and not guard.make_room(self.connections):
            # Answered before the request is read: the descriptor is freed at once, and the
            # client learns to retry instead of hanging.
            self._refused = True
            transport.write(guard.refusal)
            transport.close()
            guard.note("refused")
            return
        super().connection_made(transport)
        self._since = _now()
        guard.watch(self.loop, self.connections)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._refused:  # a refused connection never set up uvicorn's state
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        _Base.data_received(self, data)
        cycle = self.cycle
        if cycle is not None and (cycle.more_body or not cycle.response_complete):
            self._got = 0  # a request began: what came before it were its headers, within the limit
            return
        # No request in progress after this chunk: all of it were headers of one not complete yet.
        self._got += len(data)
        if self._got > MAX_HEADER_BYTES and not self.transport.is_closing():
            self.guard.note("headers_too_large")
            self._answer_and_close(self.guard.headers_too_large_answer)

    def on_body(self, body: bytes) -> None:
        _Base.on_body(self, body)
        if self._body_of is not self.cycle:
            self._body_of, self._body_got = self.cycle, 0
        self._body_got += len(body)

    def on_message_complete(self) -> None:
        _Base.on_message_complete(self)
        # uvicorn leaves `more_body` set when the answer went out before the body ended (a 401 to
        # an upload): cleared here, it tells the sweep the client owes nothing more.
        self.cycle.more_body = False

    def idle(self) -> bool:
        """Whether the client sent nothing since the connection opened or its last answer ended."""
        transport = self.transport
        if transport is None or transport.is_closing() or self.pipeline:
            return False
        cycle = self.cycle
        if cycle is not None and (cycle.more_body or not cycle.response_complete):
            return False  # a request is being read or answered
        return self._got == 0

    def _phase(self) -> tuple[int, Any]:
        """What the connection waits for now: (_HEADERS | _BODY | _IDLE, the request cycle)."""
        cycle = self.cycle
        if cycle is None:
            return _HEADERS, None
        if self.pipeline:
            return _IDLE, cycle  # requests queued behind an answer: the server holds them up
        if cycle.more_body:
            return _BODY, cycle  # also after an early answer: the body still holds the connection
        if not cycle.response_complete:
            return _IDLE, cycle  # the request is read: an answer is due
        # Between requests: idle while uvicorn's keep-alive timer runs (it closes idle connections
        # itself); the timer is cancelled by the first byte of the next request.
        return (_IDLE if self.timeout_keep_alive_task is not None else _HEADERS), cycle

    def check(self, now: float, elapsed: float) -> None:
        """Called by the sweep: close the connection if its client is over a time limit."""
        if self.transport is None or self.transport.is_closing():
            return
        waiting = self._phase()
        phase, cycle = waiting
        if waiting != self._waiting:
            # A new wait began since the last sweep: timed from now (limits hold within a sweep).
            self._waiting, self._since = waiting, now
            return
        if phase == _IDLE:
            return
        if self.flow.read_paused:
            self._since += elapsed  # the server holds this request up, not the client
            return
        guard = self.guard
        if phase == _HEADERS:
            if now - self._since <= guard.header_timeout:
                return
            if self._got == 0:  # an idle connection, like uvicorn's keep-alive expiry: no answer due
                self.transport.close()
                return
            guard.note("slow_headers")
            self._answer_and_close(guard.header_timeout_answer)
            return
        received = self._body_got if self._body_of is cycle else 0
        if now - self._since > guard.body_timeout + received / guard.body_min_rate:
            guard.note("slow_body")
            self._answer_and_close(guard.body_timeout_answer)

    def _answer_and_close(self, answer: bytes) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if not cycle.response_started:
                self.transport.write(answer)
            # The app waiting for the body gets `http.disconnect`; whatever it sends is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        else:
            self.transport.write(answer)
        self.transport.close()


class _InvalidRequestFilter(logging.Filter):
    """uvicorn warns once per malformed request; counted into the guard's summary instead."""

    def __init__(self, guard: ConnectionGuard) -> None:
        super().__init__()
        self.guard = guard

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "Invalid HTTP request received.":
            self.guard.note("invalid")
            return False
        return True


def raise_fd_limit() -> int:
    """Raise the soft limit of open files to the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft if soft != resource.RLIM_INFINITY else 1 << 20
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):  # e.g. macOS caps it below an "unlimited" hard limit
        return soft
    return target


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.Config options for `reelq serve`: the guarded protocol and a listen backlog that fit
    this process's open-file limit (raised to the hard limit first).

    asyncio accepts up to `backlog` connections in one go before any protocol sees them, so a
    burst holds up to that many descriptors on top of the open connections: both must fit, or
    accept() fails with EMFILE however early the protocol refuses.
    """
    fds = raise_fd_limit()
    usable = fds - max(MIN_RESERVED_FDS, fds // 4)
    backlog = max(16, min(DEFAULT_BACKLOG, usable // 4))
    max_connections = settings.max_connections
    if max_connections > usable - backlog:
        fitted = max(usable - backlog, 1)
        log.warning(
            "REELQ_MAX_CONNECTIONS=%d does not fit this process's open-file limit (%d): using %d",
            max_connections,
            fds,
            fitted,
        )
        max_connections = fitted
    guard = ConnectionGuard(
        header_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
        body_min_rate=settings.body_min_rate,
        max_connections=max_connections,
    )
    logging.getLogger("uvicorn.error").addFilter(_InvalidRequestFilter(guard))
    return {"http": guard.protocol_class(), "backlog": backlog}


class DrainingServer(uvicorn.Server):
    """uvicorn's server, which also tells the app when a shutdown begins (held long-polls answer)."""

    def __init__(self, config: uvicorn.Config, draining: threading.Event) -> None:
        super().__init__(config)
        self.draining = draining

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.draining.set()
        super().handle_exit(sig, frame)
