"""Process lifecycle: SIGTERM drains, restarts recover, `reelq worker` runs renders alone."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import pytest

from tests.conftest import REELQ, Server, wait_terminal

# Every test here is the node recovering or draining through the store and the dispatch (the hand-back,
# leases after kill -9, `reelq worker` beside an API, attempts, long-polls held at SIGTERM): all scaled.
pytestmark = [pytest.mark.e2e, pytest.mark.scaled]

BODY = {"model": "viduq3-turbo", "prompt": "a slow sunrise", "duration": 1, "resolution": "540p"}


def wait_status(server: Server, task_id: str, status: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with server.client() as client:
        while client.get(f"/v1/result/{task_id}").json()["status"] != status:
            assert time.monotonic() < deadline, f"{task_id} never reached {status}"
            time.sleep(0.05)


def row(server: Server, task_id: str) -> tuple:
    return server.query("SELECT status, attempts, worker FROM tasks WHERE id = :id", id=task_id)[0]


def test_sigterm_lets_a_running_render_finish(make_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_server(workers=1, REELQ_SYNTHETIC_DELAY="2")
    with server.client() as client:
        task = client.post("/v1/vidu/videos", json=BODY).json()
    wait_status(server, task["id"], "processing")
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)  # the serve process only, as a service manager would
    assert server.process.wait(timeout=60) == 0
    assert row(server, task["id"])[0] == "completed"


def test_sigterm_past_the_drain_time_hands_the_render_back(make_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_server(workers=1, REELQ_SYNTHETIC_DELAY="30", REELQ_DRAIN_SECONDS="0.5")
    with server.client() as client:
        task = client.post("/v1/vidu/videos", json=BODY).json()
    wait_status(server, task["id"], "processing")
    server.stop(signal.SIGTERM)
    status, attempts, worker = row(server, task["id"])
    assert (status, attempts, worker) == ("queued", 0, None)  # handed back, the attempt refunded

    # Restarted, it still reads processing (never backwards) and completes.
    server.env["REELQ_SYNTHETIC_DELAY"] = "0"
    server.start(workers=1)
    with server.client() as client:
        assert client.get(f"/v1/result/{task['id']}").json()["status"] in ("processing", "completed")
        assert wait_terminal(client, task["id"])["status"] == "completed"


def test_kill_9_of_everything_then_restart_recovers(make_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_server(workers=1, REELQ_SYNTHETIC_DELAY="30", REELQ_LEASE_SECONDS="2")
    with server.client() as client:
        task = client.post("/v1/vidu/videos", json=BODY).json()
    wait_status(server, task["id"], "processing")
    server.stop(signal.SIGKILL)
    assert row(server, task["id"])[0] == "processing"
    server.env["REELQ_SYNTHETIC_DELAY"] = "0"
    server.start(workers=1)
    with server.client() as client:
        done = wait_terminal(client, task["id"], timeout=60)
    assert done["status"] == "completed"
    assert row(server, task["id"])[1] == 2


def test_reelq_worker_renders_for_an_api_without_workers(make_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_server(workers=0)
    with server.client() as client:
        task = client.post("/v1/vidu/videos", json=BODY).json()
        time.sleep(0.5)
        assert client.get(f"/v1/result/{task['id']}").json()["status"] == "queued"
        worker = subprocess.Popen([*REELQ, "worker", "-n", "1"], env=server.env, start_new_session=True)
        try:
            assert wait_terminal(client, task["id"], timeout=60)["status"] == "completed"
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=30) == 0


def test_max_attempts_then_failed_with_a_clear_error(make_server) -> None:  # type: ignore[no-untyped-def]
    """A task whose worker dies every time ends failed after REELQ_MAX_ATTEMPTS, and others still run."""
    server: Server = make_server(
        workers=1, REELQ_SYNTHETIC_DELAY="30", REELQ_MAX_ATTEMPTS="2", REELQ_LEASE_SECONDS="2"
    )
    from tests.test_e2e_video import worker_pids

    with server.client() as client:
        task = client.post("/v1/vidu/videos", json=BODY).json()
        for _ in range(2):
            wait_status(server, task["id"], "processing")
            deadline = time.monotonic() + 30
            while row(server, task["id"])[0] != "processing" or not worker_pids(server):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            import os

            attempts = row(server, task["id"])[1]
            os.kill(worker_pids(server)[0], signal.SIGKILL)
            deadline = time.monotonic() + 30
            while row(server, task["id"])[1] == attempts and row(server, task["id"])[0] != "failed":
                assert time.monotonic() < deadline
                time.sleep(0.05)
        done = wait_terminal(client, task["id"], timeout=30)
    assert done["status"] == "failed"
    assert "2 attempts" in done["error"]


def test_sigterm_answers_held_long_polls_at_once(make_server) -> None:  # type: ignore[no-untyped-def]
    """A shutdown answers every held `?wait=` with the task's current state, not a cancelled request."""
    server: Server = make_server(workers=0, REELQ_MAX_HELD_PER_KEY="5")
    with server.client() as client:
        task = client.post("/v1/vidu/videos", json=BODY).json()
    answers: list[tuple[int, str, float]] = []

    def hold() -> None:
        with server.client() as client:
            while True:  # refused only while the probe below holds the fifth slot: take it once it is free
                started = time.monotonic()
                got = client.get(f"/v1/result/{task['id']}", params={"wait": 60}, timeout=90)
                if got.status_code != 429:
                    break
                time.sleep(0.02)
            answers.append((got.status_code, got.json()["status"], time.monotonic() - started))

    holders = [threading.Thread(target=hold) for _ in range(5)]
    for holder in holders:
        holder.start()
    # All five are held once a sixth is refused for the key's REELQ_MAX_HELD_PER_KEY=5: seen, not slept on.
    deadline = time.monotonic() + 30
    with server.client() as probe:
        while probe.get(f"/v1/result/{task['id']}", params={"wait": 1}).status_code != 429:
            assert time.monotonic() < deadline, "the five long-polls were never all held"
            time.sleep(0.3)  # the holders retry sooner: the slot the probe held goes to them
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    for holder in holders:
        holder.join(20)
    assert server.process.wait(timeout=30) == 0
    assert [(code, status) for code, status, _ in answers] == [(200, "queued")] * 5
    # Answered (200, the current state) rather than cut at the 5 s graceful-shutdown limit; and not at the
    # end of the 60 s wait: the bound is far from it, so a slow machine cannot fail it.
    assert max(seconds for _, _, seconds in answers) < 30
    assert "Traceback" not in server.log() and "CancelledError" not in server.log()
