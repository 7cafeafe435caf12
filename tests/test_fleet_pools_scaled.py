"""Pools on the scaled variant (PostgreSQL + RabbitMQ, Celery render workers): each pool consumes its
own queue (`<REELQ_QUEUE>.<pool>`), so a task of a pool whose workers are not running waits queued
(its message in its pool's queue, not taken and dropped by another pool's worker) and runs when they
start."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from tests.conftest import Server, free_port, reelq_env, run_cli, wait_terminal
from tests.scaled import BROKER_URL, fresh_postgres_database, fresh_queue, queue_depth

pytestmark = [pytest.mark.process]
pytest.importorskip("celery")


@pytest.fixture
def database_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture
def queue_name() -> Iterator[str]:
    with fresh_queue() as name:
        yield name
        import kombu

        with kombu.Connection(BROKER_URL, connect_timeout=2) as conn:
            for pool in ("small", "big"):
                with suppress(Exception):
                    conn.default_channel.queue_delete(f"{name}.{pool}")


def test_each_pool_has_its_queue_and_waits_for_its_workers(
    tmp_path: Path, database_url: str, queue_name: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    models = tmp_path / "models.toml"
    models.write_text(
        '[models.viduq3-turbo]\nengine = "synthetic"\npool = "small"\n'
        '[models.viduq3-pro]\nengine = "synthetic"\npool = "big"\n'
    )
    env = reelq_env(
        home,
        REELQ_DATABASE_URL=database_url,
        REELQ_BROKER_URL=BROKER_URL,
        REELQ_QUEUE=queue_name,
        REELQ_MODELS=str(models),
    )
    run_cli(home, "db", "upgrade", env=env)
    key = run_cli(home, "keys", "create", env=env).stdout.strip().splitlines()[-1]
    servers: list[Server] = []

    def node(workers: int, **extra: str) -> Server:
        server = Server(home=home, port=free_port(), env={**env, **extra})
        server.keys.append(key)
        servers.append(server)
        server.start(workers=workers)
        return server

    try:
        api = node(0)
        node(1, REELQ_POOLS="small")  # the small pool's node only
        with api.client() as client:
            body = {"prompt": "pooled", "duration": 1, "resolution": "540p"}
            big = client.post("/v1/vidu/videos", json={**body, "model": "viduq3-pro"}).json()["id"]
            small = client.post("/v1/vidu/videos", json={**body, "model": "viduq3-turbo"}).json()["id"]
            assert wait_terminal(client, small, timeout=60)["status"] == "completed"
            # The older task of the other pool was never taken: queued, its message in its pool's queue.
            assert client.get(f"/v1/result/{big}").json()["status"] == "queued"
            assert queue_depth(f"{queue_name}.big") >= 1
            node(1, REELQ_POOLS="big")
            assert wait_terminal(client, big, timeout=60)["status"] == "completed"
    finally:
        for server in servers:
            server.stop(signal.SIGKILL)
