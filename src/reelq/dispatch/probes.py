"""`reelq worker`'s HTTP endpoint (REELQ_METRICS_PORT): `/metrics`, `/healthz` and `/readyz`.

A worker node has no API process whose `/readyz` could speak for it: a database or broker it cannot
reach, a bucket that is gone, a full temporary disk or workers that die at start would otherwise show
only as failed or handed-back renders. So the node answers probes itself:

- `GET /metrics`: the node's metrics (every worker process's files plus `metrics.NODE`), written by
  prometheus-client's own WSGI app.
- `GET /healthz`: liveness, 200 while the supervisor (which restarts dead workers) runs.
- `GET /readyz`: readiness, 200 or 503 with one sentence saying why (`node_problem`).
- Anything else is a 404 in the API's error envelope: a probe or scrape pointed at a mistyped path
  must fail, not read the metrics as "alive". HEAD answers like GET without the body.

The standard library's WSGI server, a thread per request: a probe never waits on the supervisor's
threads, nor they on it. The threads are bounded (MAX_CONNECTIONS, MAX_CONNECTIONS_PER_ADDRESS; over
them a connection is answered 503 at once) and a request must arrive whole within CLIENT_TIMEOUT, so a
slowloris (thousands of connections, each trickling a byte) holds a few threads for seconds, not one
thread per connection forever. The checks themselves run on one helper thread per round, shared by the
probes that arrive meanwhile, and a probe waits for them at most `READY_WAIT` seconds: a database
that hangs (a blackholed host, no TCP answer for minutes) makes `/readyz` say so in time, instead of
past the prober's own timeout. A finished round is reused for `READY_CACHE` seconds, so a burst of
probes (kubelet, a balancer, an operator's curl) costs one round.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import orjson

if TYPE_CHECKING:
    from reelq.dispatch.supervisor import Supervisor

READY_WAIT = 2.0  # seconds a probe waits for the checks before answering 503 with the one still running
READY_CACHE = 1.0  # seconds a finished round of checks answers later probes
CLIENT_TIMEOUT = 10.0  # seconds a connection may take to send its whole request (on all interfaces)
MAX_HEAD_BYTES = 16 * 1024  # a probe's request line and headers are a few hundred bytes
# Threads (one per open connection) bounded: probes and scrapes are a few at a time.
MAX_CONNECTIONS = 64
MAX_CONNECTIONS_PER_ADDRESS = 16

Check = tuple[str, Callable[[], str | None]]  # (what is checked, for a timeout's reason; the check)
Answer = tuple[int, list[tuple[str, str]], bytes]  # status, headers, body


# ---- readiness --------------------------------------------------------------------------------------------


def node_checks(supervisor: Supervisor) -> list[Check]:
    """What a worker node needs to render, cheapest-to-explain first: the database and the disks before
    the workers, whose crash loop is more often their consequence than its own cause."""
    from reelq.storage.local import room_problem

    settings = supervisor.settings
    storage = supervisor.storage

    def database() -> str | None:
        problem = supervisor.store.problem()
        sqlite_path = settings.sqlite_path
        if problem is None and sqlite_path is not None:
            problem = room_problem(sqlite_path.parent, "the database")
        return problem

    def temporary_renders() -> str | None:
        # Every render is written to a local file first, S3 included: a full local disk fails them all.
        # Made here as each render makes it (TempFiles.temp_path): a fresh node has rendered nothing yet.
        try:
            storage.tmp_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return f"storage for temporary renders unavailable ({exc.strerror or type(exc).__name__})"
        return room_problem(storage.tmp_dir, "temporary renders")

    checks: list[Check] = [
        ("the database", database),
        ("the temporary renders' disk", temporary_renders),
        ("storage", storage.problem),  # local: the same volume again (renamed into place); S3: HeadBucket
    ]
    if supervisor.reconciler is not None:  # REELQ_BROKER_URL: the Celery workers' messages come from there
        checks.append(("the broker", supervisor.reconciler.publisher.problem))
    checks.append(("the worker processes", supervisor.worker_problem))
    return checks


class Readiness:
    """Runs the checks for `/readyz`: one round at a time, reused for `READY_CACHE`, waited for at most
    `READY_WAIT` (the round goes on in its own thread, and the next probe gets its result)."""

    def __init__(self, checks: list[Check], wait: float = READY_WAIT, cache: float = READY_CACHE) -> None:
        self.checks = checks
        self.wait = wait
        self.cache = cache
        self._lock = threading.Lock()
        self._round: threading.Event | None = None  # set when the round in flight (or the last one) ends
        self._stage = ""  # what the round in flight is checking now
        self._problem: str | None = None
        self._finished = float("-inf")

    def problem(self) -> str | None:
        with self._lock:
            fresh = time.monotonic() - self._finished < self.cache
            if self._round is not None and (fresh or not self._round.is_set()):
                done = self._round
            else:
                done = self._round = threading.Event()
                threading.Thread(target=self._run, args=(done,), daemon=True, name="reelq-readyz").start()
        if not done.wait(self.wait):
            return f"{self._stage} did not answer within {self.wait:g} s"
        return self._problem

    def _run(self, done: threading.Event) -> None:
        problem = None
        for what, check in self.checks:
            self._stage = what
            try:
                problem = check()
            except Exception as exc:  # a check that breaks says so rather than killing the round
                problem = f"{what} could not be checked: {type(exc).__name__}"
            if problem:
                break
        with self._lock:
            self._problem, self._finished = problem, time.monotonic()
        done.set()


# ---- the HTTP endpoint ------------------------------------------------------------------------------------


def _json(status: int, body: dict[str, Any], *headers: tuple[str, str]) -> Answer:
    return (
        status,
        [("Content-Type", "application/json"), ("Cache-Control", "no-store"), *headers],
        orjson.dumps(body),
    )


def _error(status: int, code: str, message: str, *headers: tuple[str, str]) -> Answer:
    """The API's error envelope (service/errors.py), without importing the service layer here."""
    return _json(status, {"error": {"code": code, "message": message, "param": None}}, *headers)


