"""Shared fixtures: a real `reelq serve` on a free port with its own REELQ_HOME."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

REELQ = [sys.executable, "-m", "reelq"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def reelq_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELQ_")}
    # Generous limits by default: most tests poll fast; the rate-limit tests set their own.
    env.update(
        {
            "REELQ_HOME": str(home),
            "REELQ_LOG_LEVEL": "WARNING",
            "REELQ_POLL_RATE": "1000",
            "REELQ_POLL_BURST": "1000",
            "REELQ_CREATE_RATE": "100000",
            "REELQ_MAX_ACTIVE_PER_KEY": "10000",
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


def create_key(home: Path, name: str = "test") -> str:
    out = run_cli(home, "keys", "create", "--name", name).stdout
    return out.strip().splitlines()[-1]


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
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"reelq serve exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"reelq serve did not become ready:\n{self.log()}")

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
        key = create_key(self.home, name)
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


def wait_terminal(client: httpx.Client, task_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/result/{task_id}").json()
        if body["status"] in ("completed", "failed"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} not terminal after {timeout}s: {body}")
