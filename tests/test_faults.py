"""Fault injection: whatever dies, each accepted task ends once, with one valid video, seen moving forward."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import av
import httpx
import pytest

from tests.conftest import Server, free_port, reelq_env
from tests.test_e2e_video import wait_for_worker_pids, worker_pids

# Every test here is recovery through the store and the dispatch (kill -9, SIGTERM, restarts, two API
# processes on one store, bounded attempts): each depends on the backend, so all run in the scaled pass.
pytestmark = [pytest.mark.e2e, pytest.mark.scaled]

ORDER = {"queued": 0, "processing": 1, "completed": 2, "failed": 2}


def body(i: int, prompt: str = "fault drill") -> dict:
    return {
        "model": "viduq3-turbo",
        "prompt": f"{prompt} {i}",
        "duration": 1,
        "resolution": "540p",
        "seed": i,
    }


class Poller:
    """Watches tasks from outside, as a client would, and records every status it sees."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.seen: dict[str, list[str]] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, task_id: str) -> None:
        self.seen.setdefault(task_id, [])

    def _run(self) -> None:
        with self.server.client() as client:
            while not self._stop.is_set():
                for task_id in list(self.seen):
                    try:
                        response = client.get(f"/v1/result/{task_id}", timeout=5)
                    except httpx.TransportError:
                        continue  # the server is being restarted
                    if response.status_code >= 500:
                        self.errors.append(f"{response.status_code} {response.text}")
                    elif response.status_code == 200:
                        self.seen[task_id].append(response.json()["status"])
                time.sleep(0.05)

    @contextmanager
    def running(self) -> Iterator[Poller]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=10)

    def wait_all_terminal(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(s and s[-1] in ("completed", "failed") for s in self.seen.values()):
                return
            time.sleep(0.1)
        raise AssertionError(f"not all terminal: { {k: v[-1:] for k, v in self.seen.items()} }")

    def assert_forward_only(self) -> None:
        assert not self.errors, self.errors
        for task_id, statuses in self.seen.items():
            ranks = [ORDER[s] for s in statuses]
            assert ranks == sorted(ranks), (task_id, statuses)
            terminal = [s for s in statuses if ORDER[s] == 2]
            assert len(set(terminal)) <= 1, (task_id, statuses)


def submit(server: Server, poller: Poller, count: int, prompt: str = "fault drill") -> list[str]:
    ids = []
    with server.client() as client:
        for i in range(count):
            response = client.post("/v1/vidu/videos", json=body(i, prompt))
            assert response.status_code == 200, response.text
            ids.append(response.json()["id"])
            poller.watch(ids[-1])
    return ids


def wait_processing(server: Server, minimum: int = 1, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = server.query("SELECT count(*) FROM tasks WHERE status = 'processing'")[0][0]
        if n >= minimum:
            return
        time.sleep(0.05)
    raise AssertionError("nothing started processing")


def assert_one_valid_video_each(server: Server, ids: list[str]) -> None:
    with server.client() as client:
        for task_id in ids:
            task = client.get(f"/v1/result/{task_id}").json()
            assert task["status"] == "completed", task
            stored = server.stored_videos(f"{task_id}-")
            assert len(stored) == 1, list(stored)  # one video per task, whatever was retried
            served = httpx.get(task["video_url"], timeout=60).content
            assert served == next(iter(stored.values()))
            with av.open(io.BytesIO(served)) as container:
                assert sum(1 for _ in container.decode(video=0)) == 24
    # No temporary file left behind (renders are written locally before the store takes them, S3 too).
    assert not list((server.home / "videos" / ".tmp").iterdir())


def test_kill_9_of_one_worker_in_a_batch(make_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_server(workers=2, REELQ_SYNTHETIC_DELAY="1.5", REELQ_LEASE_SECONDS="3")
    poller = Poller(server)
    with poller.running():
        ids = submit(server, poller, 6)
        wait_processing(server, 2)
        os.kill(worker_pids(server)[0], signal.SIGKILL)
        poller.wait_all_terminal(120)
    poller.assert_forward_only()
    assert_one_valid_video_each(server, ids)


def test_kill_9_of_the_whole_process_group_then_restart(make_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_server(workers=2, REELQ_SYNTHETIC_DELAY="3", REELQ_LEASE_SECONDS="2")
    poller = Poller(server)
    with poller.running():
        ids = submit(server, poller, 5)
        wait_processing(server, 2)
        server.stop(signal.SIGKILL)
        server.env["REELQ_SYNTHETIC_DELAY"] = "0.5"
        server.start(workers=2)
        poller.wait_all_terminal(120)
    poller.assert_forward_only()
    assert_one_valid_video_each(server, ids)


def test_sigterm_mid_render_then_restart(make_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_server(workers=2, REELQ_SYNTHETIC_DELAY="20", REELQ_DRAIN_SECONDS="1")
    poller = Poller(server)
    with poller.running():
        ids = submit(server, poller, 4)
        wait_processing(server, 2)
        assert server.stop(signal.SIGTERM) == 0
        server.env["REELQ_SYNTHETIC_DELAY"] = "0.2"
        server.start(workers=2)
        poller.wait_all_terminal(120)
    poller.assert_forward_only()
    assert_one_valid_video_each(server, ids)


def test_two_api_processes_and_four_workers_on_one_store(make_server) -> None:  # type: ignore[no-untyped-def]
    first: Server = make_server(workers=2)
    second = Server(home=first.home, port=free_port(), env=reelq_env(first.home), keys=first.keys)
    second.start(workers=2)
    try:
        ids: list[str] = []
        failures: list[str] = []

        def hammer(server: Server, offset: int) -> None:
            with server.client() as client:
                for i in range(15):
                    response = client.post("/v1/vidu/videos", json=body(offset + i, "concurrent"))
                    if response.status_code != 200:
                        failures.append(response.text)
                        continue
                    ids.append(response.json()["id"])
                    status = client.get(f"/v1/result/{ids[-1]}")
                    if status.status_code != 200:
                        failures.append(status.text)

        threads = [
            threading.Thread(target=hammer, args=(s, n * 100)) for n, s in enumerate([first, second] * 2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not failures
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            rows = first.query("SELECT status, attempts, worker FROM tasks")
            if all(r[0] == "completed" for r in rows):
                break
            time.sleep(0.2)
        assert len(rows) == len(ids) == 60
        assert all(status == "completed" and attempts == 1 for status, attempts, _ in rows)
        workers = {worker.rsplit(":", 1)[0] for _, _, worker in rows}
        assert len(workers) >= 2  # both servers' workers took part; none claimed a task twice
    finally:
        second.stop(signal.SIGKILL)


def test_poison_task_fails_after_bounded_attempts_without_starving_others(make_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_server(
        workers=2, REELQ_FAULT_DRILL_TERM="poison-pill", REELQ_MAX_ATTEMPTS="3", REELQ_SYNTHETIC_DELAY="0.5"
    )
    poller = Poller(server)
    with poller.running():
        poison = submit(server, poller, 1, prompt="a poison-pill render")
        healthy = submit(server, poller, 6)
        poller.wait_all_terminal(120)
    poller.assert_forward_only()
    assert_one_valid_video_each(server, healthy)
    with server.client() as client:
        failed = client.get(f"/v1/result/{poison[0]}").json()
    assert failed["status"] == "failed"
    assert "3 attempts" in failed["error"]
    assert server.query("SELECT attempts FROM tasks WHERE id = :id", id=poison[0]) == [(3,)]
    # The supervisor kept replacing the workers the drill killed. The last death settles the task
    # before its replacement starts (quick deaths in a row back off), so wait for it.
    assert len(wait_for_worker_pids(server, 2)) == 2
