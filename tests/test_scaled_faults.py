"""The scale-out proof under faults (issue 12 §6), on one machine with every real service at once.

Two API processes and two Celery render worker processes on PostgreSQL, RabbitMQ, S3 (moto's server)
and Redis; 40 tasks created through both APIs while one render worker is kill -9'd mid-render, the
broker's connections are closed (`rabbitmqctl close_all_connections`) and one API process is
restarted. Every task must end `completed`, each presigned link must download a playable MP4, no task
may be rendered to completion twice (one object per task in the bucket), and a poller watching every
task through both APIs must never see a status go backwards.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reelq.database import TaskStore, make_engine
from tests.conftest import Server, create_key, free_port, reelq_env
from tests.scaled import fresh_postgres_database, private_vhost
from tests.test_s3 import aws_env
from tests.videos import decode_frames

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")
redis = pytest.importorskip("redis")

pytestmark = pytest.mark.e2e
TASKS = 40
RANK = {"queued": 0, "processing": 1, "completed": 2, "failed": 2}


@pytest.fixture
def s3_endpoint() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def _redis_url() -> str:
    url = "redis://127.0.0.1:6379/0"
    try:
        redis.Redis.from_url(url, socket_timeout=2).ping()
    except Exception as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"Redis is required under CI=true: {exc}")
        pytest.skip(f"Redis not reachable: {exc}")
    return url


class Watcher(threading.Thread):
    """Polls every task through both APIs and records any status that goes backwards."""

    def __init__(self, servers: list[Server], key: str) -> None:
        super().__init__(daemon=True)
        self.servers, self.key = servers, key
        self.ids: list[str] = []
        self.seen: dict[str, int] = {}
        self.backwards: list[tuple[str, str, str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        while not self.stop.is_set():
            for server in self.servers:
                for task_id in list(self.ids):
                    try:
                        answer = httpx.get(
                            f"{server.base_url}/v1/result/{task_id}", headers=headers, timeout=2
                        )
                    except httpx.HTTPError:
                        continue  # the API being restarted
                    if answer.status_code != 200:
                        continue
                    status = answer.json()["status"]
                    rank = RANK[status]
                    if rank < self.seen.get(task_id, 0):
                        self.backwards.append((task_id, server.base_url, status))
                    self.seen[task_id] = max(rank, self.seen.get(task_id, 0))
            time.sleep(0.05)


def test_forty_tasks_survive_a_killed_worker_a_broker_reset_and_an_api_restart(
    tmp_path: Path, s3_endpoint: str
) -> None:
    if shutil.which("rabbitmqctl") is None and os.environ.get("CI", "").lower() != "true":
        pytest.skip("rabbitmqctl not installed")
    redis_url = _redis_url()
    bucket = f"reelq-{uuid.uuid4().hex[:12]}"
    aws = aws_env(s3_endpoint)
    boto3.client("s3", **_client_args(aws)).create_bucket(Bucket=bucket)
    with fresh_postgres_database(migrated=True) as database_url, private_vhost() as broker_url:
        home = tmp_path / "home"
        home.mkdir()
        env = reelq_env(
            home,
            REELQ_DATABASE_URL=database_url,
            REELQ_BROKER_URL=broker_url,
            REELQ_QUEUE="reelq-faults",
            REELQ_STORAGE_URL=f"s3://{bucket}/videos",
            REELQ_REDIS_URL=redis_url,
            REELQ_REDIS_PREFIX=f"reelq-test-{uuid.uuid4().hex[:8]}:",
            REELQ_SYNTHETIC_DELAY="1",
            REELQ_LEASE_SECONDS="4",
            REELQ_QUEUED_REDISPATCH_SECONDS="2",
            **aws,
        )
        key = create_key(home, "faults", env=env)
        node = Server(home=home, port=free_port(), env=env, keys=[key])  # API + 2 render workers
        api = Server(home=home, port=free_port(), env=env, keys=[key])  # a second API replica
        watcher = Watcher([node, api], key)
        try:
            node.start(workers=2, timeout=60)
            api.start(workers=0, timeout=60)
            watcher.start()
            store = TaskStore(make_engine(database_url))
            body = {
                "model": "viduq3-turbo",
                "prompt": "a storm over the sea",
                "duration": 1,
                "resolution": "540p",
            }
            with node.client() as cn, api.client() as ca:
                for i in range(TASKS):
                    answer = (cn if i % 2 else ca).post("/v1/vidu/videos", json=body)
                    assert answer.status_code == 200, answer.text
                    watcher.ids.append(answer.json()["id"])
                # 1. A render worker dies mid-render.
                victim = _wait_for_processing(store, watcher.ids)
                os.kill(int(victim.split(":")[1]), signal.SIGKILL)
                # 2. The broker drops every connection (of this test's virtual host: the tests
                # running beside it keep theirs).
                vhost = broker_url.rsplit("/", 1)[1]
                subprocess.run(
                    ["rabbitmqctl", "close_all_connections", "--vhost", vhost, "reelq fault test"],
                    check=True,
                    capture_output=True,
                    timeout=60,
                )
                # 3. One API process is restarted.
                api.stop(signal.SIGKILL)
                api.start(workers=0, timeout=60)
                bodies = [_wait_done(cn, task_id) for task_id in watcher.ids]
        finally:
            watcher.stop.set()
            watcher.join(timeout=5)
            api.stop(signal.SIGKILL)
            node.stop(signal.SIGKILL)
        assert [b["status"] for b in bodies] == ["completed"] * TASKS, [
            b for b in bodies if b["status"] != "completed"
        ]
        assert watcher.backwards == []
        # One object per task: a worker that lost its task never left a second video behind.
        listed = boto3.client("s3", **_client_args(aws)).list_objects_v2(Bucket=bucket, Prefix="videos/")
        objects = [item["Key"] for item in listed.get("Contents", [])]
        assert len(objects) == TASKS and len({o.rsplit("-", 1)[0] for o in objects}) == TASKS
        for task in bodies[:: TASKS // 8]:  # presigned links work without a key and decode
            video = httpx.get(task["video_url"], timeout=30)
            assert video.status_code == 200
            assert len(decode_frames(video.content)) == 24
        rows = [store.get_task(i) for i in watcher.ids]
        assert max(r.attempts for r in rows if r) >= 2  # the killed render was run again


def _client_args(aws: dict[str, str]) -> dict[str, str]:
    return {
        "endpoint_url": aws["AWS_ENDPOINT_URL"],
        "aws_access_key_id": aws["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": aws["AWS_SECRET_ACCESS_KEY"],
        "region_name": aws["AWS_DEFAULT_REGION"],
    }


def _wait_for_processing(store: TaskStore, ids: list[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for task_id in ids:
            row = store.get_task(task_id)
            if row is not None and row.status == "processing" and row.worker:
                return row.worker
        time.sleep(0.05)
    raise AssertionError("no task reached processing")


def _wait_done(client: httpx.Client, task_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            body = client.get(f"/v1/result/{task_id}", params={"wait": 10}).json()
        except httpx.HTTPError:
            time.sleep(0.2)
            continue
        if body["status"] in ("completed", "failed"):
            return body
    raise AssertionError(f"task {task_id} not terminal after {timeout} s")