class NodeEndpoint:
    """The WSGI app of a worker node's port. Bound before the supervisor exists (a busy port must stop
    the node before any worker starts), so it is told of the supervisor once that runs (`attach`)."""

    def __init__(self, metrics_app: Callable[..., Iterable[bytes]]) -> None:
        self.metrics_app = metrics_app
        self.supervisor: Supervisor | None = None
        self.readiness: Readiness | None = None
        self.routes: dict[str, Callable[[dict[str, Any]], Answer]] = {
            "/metrics": self._metrics,
            "/healthz": self._healthz,
            "/readyz": self._readyz,
        }

    def attach(self, supervisor: Supervisor) -> None:
        self.readiness = Readiness(node_checks(supervisor))
        self.supervisor = supervisor

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        route = self.routes.get(environ.get("PATH_INFO", ""))
        if route is None:
            status, headers, body = _error(
                404, "not_found", "Not found: this port serves /metrics, /healthz and /readyz."
            )
        elif method not in ("GET", "HEAD"):
            status, headers, body = _error(
                405,
                "method_not_allowed",
                f"{method} is not allowed here: use GET or HEAD.",
                ("Allow", "GET, HEAD"),
            )
        else:
            status, headers, body = route(environ)
        headers.append(("Content-Length", str(len(body))))
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        return [] if method == "HEAD" else [body]

    def _metrics(self, environ: dict[str, Any]) -> Answer:
        # prometheus-client's app answers GET only: a HEAD asks it for the GET and drops the body.
        answer: list[Any] = []
        body = b"".join(
            self.metrics_app({**environ, "REQUEST_METHOD": "GET"}, lambda s, h, *_: answer.extend((s, h)))
        )
        status, headers = answer
        return int(status.split()[0]), list(headers), body

    def _healthz(self, _environ: dict[str, Any]) -> Answer:
        supervisor = self.supervisor
        if supervisor is not None and not supervisor.healthy():
            return _json(503, {"status": "unavailable", "reason": "the supervisor's monitor thread stopped"})
        return _json(200, {"status": "ok"})  # also while starting: the port is bound before the supervisor

    def _readyz(self, _environ: dict[str, Any]) -> Answer:
        supervisor, readiness = self.supervisor, self.readiness
        if supervisor is None or readiness is None:
            problem: str | None = "the node is starting"
        elif supervisor.draining:
            problem = "the node is draining: its workers take no new tasks"
        else:
            problem = readiness.problem()
        if problem:
            return _json(503, {"status": "unavailable", "reason": problem})
        return _json(200, {"status": "ready"})


