"""List, cancel, delete, server-sent events and the polling hint, end to end against `reelq serve`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, wait_terminal

# Every test here reads or writes tasks, videos, limits or deliveries: the backend's behaviour.
pytestmark = [pytest.mark.e2e, pytest.mark.scaled]

BODY = {"model": "viduq3-turbo", "prompt": "a paper boat on a pond", "duration": 1, "resolution": "540p"}
CANCELLED = "Cancelled by user."


def create(client: httpx.Client) -> dict:
    answer = client.post("/v1/vidu/videos", json=BODY)
    assert answer.status_code == 200, answer.text
    return answer.json()


def wait_status(client: httpx.Client, task_id: str, status: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"/v1/result/{task_id}").json()
        if body["status"] == status:
            return body
        assert time.monotonic() < deadline, f"{task_id} never reached {status}: {body}"
        time.sleep(0.05)


def assert_error(answer: httpx.Response, status: int, param: str | None = None) -> dict:
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert set(error) == {"code", "message", "param"} and error["message"]
    assert error["param"] == param
    return error


def temp_files(server: Server, task_id: str) -> list[Path]:
    return list((server.home / "videos").rglob(f"{task_id}*"))


# --- list --------------------------------------------------------------------------------------


def test_list_pages_across_250_tasks_of_two_keys(make_app_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_app_server(workers=0)  # nothing renders: every task stays queued
    second = server.new_key("second")
    with server.client() as mine, server.client(second) as theirs:
        made = [create(mine)["id"] for _ in range(250)]
        their_ids = [create(theirs)["id"] for _ in range(30)]
        seen: list[dict] = []
        cursor = None
        pages = 0
        while True:
            params = {"limit": 100, **({"cursor": cursor} if cursor else {})}
            page = mine.get("/v1/vidu/videos", params=params).json()
            pages += 1
            assert page["object"] == "list" and len(page["data"]) <= 100
            seen += page["data"]
            cursor = page["next_cursor"]
            assert page["has_more"] == (cursor is not None)
            if cursor is None:
                break
        assert pages == 3
        ids = [task["id"] for task in seen]
        assert len(ids) == len(set(ids)) == 250 and set(ids) == set(made)
        assert [t["created"] for t in seen] == sorted((t["created"] for t in seen), reverse=True)
        assert all(set(task) >= {"id", "object", "status", "video_url", "error"} for task in seen)
        # Creates one at a time are stored one per transaction: newest first is the reverse order.
        assert ids == made[::-1]
        theirs_listed = theirs.get("/v1/vidu/videos", params={"limit": 100}).json()
        assert [t["id"] for t in theirs_listed["data"]] == their_ids[::-1]
        assert not theirs_listed["has_more"] and theirs_listed["next_cursor"] is None
        # Filters, and the default page size.
        assert mine.post(f"/v1/vidu/videos/{made[3]}/cancel").status_code == 200
        failed = mine.get("/v1/vidu/videos", params={"status": "failed"}).json()
        assert [t["id"] for t in failed["data"]] == [made[3]]
        assert len(mine.get("/v1/vidu/videos").json()["data"]) == 20
        assert mine.get("/v1/vidu/videos", params={"status": "completed"}).json()["data"] == []
        # Bad parameters: 400 in the §4 shape, never 5xx.
        for bad in ("zzz", "%%%", "eyJhIjoxfQ", "W251bGwsIG51bGxd", "a" * 1000, "\u00e9t\u00e9"):
            error = assert_error(mine.get("/v1/vidu/videos", params={"cursor": bad}), 400, "cursor")
            assert error["code"] == "invalid_cursor"
        for limit in ("0", "101", "x"):
            assert_error(mine.get("/v1/vidu/videos", params={"limit": limit}), 400, "limit")
        assert_error(mine.get("/v1/vidu/videos", params={"status": "done"}), 400, "status")
    assert httpx.get(f"{server.base_url}/v1/vidu/videos", timeout=60).status_code == 401


# --- cancel ------------------------------------------------------------------------------------


def test_cancel_a_queued_task_at_once_and_again(make_app_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_app_server(workers=0)
    other = server.new_key("other")
    with server.client() as client, server.client(other) as stranger:
        task = create(client)
        assert_error(stranger.post(f"/v1/vidu/videos/{task['id']}/cancel"), 404, "id")
        assert_error(client.post("/v1/vidu/videos/video_nope/cancel"), 404, "id")
        answer = client.post(f"/v1/vidu/videos/{task['id']}/cancel")
        assert answer.status_code == 200
        body = answer.json()
        assert (body["status"], body["error"], body["totalTokens"], body["video_url"]) == (
            "failed",
            CANCELLED,
            None,
            None,
        )
        assert client.get(f"/v1/result/{task['id']}").json() == body
        again = client.post(f"/v1/vidu/videos/{task['id']}/cancel")  # a retry gets the same answer
        assert again.status_code == 200 and again.json() == body
        assert client.get("/v1/usage").json()["totalTokens"] == 0


def test_cancel_a_rendering_task_frees_its_worker(make_app_server) -> None:  # type: ignore[no-untyped-def]
    # A two-minute render: finishing it, instead of dropping it, is far from the 30 s bound below.
    server: Server = make_app_server(workers=1, REELQ_SYNTHETIC_DELAY="120")
    with server.client() as client:
        rendering = create(client)
        wait_status(client, rendering["id"], "processing")
        waiting = create(client)
        time.sleep(1.5)  # let the render write part of its file
        assert client.get(f"/v1/result/{waiting['id']}").json()["status"] == "queued"
        cancelled_at = time.monotonic()
        answer = client.post(f"/v1/vidu/videos/{rendering['id']}/cancel")
        assert answer.status_code == 200 and answer.json()["error"] == CANCELLED
        # The only worker notices within a renewal (a second), drops the render and takes the next task:
        # the bound only rules out rendering the two minutes out (4x), so a slow machine cannot fail it.
        wait_status(client, waiting["id"], "processing", timeout=60)
        assert time.monotonic() - cancelled_at < 30
        deadline = time.monotonic() + 60
        while temp_files(server, rendering["id"]):  # its partial file is removed
            assert time.monotonic() < deadline, temp_files(server, rendering["id"])
            time.sleep(0.05)
        final = client.get(f"/v1/result/{rendering['id']}").json()
        assert (final["status"], final["error"], final["totalTokens"]) == ("failed", CANCELLED, None)
        # Delete the second one while it renders: cancelled first, then gone; the worker is free again.
        assert client.delete(f"/v1/vidu/videos/{waiting['id']}").status_code == 200
        third = create(client)
        wait_status(client, third["id"], "processing", timeout=10)
        assert_error(client.get(f"/v1/result/{waiting['id']}"), 404, "id")
        time.sleep(1.5)
        assert not temp_files(server, waiting["id"])
        assert client.get("/v1/usage").json()["totalTokens"] == 0
    assert "Traceback" not in server.log()


def test_a_finished_task_cannot_be_cancelled(make_app_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_app_server(workers=1)
    with server.client() as client:
        task = create(client)
        done = wait_terminal(client, task["id"])
        assert done["status"] == "completed"
        error = assert_error(client.post(f"/v1/vidu/videos/{task['id']}/cancel"), 409, "id")
        assert error["code"] == "task_already_finished" and "completed" in error["message"]
        assert client.get(f"/v1/result/{task['id']}").json() == done


# --- delete ------------------------------------------------------------------------------------


@pytest.mark.embedded_only  # counts local video files
def test_delete_removes_the_task_and_its_video(make_app_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_app_server(workers=1)
    other = server.new_key("other")
    with server.client() as client, server.client(other) as stranger:
        task = create(client)
        done = wait_terminal(client, task["id"])
        link = done["video_url"]
        assert httpx.get(link, timeout=60).status_code == 200
        files = list((server.home / "videos").glob(f"{task['id']}*.mp4"))
        assert len(files) == 1
        assert_error(stranger.delete(f"/v1/vidu/videos/{task['id']}"), 404, "id")
        answer = client.delete(f"/v1/vidu/videos/{task['id']}")
        assert answer.status_code == 200
        assert answer.json() == {"id": task["id"], "object": "video.deleted", "deleted": True}
        assert_error(client.get(f"/v1/result/{task['id']}"), 404, "id")
        assert_error(client.get(f"/v1/result/{task['id']}", params={"wait": 1}), 404, "id")
        assert httpx.get(link, timeout=60).status_code == 404  # the signed link no longer serves anything
        assert not files[0].exists()
        assert_error(client.delete(f"/v1/vidu/videos/{task['id']}"), 404, "id")
        assert task["id"] not in [t["id"] for t in client.get("/v1/vidu/videos").json()["data"]]
        # Usage outlives the task: the video was made and stays charged.
        assert client.get("/v1/usage").json()["totalTokens"] == done["totalTokens"]


@pytest.mark.embedded_only  # makes a local video file undeletable
def test_delete_answers_even_when_the_video_cannot_be_removed(make_app_server) -> None:  # type: ignore[no-untyped-def]
    """The row goes first: the task is deleted for its owner whatever the storage says, never a 5xx."""
    server: Server = make_app_server(workers=1)
    with server.client() as client:
        task = create(client)
        wait_terminal(client, task["id"])
        [video] = (server.home / "videos").glob(f"{task['id']}*.mp4")
        video.unlink()
        video.mkdir()  # unlink() of a directory fails, root or not
        answer = client.delete(f"/v1/vidu/videos/{task['id']}")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"id": task["id"], "object": "video.deleted", "deleted": True}
        assert_error(client.get(f"/v1/result/{task['id']}"), 404, "id")
    assert f"task {task['id']} deleted; video" in server.log()


# --- server-sent events ------------------------------------------------------------------------


def read_events(
    response: httpx.Response | Iterator[str], stop_after: int | None = None
) -> tuple[list[dict], int]:
    """(events as {event, id, data}, heartbeat comments) read from an open stream (or its lines)."""
    events: list[dict] = []
    heartbeats = 0
    current: dict = {}
    for line in response.iter_lines() if isinstance(response, httpx.Response) else response:
        if line.startswith(":"):
            heartbeats += 1
        elif line == "":
            if "data" in current:
                events.append(current)
                if stop_after is not None and len(events) >= stop_after:
                    break
            current = {}
        else:
            name, _, value = line.partition(": ")
            current[name] = httpx.Response(200, content=value).json() if name == "data" else value
    return events, heartbeats


def test_events_stream_reconnects_and_ends_with_the_terminal_event(make_app_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_app_server(workers=1, REELQ_SYNTHETIC_DELAY="4", REELQ_SSE_HEARTBEAT="0.3")
    other = server.new_key("other")
    with server.client() as client:
        blocker = create(client)  # keeps the only worker busy: the task below waits queued a while
        task = create(client)
        url = f"/v1/result/{task['id']}/events"
        with client.stream("GET", url) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            first, heartbeats = read_events(stream, stop_after=1)
        assert first[0]["event"] == "status" and first[0]["id"] == "0"
        assert first[0]["data"]["status"] == "queued" and first[0]["data"]["id"] == task["id"]
        # Reconnect as EventSource does: the same state is not sent again; what follows is newer.
        with client.stream("GET", url, headers={"Last-Event-ID": "0"}) as stream:
            events, heartbeats = read_events(stream)
        ids = [int(e["id"]) for e in events]
        assert ids == sorted(set(ids)) and ids[0] > 0 and ids[-1] == 1000
        assert events[0]["event"] == "status" and events[0]["data"]["status"] == "processing"
        assert all(e["event"] == "progress" for e in events[1:-1])
        progress = [e["data"]["progress"] for e in events[:-1]]
        assert progress == sorted(progress)
        assert events[-1]["event"] == "status" and events[-1]["data"]["status"] == "completed"
        assert events[-1]["data"] == client.get(f"/v1/result/{task['id']}").json()
        assert heartbeats >= 1  # the queued wait lasted longer than REELQ_SSE_HEARTBEAT
        # A reconnect from any earlier event gets the terminal one at once; from the terminal one, 204.
        with client.stream("GET", url, headers={"Last-Event-ID": str(ids[0])}) as stream:
            late, _ = read_events(stream)
        assert [e["id"] for e in late] == ["1000"]
        assert client.get(url, headers={"Last-Event-ID": "1000"}).status_code == 204
        garbage, _ = read_events(client.get(url, headers={"Last-Event-ID": "nonsense"}))
        assert [e["id"] for e in garbage] == ["1000"] and garbage[0]["event"] == "status"
        assert wait_terminal(client, blocker["id"])["status"] == "completed"
    with server.client(other) as stranger:
        assert_error(stranger.get(url), 404, "id")
    assert_error(httpx.get(server.base_url + url, timeout=60), 401)


def test_an_event_stream_sees_a_cancel_at_once(make_app_server) -> None:  # type: ignore[no-untyped-def]
    # Without being woken by the cancel's commit, the stream would only re-read the task at its next
    # heartbeat: two minutes away, far from the 30 s bound below (a 4x margin, not a race).
    server: Server = make_app_server(workers=0, REELQ_SSE_HEARTBEAT="120")
    with server.client() as client:
        task = create(client)
        with client.stream("GET", f"/v1/result/{task['id']}/events") as stream:
            lines = stream.iter_lines()
            assert next(lines) == "retry: 1000"
            started = time.monotonic()
            assert client.post(f"/v1/vidu/videos/{task['id']}/cancel").status_code == 200
            events, _ = read_events(lines)
        assert time.monotonic() - started < 30
        assert [(e["event"], e["id"]) for e in events][-1] == ("status", "1000")
        assert events[-1]["data"]["error"] == CANCELLED


# --- the polling hint --------------------------------------------------------------------------


def test_non_terminal_answers_carry_the_polling_hint_on_both_paths(make_app_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_app_server(workers=0, REELQ_POLL_RATE="2")
    with server.client() as client:
        created = client.post("/v1/vidu/videos", json=BODY)
        task_id = created.json()["id"]
        fast = client.get(f"/v1/result/{task_id}")  # the raw-ASGI fast path
        time.sleep(0.6)
        routed = client.get(f"/v1/result/{task_id}", params={"wait": "0.2"})  # long-polls are routed
        for answer in (created, fast, routed):
            assert answer.status_code == 200
            hint = int(answer.headers["x-poll-after-ms"])
            assert 500 <= hint <= 30_000  # at least 1 / REELQ_POLL_RATE
        assert fast.headers["x-poll-after-ms"] == routed.headers["x-poll-after-ms"]
        client.post(f"/v1/vidu/videos/{task_id}/cancel")
        time.sleep(0.6)
        assert "x-poll-after-ms" not in client.get(f"/v1/result/{task_id}").headers
