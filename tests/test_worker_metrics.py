"""`reelq worker`'s own metrics port: a render node without an API process is scraped like one with.

Real processes only: a `reelq serve --workers 0` takes the creates, a `reelq worker` renders them and
serves its metrics (prometheus-client's multiprocess collector and HTTP server) on a port of its own.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REELQ, Server, create_key, free_port, reelq_env, run_cli, wait_terminal
from tests.test_hardening import wait_for
from tests.test_metrics import Samples, scrape_url, value

pytestmark = pytest.mark.e2e

BODY = {"model": "viduq3-turbo", "prompt": "a node-local lighthouse", "duration": 1, "resolution": "540p"}
MODEL = {"model": "viduq3-turbo", "engine": "synthetic"}
scrape = scrape_url  # of a URL here: a worker node's port, or an API node's /metrics


def run_dir(home: Path) -> Path:
    """Where a node on this home keeps its metric files (REELQ_HOME/run, or a short temp path)."""
    from reelq.config import load_settings

    return load_settings(home=home).run_dir


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


class Worker:
    """A `reelq worker -n 1` process with its metrics on a free port of the loopback."""

    def __init__(self, server: Server, **env: str) -> None:
        self.port = free_port()
        self.log_path = server.home / f"worker-{time.time_ns()}.log"
        env = {"REELQ_METRICS_PORT": str(self.port), "REELQ_METRICS_HOST": "127.0.0.1", **env}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [*REELQ, "worker", "-n", "1"],
                env={**server.env, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.metrics_dir = run_dir(server.home) / f"metrics-{self.process.pid}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def scrape(self) -> Samples:
        return scrape(self.url)

    def wait(self, check: Callable[[Samples], bool], timeout: float = 30) -> Samples:
        def ready() -> Samples | None:
            if self.process.poll() is not None:
                raise AssertionError(f"reelq worker exited: {self.log_path.read_text(errors='replace')}")
            try:
                found = self.scrape()
            except httpx.TransportError:
                return None
            return found if check(found) else None

        return wait_for(ready, timeout)

    def render_pids(self) -> list[int]:
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == self.process.pid and b"reelq.worker.process" in cmdline:
                pids.append(int(entry))
        return pids

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def workers() -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def factory(server: Server, **env: str) -> Worker:
        worker = Worker(server, **env)
        started.append(worker)
        return worker

    yield factory
    for worker in started:
        worker.kill()


def _render_on_the_worker_node(server: Server, worker: Worker, kill_mid_render: bool) -> None:
    """One task created on the API, rendered by the worker node; what each node's scrape says."""
    running = {"model": "viduq3-turbo", "engine": "synthetic"}
    idle = worker.wait(lambda s: value(s, "reelq_worker_processes", kind="render") == 1)
    # Node-local only: the deployment-wide gauges (counted from the rows) are the API's to export, so
    # a sum over every scraped instance never counts them twice.
    assert not names(idle) & {"reelq_queue_depth", "reelq_renders_running", "reelq_database_up"}
    assert not any(name.startswith(("reelq_tasks_created", "reelq_http_")) for name in names(idle))
    assert httpx.get(f"http://127.0.0.1:{worker.port}/healthz", timeout=5).status_code == 200  # liveness

    with server.client() as client:
        task_id = client.post("/v1/vidu/videos", json=BODY).json()["id"]
        # Mid-render the node says so (a gauge summed over its live worker processes).
        worker.wait(lambda s: value(s, "reelq_worker_renders_running", **running) == 1)
        if kill_mid_render:
            [pid] = worker.render_pids()
            os.kill(pid, signal.SIGKILL)
            # The dead process's in-flight render stops counting (mark_process_dead), the supervisor
            # counts the restart, and a fresh process takes its place.
            worker.wait(
                lambda s: (
                    value(s, "reelq_worker_restarts_total", kind="render") == 1
                    and value(s, "reelq_worker_processes", kind="render") == 1
                    and value(s, "reelq_worker_renders_running", **running) in (0, 1)
                )  # 1: the retry began
            )
        assert wait_terminal(client, task_id, timeout=90)["status"] == "completed"

    samples = worker.wait(lambda s: value(s, "reelq_tasks_completed_total", **MODEL) == 1)
    assert value(samples, "reelq_worker_renders_running", **running) == 0
    assert value(samples, "reelq_tasks_failed_total", **MODEL) == 0
    assert value(samples, "reelq_render_seconds_count", **MODEL) == 1  # the attempt that finished, once
    assert value(samples, "reelq_render_seconds_sum", **MODEL) >= 1.0  # REELQ_SYNTHETIC_DELAY
    assert value(samples, "reelq_render_seconds_bucket", **MODEL, le="+Inf") == 1
    assert value(samples, "reelq_queue_wait_seconds_count", **MODEL) == 1  # first claims only
    assert value(samples, "reelq_worker_restarts_total", kind="render") == int(kill_mid_render)

    # The API node counts the create and the rows; the render is not its to count: summed over both
    # nodes, one task created and one completed.
    api = scrape(f"{server.base_url}/metrics")
    assert value(api, "reelq_tasks_created_total", **MODEL) == 1
    assert value(api, "reelq_tasks_completed_total", **MODEL) == 0
    assert value(api, "reelq_queue_depth") == 0 and value(api, "reelq_database_up") == 1
    assert value(api, "reelq_worker_processes", kind="render") == 0  # its own: --workers 0

    # A stop drains the node, closes the port and removes its metric files.
    assert worker.metrics_dir.is_dir()
    worker.process.send_signal(signal.SIGTERM)
    # Nothing is in flight, so this is quick; but 30 s is also the drain window's default, so wait
    # well past it (a loaded machine must not turn a drain into a failure here).
    assert worker.process.wait(timeout=120) == 0
    assert not worker.metrics_dir.exists()
    with pytest.raises(httpx.TransportError):
        httpx.get(worker.url, timeout=2)


