"""The in-process node's clock: expiry, retention and leases checked at their real lengths by moving
the node's wall clock (tests/harness.py `AppServer.advance`) instead of sleeping out a short TTL."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import Server, wait_terminal
from tests.harness import AppServer

# The clock of a `reelq serve` process cannot be moved: these run on the embedded in-process node.
pytestmark = [pytest.mark.service, pytest.mark.embedded_only]

GOOD = {"model": "viduq3-turbo", "prompt": "a lighthouse at dusk", "duration": 1, "resolution": "540p"}
DAY = 86400.0


def until(condition: Callable[[], bool], timeout: float = 20) -> None:
    """Wait for `condition` (the sweeper runs on its interval), at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def finished(server: Server) -> dict:
    with server.client() as client:
        created = client.post("/v1/vidu/videos", json=GOOD)
        assert created.status_code == 200, created.text
        done = wait_terminal(client, created.json()["id"])
    assert done["status"] == "completed", done
    return done


def test_a_link_lives_its_whole_default_ttl_then_expires_and_its_file_is_swept(make_app_server) -> None:  # type: ignore[no-untyped-def]
    server: AppServer = make_app_server(workers=1, REELQ_SWEEP_INTERVAL="0.1")  # the default TTL: a day
    done = finished(server)
    videos = server.home / "videos"
    assert list(videos.glob(f"{done['id']}*.mp4"))
    server.advance(DAY - 60)  # a minute before expiry: still served, still stored
    assert httpx.get(done["video_url"], timeout=60).status_code == 200
    assert list(videos.glob(f"{done['id']}*.mp4"))
    server.advance(61)
    expired = httpx.get(done["video_url"], timeout=60)
    assert expired.status_code == 410, expired.text
    assert expired.json()["error"]["code"]
    until(lambda: not list(videos.glob(f"{done['id']}*.mp4")))


def test_a_finished_task_is_kept_for_its_retention_then_purged(make_app_server) -> None:  # type: ignore[no-untyped-def]
    server: AppServer = make_app_server(workers=1, REELQ_SWEEP_INTERVAL="0.1")  # default retention: 7 days
    done = finished(server)
    server.advance(7 * DAY - 3600)
    time.sleep(0.3)  # a few sweeps at this time: nothing may go early
    with server.client() as client:
        assert client.get(f"/v1/result/{done['id']}").status_code == 200
        server.advance(3601)
        until(lambda: client.get(f"/v1/result/{done['id']}").status_code == 404)
    assert server.query("SELECT count(*) FROM tasks WHERE id = :id", id=done["id"]) == [(0,)]


def test_a_lapsed_lease_is_taken_back_and_rendered_by_a_live_worker(make_app_server) -> None:  # type: ignore[no-untyped-def]
    """A worker that claimed a task and vanished: once its lease (an hour here) lapses on the clock,
    the sweeper requeues the task and a live worker renders it."""
    server: AppServer = make_app_server(workers=0, REELQ_SWEEP_INTERVAL="0.1", REELQ_LEASE_SECONDS="3600")
    with server.client() as client:
        task = client.post("/v1/vidu/videos", json=GOOD).json()
        claimed = server.services.store.claim_next("vanished-worker", server.settings.lease_seconds)
        assert claimed is not None and claimed.id == task["id"]
        time.sleep(0.3)  # sweeps within the lease leave it alone
        assert client.get(f"/v1/result/{task['id']}").json()["status"] == "processing"
    server.stop()
    # A live node over the same home, its clock past the lapsed lease.
    server.advance(server.settings.lease_seconds + 1)
    server.start(workers=1)
    with server.client() as client:
        done = wait_terminal(client, task["id"], timeout=60)
    assert done["status"] == "completed", done
    assert server.query("SELECT attempts FROM tasks WHERE id = :id", id=task["id"]) == [(2,)]
