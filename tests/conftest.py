"""Shared fixtures: a real `reelq serve` on a free port with its own REELQ_HOME."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import prometheus_client.values
import pytest

from tests import scaled as scaled_state

# prometheus-client picks its value class once, at import, from PROMETHEUS_MULTIPROC_DIR: imported
# first while a test had set it (test_fair_probes' node endpoint), every later metric of this test
# process would be a multiprocess one with no directory, and the in-process servers' counters would
# raise. Imported here, with the environment the test process started with, as `reelq serve` does.
assert prometheus_client.values.ValueClass is not None

REELQ = [sys.executable, "-m", "reelq"]

# The tiny torch pipelines gain nothing from intra-op threads, and with several test processes on two
# cores OpenMP's spinning threads only burn CPU the other tests wait for (set before torch is imported;
# the servers and ranks the tests start inherit it).
os.environ.setdefault("OMP_NUM_THREADS", "1")

# A pass started in the background by a non-interactive shell (./scripts/test runs the scaled pass
# so) inherits SIGINT ignored, and an ignored signal stays ignored across exec: every process a test
# starts could then not be interrupted (`reelq generate`'s Ctrl-C test). A handler is reset to the
# default on exec, so installing Python's own here gives the children a normal SIGINT again.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
# REELQ_TEST_SCALED=1: every server a test starts runs scaled out (PostgreSQL, Celery on RabbitMQ,
# S3 on moto's server, Redis), so the same tests prove the same behaviour (./scripts/test runs both).
SCALED = os.environ.get("REELQ_TEST_SCALED") == "1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def reelq_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELQ_")}
    if SCALED:
        env.update(_scaled_home(home))
    # Generous limits by default: most tests poll fast; the rate-limit tests set their own.
    env.update(
        {
            "REELQ_HOME": str(home),
            "REELQ_LOG_LEVEL": "WARNING",
            "REELQ_POLL_RATE": "1000",
            "REELQ_POLL_BURST": "1000",
            "REELQ_CREATE_RATE": "100000",
            "REELQ_MAX_ACTIVE_PER_KEY": "10000",
            # `reelq worker` would bind 9720 on every interface: tests that want it pick a free port.
            "REELQ_METRICS_PORT": "0",
        },
        **extra,
    )
    return env


def run_cli(
    home: Path, *args: str, env: dict[str, str] | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*REELQ, *args],
        env=env or reelq_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def create_key(home: Path, name: str = "test", env: dict[str, str] | None = None) -> str:
    """A new key in the store of `home` (or of `env`), made in this process: the same store call as
    `reelq keys create` (tested as a command in test_cli.py) without a Python start-up per key."""
    from tests.harness import store_key

    return store_key(env or reelq_env(home), name)


@dataclass
class Server:
    home: Path
    port: int
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    root_path: str = ""
    log_path: Path | None = None
    keys: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, workers: int = 2, timeout: float = 30) -> None:
        args = [*REELQ, "serve", "--port", str(self.port), "--workers", str(workers)]
        if self.root_path:
            args += ["--root-path", self.root_path]
        self.log_path = self.home / f"server-{time.time_ns()}.log"
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child, closed when it exits
        self.process = subprocess.Popen(
            args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"reelq serve exited early:\n{self.log()}")
            try:
                answer = httpx.get(f"{self.base_url}/readyz", timeout=5)
                if answer.status_code == 200:
                    return
                last = answer.text
            except httpx.TransportError as exc:
                last = exc
            time.sleep(0.1)
        raise RuntimeError(f"reelq serve did not become ready (last: {last!r}):\n{self.log()}")

    def query(self, sql: str, **params: object) -> list[tuple]:  # type: ignore[type-arg]
        """Rows of `sql` (named :params) on this server's database, SQLite or PostgreSQL alike."""
        from sqlalchemy import create_engine, text

        url = self.env.get("REELQ_DATABASE_URL") or f"sqlite:///{self.home / 'reelq.db'}"
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                return [tuple(row) for row in conn.execute(text(sql), params)]
        finally:
            engine.dispose()

    def stored_videos(self, task_id: str = "") -> dict[str, bytes]:
        """This server's stored videos (key -> bytes), whose key starts with `task_id`: the files under
        REELQ_HOME/videos, or the objects under the S3 prefix when scaled out (keys as the store names
        them, `<task_id>-<attempt>.mp4`)."""
        storage_url = self.env.get("REELQ_STORAGE_URL", "")
        if not storage_url.startswith("s3://"):
            videos = self.home / "videos"
            return {p.name: p.read_bytes() for p in sorted(videos.glob(f"{task_id}*.mp4")) if p.is_file()}
        import boto3

        from reelq.storage.s3 import parse_s3_url

        bucket, prefix = parse_s3_url(storage_url)
        s3 = boto3.client(
            "s3",
            endpoint_url=self.env["AWS_ENDPOINT_URL"],
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name=self.env["AWS_DEFAULT_REGION"],
        )
        found: dict[str, bytes] = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + task_id):
            for item in page.get("Contents", []):
                body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                found[item["Key"][len(prefix) :]] = body
        return found

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def new_key(self, name: str = "test") -> str:
        key = create_key(self.home, name, self.env)
        self.keys.append(key)
        return key

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.keys[0]}"}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30)


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Factory: make_server(workers=2, root_path="", **REELQ_env) -> a started Server with one key."""
    servers: list[Server] = []

    def factory(workers: int = 2, root_path: str = "", start: bool = True, **env: str) -> Server:
        home = tmp_path / f"home{len(servers)}"
        home.mkdir()
        server = Server(home=home, port=free_port(), env=reelq_env(home, **env), root_path=root_path)
        servers.append(server)
        server.new_key("first")
        if start:
            server.start(workers=workers)
        return server

    yield factory
    for server in servers:
        server.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the many read-only API checks in a module (faster than one per test)."""
    home = tmp_path_factory.mktemp("shared")
    server = Server(home=home, port=free_port(), env=reelq_env(home, REELQ_ALLOW_PRIVATE_URLS="true"))
    server.new_key("a")
    server.new_key("b")
    server.start(workers=2)
    yield server
    server.stop(signal.SIGKILL)