@pytest.mark.scaled  # `reelq worker` runs the dispatch in use (Celery scaled out): its node's metrics
def test_a_worker_node_serves_its_render_metrics_and_a_dead_process_stops_counting(
    make_server: Callable[..., Server], workers: Callable[..., Worker]
) -> None:
    """On the embedded store (and PostgreSQL + Celery under REELQ_TEST_SCALED=1)."""
    server = make_server(workers=0)
    worker = workers(server, REELQ_SYNTHETIC_DELAY="1.5", REELQ_LEASE_SECONDS="5")
    _render_on_the_worker_node(server, worker, kill_mid_render=True)


@pytest.fixture
def celery_server(tmp_path: Path) -> Iterator[Server]:
    """A `reelq serve --workers 0` on a fresh PostgreSQL database, publishing to a queue of its own."""
    pytest.importorskip("celery")
    from tests.scaled import BROKER_URL, fresh_postgres_database, fresh_queue

    with fresh_postgres_database(migrated=True) as url, fresh_queue() as queue:
        home = tmp_path / "celery-home"
        home.mkdir()
        env = reelq_env(home, REELQ_DATABASE_URL=url, REELQ_BROKER_URL=BROKER_URL, REELQ_QUEUE=queue)
        server = Server(home=home, port=free_port(), env=env)
        server.keys.append(create_key(home, env=env))
        server.start(workers=0)
        try:
            yield server
        finally:
            server.stop(signal.SIGKILL)


def test_a_celery_worker_node_serves_its_render_metrics(
    celery_server: Server, workers: Callable[..., Worker]
) -> None:
    worker = workers(celery_server, REELQ_SYNTHETIC_DELAY="1")
    _render_on_the_worker_node(celery_server, worker, kill_mid_render=False)


def test_a_busy_metrics_port_stops_the_worker_with_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # At INFO a node logs each render worker it starts ("started render worker w0 (pid ...)").
        env = reelq_env(
            home, REELQ_METRICS_PORT=str(port), REELQ_METRICS_HOST="127.0.0.1", REELQ_LOG_LEVEL="INFO"
        )
        done = run_cli(home, "worker", "-n", "1", env=env, check=False, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == [
        f"reelq: cannot serve metrics on 127.0.0.1:{port}: Address already in use (choose another with "
        "--metrics-port/REELQ_METRICS_PORT or --metrics-host/REELQ_METRICS_HOST, or port 0 to serve none)"
    ], done.stderr
    # Refused before any render worker started: read from what the node said (that one line, even at
    # INFO) and left (no database opened), not from how long it took.
    assert "render worker" not in done.stdout + done.stderr
    assert not (home / "reelq.db").exists()
    assert not list(run_dir(home).glob("metrics-*"))  # the metric files' directory went with it


def test_metrics_port_settings() -> None:
    from reelq.config import ConfigError, load_settings

    assert load_settings().metrics_port == 9720
    assert load_settings().metrics_host == "0.0.0.0"
    assert load_settings(metrics_port="off").metrics_port == 0
    assert load_settings(metrics_port="0").metrics_port == 0
    with pytest.raises(ConfigError, match="REELQ_METRICS_PORT"):
        load_settings(metrics_port="70000")
