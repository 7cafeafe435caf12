"""The scaled mode on the real PostgreSQL and RabbitMQ: change notices across API replicas, explicit schema
upgrades, Celery dispatch with its faults (a lost message, a worker killed mid-render, duplicate messages).

Every test gets a fresh database and a queue of its own (tests/scaled.py)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from reelq.database import TaskStore, make_engine
from reelq.database.db import migrations_head
from tests.conftest import Server, create_key, free_port, reelq_env, run_cli, wait_terminal
from tests.scaled import BROKER_URL, fresh_postgres_database, fresh_queue, purge_queue

pytest.importorskip("celery")


HEAD = migrations_head()
BODY = {"model": "viduq3-turbo", "prompt": "a scaled task", "duration": 1, "resolution": "540p"}


@pytest.fixture
def database_url() -> Iterator[str]:
    """A database at the schema's head, as `reelq db upgrade` leaves it (the command itself is tested on
    `empty_database_url`)."""
    with fresh_postgres_database(migrated=True) as url:
        yield url


@pytest.fixture
def empty_database_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture
def queue_name() -> Iterator[str]:
    with fresh_queue() as name:
        yield name


@pytest.fixture
def replicas(tmp_path: Path, database_url: str) -> Iterator[Callable[..., Server]]:
    """Factory of `reelq serve` processes sharing one PostgreSQL database and one REELQ_HOME (the shared
    signing secret and video files stand for shared storage)."""
    home = tmp_path / "home"
    home.mkdir()
    started: list[Server] = []

    def env(**extra: str) -> dict[str, str]:
        return reelq_env(home, REELQ_DATABASE_URL=database_url, **extra)

    key = create_key(home, "scaled", env=env())

    def factory(workers: int = 0, start: bool = True, **extra: str) -> Server:
        server = Server(home=home, port=free_port(), env=env(**extra))
        server.keys.append(key)
        started.append(server)
        if start:
            server.start(workers=workers)
        return server

    yield factory
    for server in started:
        server.stop(signal.SIGKILL)


def _store(database_url: str) -> TaskStore:
    return TaskStore(make_engine(database_url))


# --- schema ------------------------------------------------------------------------------------------


def test_serve_refuses_an_outdated_schema_until_db_upgrade(tmp_path: Path, empty_database_url: str) -> None:
    env = reelq_env(tmp_path, REELQ_DATABASE_URL=empty_database_url)
    port = str(free_port())
    refused = run_cli(tmp_path, "serve", "--port", port, "--workers", "0", env=env, check=False, timeout=60)
    assert refused.returncode == 2
    lines = [line for line in refused.stderr.splitlines() if line.startswith("reelq:")]
    assert lines == [
        "reelq: the database schema is at revision none (empty database), this reelq needs "
        f"{HEAD}: run `reelq db upgrade` first"
    ], refused.stderr
    assert run_cli(tmp_path, "db", "current", env=env, check=False).returncode == 1
    upgraded = run_cli(tmp_path, "db", "upgrade", env=env)
    assert upgraded.stdout.strip() == f"schema at {HEAD} (was empty)"
    assert run_cli(tmp_path, "db", "upgrade", env=env).stdout.strip() == f"schema at {HEAD} (already)"
    assert run_cli(tmp_path, "db", "current", env=env).stdout.strip() == f"database {HEAD}, reelq {HEAD}"
    server = Server(home=tmp_path, port=free_port(), env=env)
    try:
        server.start(workers=0)
    finally:
        server.stop(signal.SIGKILL)


def test_the_plain_postgresql_url_forms_work(tmp_path: Path, empty_database_url: str) -> None:
    """SPEC §5 writes `postgresql://…`; libpq and most hosting panels write `postgres://…`. Both mean
    psycopg 3 (the `postgres` extra), whatever SQLAlchemy would pick for them by itself."""
    rest = empty_database_url.split("://", 1)[1]
    upgraded = run_cli(
        tmp_path, "db", "upgrade", env=reelq_env(tmp_path, REELQ_DATABASE_URL=f"postgres://{rest}")
    )
    assert upgraded.stdout.strip() == f"schema at {HEAD} (was empty)"
    plain = reelq_env(tmp_path, REELQ_DATABASE_URL=f"postgresql://{rest}")
    assert run_cli(tmp_path, "db", "current", env=plain).stdout.strip() == f"database {HEAD}, reelq {HEAD}"


def test_embedded_sqlite_still_migrates_itself(tmp_path: Path) -> None:
    # No `db upgrade` on the embedded default: the first command creates and migrates the file.
    run_cli(tmp_path, "keys", "create", "--name", "x")
    assert run_cli(tmp_path, "db", "current").stdout.strip() == f"database {HEAD}, reelq {HEAD}"


# --- change notices ----------------------------------------------------------------------------------


def test_store_change_notices_reach_other_processes_stores(database_url: str) -> None:
    from reelq.database.db import migrate

    writer_engine = make_engine(database_url)
    migrate(writer_engine)
    writer, reader = TaskStore(writer_engine), _store(database_url)
    assert reader.changes is not None
    reader.changes.value()
    assert reader.changes.connected.wait(5)  # type: ignore[attr-defined]
    before = reader.changes.value()
    writer.create_key("a")  # adds a row and changes none: no notice (readers never cache a miss)
    key, _ = writer.create_key("b")
    time.sleep(0.2)
    assert reader.changes.value() == before
    writer.revoke_key(key.id)
    deadline = time.monotonic() + 30
    while reader.changes.value() == before and time.monotonic() < deadline:
        time.sleep(0.005)
    assert reader.changes.value() != before
    reader.changes.close()  # type: ignore[attr-defined]


def test_a_finished_task_answers_held_long_polls_on_every_replica_by_its_notice(
    replicas: Callable[..., Server], database_url: str
) -> None:
    a, b = replicas(), replicas()  # API only: this test is the render worker, through the store
    store = _store(database_url)
    latencies: list[float] = []
    with a.client() as ca, b.client() as cb:
        for _ in range(5):
            task_id = ca.post("/v1/vidu/videos", json=BODY).json()["id"]
            answers: dict[str, tuple[float, dict]] = {}

            def hold(
                name: str, client: httpx.Client, task_id: str = task_id, answers: dict = answers
            ) -> None:
                body = client.get(f"/v1/result/{task_id}", params={"wait": 60}, timeout=90).json()
                answers[name] = (time.monotonic(), body)

            threads = [threading.Thread(target=hold, args=(n, c)) for n, c in (("a", ca), ("b", cb))]
            for thread in threads:
                thread.start()
            claimed = store.claim_next("test:0:w", 30, task_id=task_id)
            assert claimed is not None
            time.sleep(0.3)  # both long-polls are held by now
            assert not answers
            finished = time.monotonic()
            assert store.fail(task_id, "done by the test", worker="test:0:w")
            for thread in threads:
                thread.join(90)
            for name in ("a", "b"):
                at, body = answers[name]
                assert body["status"] == "failed" and body["error"] == "done by the test"
                latencies.append(at - finished)
    # A held read wakes only when its replica's change counter moves, which on PostgreSQL only the
    # database's notice does: without it every read would be held its full 60 s. How soon after the
    # notice (a 20 ms tick) is a latency figure: benchmarks/scaled_latency.py measures it.
    assert max(latencies) < 30, latencies


# --- Celery dispatch -----------------------------------------------------------------------------------


def _video_files(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "videos").glob("*.mp4"))


def test_celery_workers_render_tasks_created_on_either_replica(
    replicas: Callable[..., Server], database_url: str, queue_name: str
) -> None:
    broker = {"REELQ_BROKER_URL": BROKER_URL, "REELQ_QUEUE": queue_name}
    node = replicas(workers=2, **broker)
    api = replicas(**broker)  # a second API replica without workers
    with node.client() as cn, api.client() as ca:
        ids = [c.post("/v1/vidu/videos", json=BODY).json()["id"] for c in (cn, ca) for _ in range(4)]
        bodies = [wait_terminal(ca, task_id, timeout=60) for task_id in ids]
        assert [b["status"] for b in bodies] == ["completed"] * len(ids)
        video = httpx.get(bodies[-1]["video_url"], timeout=10)  # signed by the replica that answered
        assert video.status_code == 200 and video.content[4:8] == b"ftyp"
    store = _store(database_url)
    rows = [store.get_task(i) for i in ids]
    assert all(r is not None and r.attempts == 1 and r.worker and ":w" in r.worker for r in rows)
    assert len(_video_files(node.home)) == len(ids)

    # A message for a row already finished (a duplicate, or a redelivery) claims nothing.
    from reelq.config import load_settings
    from reelq.dispatch.broker import Publisher

    publisher = Publisher(load_settings(broker_url=BROKER_URL, queue=queue_name, home=node.home))
    assert publisher.publish_now(ids[:2]) == 2
    time.sleep(1.0)
    again = [store.get_task(i) for i in ids[:2]]
    assert [(r.status, r.attempts) for r in again if r] == [("completed", 1)] * 2
    assert len(_video_files(node.home)) == len(ids)


def test_celery_on_a_redis_broker_renders_tasks(replicas: Callable[..., Server], queue_name: str) -> None:
    """SPEC §5 allows `redis://…` as the broker too: the same dispatch over Celery's Redis transport."""
    pytest.importorskip("redis")
    node = replicas(workers=1, REELQ_BROKER_URL="redis://127.0.0.1:6379/0", REELQ_QUEUE=queue_name)
    with node.client() as client:
        ids = [client.post("/v1/vidu/videos", json=BODY).json()["id"] for _ in range(3)]
        bodies = [wait_terminal(client, task_id, timeout=60) for task_id in ids]
        assert [b["status"] for b in bodies] == ["completed"] * len(ids), bodies
        assert client.get("/readyz").status_code == 200  # the readiness check speaks Redis too
    assert len(_video_files(node.home)) == len(ids)