@pytest.fixture
def make_app_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """make_server's in-process tier (tests/harness.py): the same factory and Server interface, the
    node on threads of this process (scaled out with REELQ_TEST_SCALED=1, Celery workers on threads)."""
    from tests.harness import AppServer

    servers: list[Server] = []

    def factory(workers: int = 2, root_path: str = "", start: bool = True, **env: str) -> Server:
        home = tmp_path / f"app{len(servers)}"
        home.mkdir()
        server = AppServer(home=home, port=free_port(), env=reelq_env(home, **env), root_path=root_path)
        servers.append(server)
        server.new_key("first")
        if start:
            server.start(workers=workers)
        return server

    yield factory
    for server in servers:
        server.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """shared_server's in-process tier: one node for a module's read-mostly checks, keys "a" and "b"."""
    from tests.harness import AppServer

    home = tmp_path_factory.mktemp("app")
    server = AppServer(home=home, port=free_port(), env=reelq_env(home, REELQ_ALLOW_PRIVATE_URLS="true"))
    server.new_key("a")
    server.new_key("b")
    server.start(workers=2)
    yield server
    server.stop(signal.SIGKILL)


def is_our_video_url(server: Server, task_id: str, url: str) -> bool:
    """Whether `url` is the link this server hands out for `task_id`'s video: its own signed
    `/v1/files` link, or a presigned link to the task's object when the videos are in S3."""
    if server.env.get("REELQ_STORAGE_URL", "").startswith("s3://"):
        presigned = url.startswith(server.env["AWS_ENDPOINT_URL"]) and "X-Amz-Signature" in url
        return presigned and f"/{task_id}-" in url
    return url.startswith(f"{server.base_url}/v1/files/{task_id}.mp4?")


