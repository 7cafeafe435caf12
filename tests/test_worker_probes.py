"""`reelq worker`'s probes on its metrics port: `/healthz` (liveness), `/readyz` (readiness), 404 elsewhere.

Real `reelq worker` processes, each failure made for real: the database behind a TCP relay the test cuts,
a broker URL on a closed port, render workers killed as fast as the supervisor restarts them, the
temporary renders on a full filesystem. Both modes (REELQ_TEST_SCALED=1: PostgreSQL, Celery on
RabbitMQ, S3 on moto).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests import test_hardening
from tests.conftest import Server, free_port, reelq_env
from tests.test_hardening import fill, wait_for
from tests.test_worker_metrics import Worker

pytestmark = pytest.mark.e2e

small_fs = test_hardening.small_fs  # a real 20 MB tmpfs (needs root, as CI has)
# /readyz waits for its checks at most 2 s (dispatch/probes.py READY_WAIT). The bound a probe's answer is
# held to only rules out waiting for the checks themselves (a hung database: for good), so it is far
# from those 2 s, which a loaded machine stretches. That the wait was the 2 s is read from the answers:
# a round still running says "... did not answer within 2 s"; one that ended in time gives its own reason.
PROBE_BUDGET = 10.0


def get(worker: Worker, path: str, method: str = "GET") -> tuple[httpx.Response, float]:
    started = time.monotonic()
    answer = httpx.request(method, f"http://127.0.0.1:{worker.port}{path}", timeout=30)
    return answer, time.monotonic() - started


def wait_ready(worker: Worker, timeout: float = 60) -> None:
    def ready() -> bool:
        if worker.process.poll() is not None:
            raise AssertionError(f"reelq worker exited: {worker.log_path.read_text(errors='replace')}")
        try:
            return get(worker, "/readyz")[0].status_code == 200
        except httpx.TransportError:
            return False

    wait_for(ready, timeout)


def wait_unready(worker: Worker, timeout: float = 30, each: Callable[[], None] = lambda: None) -> str:
    """Probe until /readyz says 503 (past start-up); its reason. Every probe answers within PROBE_BUDGET."""
    slowest = 0.0

    def unready() -> str | None:
        nonlocal slowest
        each()
        if worker.process.poll() is not None:
            raise AssertionError(f"reelq worker exited: {worker.log_path.read_text(errors='replace')}")
        try:
            answer, took = get(worker, "/readyz")
        except httpx.TransportError:  # not listening yet
            return None
        slowest = max(slowest, took)
        assert took < PROBE_BUDGET, f"/readyz took {took:.2f} s"
        if answer.status_code == 200:
            return None
        assert answer.status_code == 503, answer.text
        body = answer.json()
        assert body["status"] == "unavailable" and set(body) == {"status", "reason"}, body
        return None if body["reason"] == "the node is starting" else str(body["reason"])

    reason = wait_for(unready, timeout)
    print(f"slowest /readyz while it turned: {slowest * 1000:.0f} ms; reason: {reason}")
    return reason


def uncached(worker: Worker, rounds: int = 3) -> list[tuple[str, float]]:
    """(reason, seconds) of a few /readyz answers that each ran the checks anew (past the 1 s cache)."""
    answers = []
    for _ in range(rounds):
        time.sleep(1.1)
        answer, took = get(worker, "/readyz")
        assert answer.status_code == 503
        answers.append((str(answer.json()["reason"]), took))
    print(f"/readyz uncached, slowest of {rounds}: {max(t for _, t in answers) * 1000:.0f} ms")
    return answers


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """`node(**env)`: a `reelq worker -n 1` on a home of its own, its port on the loopback."""
    started: list[Worker] = []

    def factory(home: Path | None = None, **env: str) -> Worker:
        home = home or tmp_path / f"home-{len(started)}"
        home.mkdir(exist_ok=True)
        server = Server(home=home, port=0, env=reelq_env(home, **env))  # never started: home and env only
        worker = Worker(server)
        started.append(worker)
        return worker

    yield factory
    for worker in started:
        worker.kill()


class Relay:
    """A TCP relay to PostgreSQL that the test can cut (every connection closed, the port no longer open)
    or hang (connections stay open, nothing goes through: a database that stopped answering)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.hung = False
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                return
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if not self.hung:
                    sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def hang(self) -> None:
        self.hung = True

    def cut(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() above
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@pytest.mark.scaled  # ready means its store and, scaled out, its broker answer
def test_a_healthy_node_is_live_and_ready_and_serves_three_paths(node: Callable[..., Worker]) -> None:
    worker = node()
    wait_ready(worker)
    answer, _ = get(worker, "/healthz")
    assert (answer.status_code, answer.json()) == (200, {"status": "ok"})
    answer, took = get(worker, "/readyz")
    assert (answer.status_code, answer.json()) == (200, {"status": "ready"})
    assert answer.headers["content-type"] == "application/json" and took < PROBE_BUDGET

    metrics, _ = get(worker, "/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert 'reelq_worker_processes{kind="render"} 1.0' in metrics.text

    for path in ("/healthz", "/readyz", "/metrics"):  # HEAD, as some probes send: the headers, no body
        head, _ = get(worker, path, "HEAD")
        assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0

    missing, _ = get(worker, "/")  # not the metrics any more: a mistyped probe or scrape path fails
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    refused, _ = get(worker, "/readyz", "POST")
    assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD"
    assert refused.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.scaled  # the S3 storage's readiness must check the local temporary renders too
def test_readyz_says_when_the_temporary_renders_disk_is_full(
    node: Callable[..., Worker], small_fs: Path, tmp_path: Path
) -> None:
    """Renders are written to a local file first (S3 included): a full disk there fails every one."""
    home = tmp_path / "home"
    home.mkdir()
    (small_fs / "videos").mkdir()
    (home / "videos").symlink_to(small_fs / "videos")  # the videos and their temp files only
    worker = node(home)
    wait_ready(worker)
    filler = fill(small_fs / "filler")
    reason = wait_unready(worker)
    assert reason.startswith("storage for temporary renders is full ("), reason
    filler.unlink()
    wait_ready(worker, timeout=10)  # room again: ready again, no restart


@pytest.mark.parametrize("failure", ["cut", "hang"])
def test_readyz_says_when_the_database_is_unreachable(
    node: Callable[..., Worker], tmp_path: Path, failure: str
) -> None:
    """Refused at once, or no answer at all: /readyz says so within its 2 s either way."""
    from sqlalchemy import make_url

    from tests.scaled import fresh_postgres_database

    with fresh_postgres_database(migrated=True) as direct:
        url = make_url(direct)
        relay = Relay((url.host or "127.0.0.1", url.port or 5432))
        relayed = url.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)
        home = tmp_path / "home"
        home.mkdir()
        worker = node(home, REELQ_DATABASE_URL=relayed)
        wait_ready(worker)
        if failure == "cut":
            relay.cut()
            assert wait_unready(worker) == "database unavailable: OperationalError"
            # Refused at once, reported at once: each fresh round ended with its own reason within the
            # probe's 2 s wait (a round with retry sleeps would still be running: "did not answer").
            answers = uncached(worker)
            assert {reason for reason, _ in answers} == {"database unavailable: OperationalError"}, answers
            assert max(took for _, took in answers) < PROBE_BUDGET
        else:
            relay.hang()  # the round of checks waits on the database for good; each probe for 2 s
            assert wait_unready(worker) == "the database did not answer within 2 s"
            # A probe that found the round hung waited its 2 s (a lower bound: safe however slow the
            # machine) and answered without it: the reason says so. (A round can also end by the
            # connection's own timeouts meanwhile; the next probe then has that round's reason.)
            hung = "the database did not answer within 2 s"
            answers = uncached(worker)
            assert {r for r, _ in answers} <= {hung, "database unavailable: OperationalError"}, answers
            assert any(reason == hung for reason, _ in answers), answers
            assert all(took >= 2.0 for reason, took in answers if reason == hung), answers
            assert max(took for _, took in answers) < PROBE_BUDGET, answers
        assert get(worker, "/healthz")[0].status_code == 200  # alive: restarting the pod would not help
        worker.kill()  # before its database is dropped


def test_readyz_says_when_the_broker_is_unreachable(node: Callable[..., Worker]) -> None:
    pytest.importorskip("celery")
    worker = node(REELQ_BROKER_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}//")
    assert wait_unready(worker, timeout=60) == "broker unavailable: OperationalError"
    # Refused at once, reported at once: each fresh round ended within the probe's 2 s wait (its reason is
    # the broker's, not "did not answer within 2 s"); counted by reason, not timed.
    answers = uncached(worker)
    assert {reason for reason, _ in answers} == {"broker unavailable: OperationalError"}, answers
    # The Celery worker itself waits the broker out (it retries forever): alive, so only the probe's
    # own connection attempt can tell.
    assert worker.render_pids() and get(worker, "/healthz")[0].status_code == 200


@pytest.mark.scaled  # the render worker processes are the dispatch's (Celery's scaled out)
def test_readyz_says_when_no_render_worker_stays_up(node: Callable[..., Worker]) -> None:
    worker = node()
    wait_ready(worker)

    def kill_render_workers() -> None:  # each dies young: the supervisor backs off and counts a failure
        for pid in worker.render_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    reason = wait_unready(worker, each=kill_render_workers)
    assert reason.startswith("none of this node's 1 render worker process is running"), reason
    # A restarted worker is alive at moments between the kills, yet not ready until it outlives the
    # quick-death window: the answer must not flap while the workers crash-loop.
    for _ in range(10):
        kill_render_workers()
        assert get(worker, "/readyz")[0].status_code == 503
        time.sleep(0.2)
    assert get(worker, "/healthz")[0].status_code == 200  # the supervisor runs and restarts them
    wait_ready(worker, timeout=40)  # left alone, a restarted worker outlives the window: ready again