def test_a_lost_message_is_recovered_by_the_reconciler(
    replicas: Callable[..., Server], database_url: str, queue_name: str
) -> None:
    broker = {
        "REELQ_BROKER_URL": BROKER_URL,
        "REELQ_QUEUE": queue_name,
        "REELQ_QUEUED_REDISPATCH_SECONDS": "1",
    }
    api = replicas(**broker)  # no workers yet: the message waits in the queue
    with api.client() as client:
        task_id = client.post("/v1/vidu/videos", json=BODY).json()["id"]
        purged = 0
        deadline = time.monotonic() + 60
        while not purged and time.monotonic() < deadline:  # the publisher thread sends it a moment later
            purged = purge_queue(queue_name)
            time.sleep(0.01)
        assert purged == 1
        workers = subprocess_worker(api, **broker)
        try:
            body = wait_terminal(client, task_id, timeout=60)
        finally:
            workers.send_signal(signal.SIGKILL)
            workers.wait()
        assert body["status"] == "completed"
    row = _store(database_url).get_task(task_id)
    assert row is not None and row.attempts == 1


def subprocess_worker(server: Server, **env: str):  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    log = open(server.home / f"worker-{time.time_ns()}.log", "wb")  # noqa: SIM115 - the child's
    proc = subprocess.Popen(
        [sys.executable, "-m", "reelq", "worker", "--workers", "1"],
        env={**server.env, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    return proc


def test_a_celery_worker_killed_mid_render_its_task_completes_once(
    replicas: Callable[..., Server], database_url: str, queue_name: str
) -> None:
    node = replicas(
        workers=2,
        REELQ_BROKER_URL=BROKER_URL,
        REELQ_QUEUE=queue_name,
        REELQ_SYNTHETIC_DELAY="2",
        REELQ_LEASE_SECONDS="3",
        REELQ_QUEUED_REDISPATCH_SECONDS="1",
    )
    store = _store(database_url)
    with node.client() as client:
        ids = [client.post("/v1/vidu/videos", json=BODY).json()["id"] for _ in range(4)]
        victim = None
        deadline = time.monotonic() + 30
        while victim is None and time.monotonic() < deadline:
            for task_id in ids:
                row = store.get_task(task_id)
                if row is not None and row.status == "processing" and row.worker:
                    victim = row
                    break
            time.sleep(0.05)
        assert victim is not None and victim.worker is not None
        pid = int(victim.worker.split(":")[1])
        assert pid != node.process.pid  # type: ignore[union-attr]
        os.kill(pid, signal.SIGKILL)
        bodies = [wait_terminal(client, task_id, timeout=90) for task_id in ids]
    assert [b["status"] for b in bodies] == ["completed"] * len(ids)
    killed = store.get_task(victim.id)
    assert killed is not None and killed.attempts == 2 and killed.worker != victim.worker
    # One video per task: the killed render never reached its rename, and nothing rendered twice to the end.
    files = _video_files(node.home)
    assert len(files) == len(ids), files
    assert f"{victim.id}-2.mp4" in files


# --- leases on the database's clock ---------------------------------------------------------------------


@pytest.mark.parametrize("skew", [-3600.0, 3600.0])
def test_leases_are_judged_on_the_database_clock(
    database_url: str, monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    """A worker or sweeper whose clock is an hour off neither steals live leases nor keeps dead ones."""
    from reelq.database import NewTask
    from reelq.database.db import migrate
    from reelq.database.lifecycle import time as lifecycle_time

    engine = make_engine(database_url)
    migrate(engine)
    store = TaskStore(engine)
    key, _ = store.create_key("clock")
    new = NewTask(model="viduq3-turbo", prompt="clock", duration=1, aspect_ratio="16:9", resolution="540p")
    task, _ = store.create_task(key.id, new)
    real_time = time.time
    monkeypatch.setattr(lifecycle_time, "time", lambda: real_time() + skew)  # this machine's clock is off
    claimed = store.claim_next("skewed:1:w", 2.0, task_id=task.id)
    assert claimed is not None
    assert store.sweep(3, 60).requeued == []  # a live 2 s lease, whatever this machine's clock says
    assert store.renew(task.id, "skewed:1:w", 1.0, 10)
    time.sleep(1.3)
    assert store.sweep(3, 60).requeued == [task.id]  # lapsed on the database's clock


def test_readyz_reports_an_unreachable_broker(replicas: Callable[..., Server]) -> None:
    server = replicas(start=False, REELQ_BROKER_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}//")
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "reelq", "serve", "--port", str(server.port), "--workers", "0"],
        env=server.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        answer = None
        while time.monotonic() < deadline:
            try:
                answer = httpx.get(f"{server.base_url}/readyz", timeout=10)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert answer is not None and answer.status_code == 503
        assert answer.json() == {"status": "unavailable", "reason": "broker unavailable: OperationalError"}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