def wait_terminal(client: httpx.Client, task_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        try:
            body = client.get(f"/v1/result/{task_id}").json()
        except httpx.RemoteProtocolError:
            # The server closed the kept-alive connection as this read went out on it (a client
            # stalled past uvicorn's keep-alive on a loaded machine): read again, as any client would.
            continue
        if body["status"] in ("completed", "failed"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} not terminal after {timeout}s: {body}")


# ---- tiers (docs/testing.md) and scaled mode --------------------------------------------------------


# The tier of a test that names none, from the servers it asks for (docs/testing.md).
PROCESS_FIXTURES = {"make_server", "shared_server"}
SERVICE_FIXTURES = {"make_app_server", "app_server"}
TIERS = ("unit", "service", "process")
# The tier of a module's tests that neither name one nor ask for a server fixture (a new module marks
# itself with `pytestmark`; tests here that need a process use make_server and are marked by it).
MODULE_TIERS = {
    "unit": {
        "test_catalog", "test_docs", "test_domain", "test_gpus", "test_images",
        "test_media", "test_prompt_layout", "test_ratelimit", "test_settings", "test_synthetic",
        "test_validation_properties",
    },
    "service": {
        "test_api", "test_batcher", "test_client", "test_doorbell", "test_e2e_video", "test_fastread",
        "test_fetch",
        "test_limits", "test_longpoll", "test_manage", "test_manage_store", "test_openai_surface",
        "test_pg_fastread", "test_quota_counts", "test_sdk_e2e", "test_sdk_manage", "test_store",
        "test_transports", "test_vidu_platform_surface", "test_webhook_outbox", "test_webhooks",
    },
    "process": {
        "test_cli", "test_connections", "test_diffusers_engine", "test_faults", "test_fuzz",
        "test_hardening", "test_image_costs", "test_lifecycle", "test_metrics", "test_operations",
        "test_pg_celery", "test_relay", "test_render_deadline", "test_s3", "test_scaled_faults",
        "test_shared_limits", "test_web_page", "test_worker_metrics", "test_worker_probes",
    },
}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        found = getattr(item, "module", None)
        module = found.__name__.rsplit(".", 1)[-1] if found is not None else ""
        if any(item.get_closest_marker(tier) for tier in TIERS):
            continue
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & PROCESS_FIXTURES:
            item.add_marker(pytest.mark.process)
        elif fixtures & SERVICE_FIXTURES:
            item.add_marker(pytest.mark.service)
        else:
            for tier, modules in MODULE_TIERS.items():
                if module in modules:
                    item.add_marker(getattr(pytest.mark, tier))
    if not SCALED:
        return
    skip = pytest.mark.skip(reason="checks the embedded store or local files (REELQ_TEST_SCALED=1)")
    for item in items:
        if item.get_closest_marker("embedded_only"):
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _drop_the_template() -> Iterator[None]:
    """The migrated database this test process copied PostgreSQL databases from, if any
    (tests/scaled.migrated_template), dropped at the session's end."""
    yield
    if scaled_state.TEMPLATE is None:
        return
    from sqlalchemy import create_engine, text

    from tests.scaled import POSTGRES_ADMIN_URL

    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {scaled_state.TEMPLATE.rsplit('/', 1)[1]} WITH (FORCE)"))
    admin.dispose()


@pytest.fixture(scope="session", autouse=True)
def _scaled_services() -> Iterator[None]:
    """In scaled mode: one moto S3 server and bucket for the session; databases dropped at the end."""
    if not SCALED:
        yield
        return
    import boto3
    from moto.server import ThreadedMotoServer

    from tests.scaled import BROKER_URL

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    aws = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    boto3.client(
        "s3",
        endpoint_url=aws["AWS_ENDPOINT_URL"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket="reelq-scaled")
    scaled_state.ENV.update(aws, REELQ_BROKER_URL=BROKER_URL, REELQ_REDIS_URL="redis://127.0.0.1:6379/0")
    # The in-process nodes' S3 clients (tests/harness.py) find their endpoint and credentials in this
    # process's environment, as a `reelq serve` finds them in its own: the same for every node here.
    os.environ.update(aws)
    yield
    server.stop()
    from sqlalchemy import create_engine, text

    from tests.scaled import POSTGRES_ADMIN_URL

    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for url in [home_env["REELQ_DATABASE_URL"] for home_env in scaled_state.HOMES.values()]:
            conn.execute(text(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)"))
    admin.dispose()


def _scaled_home(home: Path) -> dict[str, str]:
    """The scaled-out services of one REELQ_HOME: its own database (a copy of the migrated template),
    queue, bucket prefix and Redis prefix, made the first time the home is used."""
    import hashlib

    from sqlalchemy import create_engine, make_url, text

    from tests.scaled import POSTGRES_ADMIN_URL

    found = scaled_state.HOMES.get(str(home))
    if found is not None:
        return found
    tag = hashlib.sha256(f"{home}{time.time_ns()}".encode()).hexdigest()[:12]
    name = f"reelq_t_{tag}"
    template = scaled_state.migrated_template()
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name} TEMPLATE {template}"))
    admin.dispose()
    env = {
        **scaled_state.ENV,
        "REELQ_DATABASE_URL": make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(False),
        "REELQ_QUEUE": f"reelq-t-{tag}",
        "REELQ_STORAGE_URL": f"s3://reelq-scaled/{tag}",
        "REELQ_REDIS_PREFIX": f"reelq-t-{tag}:",
    }
    scaled_state.HOMES[str(home)] = env
    home.mkdir(parents=True, exist_ok=True)
    return env


# ---- the browser ------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's Chromium driven by Playwright (never `playwright install`: no browser download).

    The page's CSP has no 'unsafe-eval': give `page.wait_for_function` a function ("() => ..."),
    never a bare expression, which Playwright evaluates with eval() from its second poll on (a test
    that passes only when the first poll is already true).
    """
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail(
                "chromium is not installed (./scripts/test installs it): the browser test must run in CI"
            )
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # --no-sandbox: CI containers run as root, where Chromium's sandbox cannot start.
        instance = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield instance
        instance.close()