_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)


class _Server(ThreadingMixIn, WSGIServer):
    """A thread per connection, but a bounded number of them: at most `max_connections` at once and
    `per_address` from one client address (a slowloris from one host cannot take the probes' slots).
    A connection over a bound is answered 503 without a thread and closed."""

    daemon_threads = True  # a probe stuck on a dependency never holds up the node's exit
    request_queue_size = 128  # listen backlog: a burst of connections is refused here, not dropped
    max_connections = MAX_CONNECTIONS
    per_address = MAX_CONNECTIONS_PER_ADDRESS

    def server_activate(self) -> None:
        super().server_activate()
        self._lock = threading.Lock()
        self._open = 0
        self._by_address: dict[str, int] = {}
        message = "Too many connections; retry shortly."
        body = orjson.dumps({"error": {"code": "overloaded", "message": message, "param": None}})
        self._busy = _BUSY % (len(body), body)

    def process_request(self, request: Any, client_address: Any) -> None:
        address = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        with self._lock:
            mine = self._by_address.get(address, 0)
            admitted = self._open < self.max_connections and mine < self.per_address
            if admitted:
                self._open += 1
                self._by_address[address] = self._by_address.get(address, 0) + 1
        if not admitted:
            try:
                request.setblocking(False)  # never wait on a client that does not read
                request.send(self._busy)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._leave(address)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._leave(client_address[0] if isinstance(client_address, tuple) else str(client_address))

    def _leave(self, address: str) -> None:
        with self._lock:
            self._open -= 1
            left = self._by_address.get(address, 1) - 1
            if left > 0:
                self._by_address[address] = left
            else:
                self._by_address.pop(address, None)


class _QuietHandler(WSGIRequestHandler):
    """Reads the request head itself, under one deadline for all of it: the standard handler's
    socket timeout restarts with every byte, so a client sending a byte every few seconds held its
    thread for as long as it liked."""

    timeout = CLIENT_TIMEOUT  # also bounds writing the answer to a client that stops reading

    def setup(self) -> None:
        super().setup()
        self.rfile = io.BytesIO(_read_head(self.connection, time.monotonic() + self.timeout))
        self.connection.settimeout(self.timeout)  # for writing the answer

    def log_message(self, format: str, *args: Any) -> None:
        """No line per request: probes come every few seconds."""


def _read_head(connection: Any, deadline: float) -> bytes:
    """The request line and headers, read by `deadline` (b"": none in time, or too large; the
    connection is then closed unanswered). Bodies are not read: every route here is GET or HEAD."""
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head:
        left = deadline - time.monotonic()
        if left <= 0 or len(head) > MAX_HEAD_BYTES:
            return b""
        connection.settimeout(left)
        try:
            chunk = connection.recv(4096)
        except OSError:  # the deadline passed (TimeoutError) or the client went away
            return b""
        if not chunk:
            return b""
        head += chunk
    return head


def serve_node_endpoint(host: str, port: int) -> tuple[Any, NodeEndpoint]:
    """Serve a worker node's endpoint on host:port (IPv4 or IPv6) on a daemon thread; the server
    (`shutdown()`, `server_close()`) and the app (`attach` the supervisor once it runs).

    Raises OSError when the address cannot be bound (in use, not this host's). Call after
    `metrics.prepare_multiprocess_dir`: this imports prometheus-client.
    """
    import socket

    from prometheus_client import make_wsgi_app

    from reelq.metrics import node_registry

    endpoint = NodeEndpoint(make_wsgi_app(node_registry()))
    # WSGIServer binds AF_INET unless told otherwise; `::` (or any IPv6 address) needs AF_INET6.
    family, *_, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    server_class = type("NodeServer", (_Server,), {"address_family": family})
    server = server_class((sockaddr[0], port), _QuietHandler)
    server.set_app(endpoint)
    threading.Thread(target=server.serve_forever, daemon=True, name="reelq-node-endpoint").start()
    return server, endpoint
