"""The SDK's list, cancel, delete, events and long-polling wait, and the CLI's, against a real server."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time

import httpx
import pytest

from reelq.client import AsyncClient, Client, ConflictError, NotFoundError, Task
from tests.conftest import REELQ, Server, run_cli

# Every test here reads or writes tasks, videos, limits or deliveries: the backend's behaviour.
pytestmark = [pytest.mark.e2e, pytest.mark.scaled]

PARAMS = {"prompt": "a kite over dunes", "duration": 1, "resolution": "540p"}


def test_sync_sdk_manages_tasks_and_waits_by_long_poll(make_app_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_app_server(workers=1, REELQ_SYNTHETIC_DELAY="2")
    reads: list[httpx.Request] = []
    http = httpx.Client(timeout=90, event_hooks={"request": [reads.append]})
    with http, Client(base_url=server.base_url, api_key=server.keys[0], http_client=http) as client:
        first = client.create(**PARAMS)
        second = client.create(**PARAMS)
        page = client.list(limit=1)
        assert [t.id for t in page.data] == [second.id] and page.has_more and page.next_cursor
        rest = client.list(limit=1, cursor=page.next_cursor)
        assert [t.id for t in rest.data] == [first.id] and not rest.has_more and rest.next_cursor is None
        cancelled = client.cancel(second.id)
        assert (cancelled.status, cancelled.error) == ("failed", "Cancelled by user.")
        assert client.cancel(second.id) == cancelled
        assert [t.id for t in client.list(status="failed").data] == [second.id]
        # wait() long-polls: its reads are held by the server (`?wait=`) until the task ends, so one
        # read sees the end (two if this machine takes longer than a held read), never a poll spaced
        # by poll_interval. Counted by request, not timed: a slow machine cannot fail it.
        del reads[:]
        done = client.wait(first.id, timeout=60, poll_interval=5, max_interval=5)
        assert done.ok
        assert 1 <= len(reads) <= 2, [str(r.url) for r in reads]
        assert all(int(r.url.params["wait"]) >= 1 for r in reads), [str(r.url) for r in reads]
        with pytest.raises(ConflictError):
            client.cancel(first.id)
        assert client.delete(first.id) is None
        with pytest.raises(NotFoundError):
            client.get(first.id)
        with pytest.raises(NotFoundError):
            client.delete(first.id)


def test_sdk_events_follow_a_task_to_its_end(make_app_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_app_server(workers=1, REELQ_SYNTHETIC_DELAY="2")
    with Client(base_url=server.base_url, api_key=server.keys[0]) as client:
        task = client.create(**PARAMS)
        seen = list(client.events(task.id))
        assert seen[0].status in ("queued", "processing") and seen[-1].status == "completed"
        progress = [t.progress or 0 for t in seen]
        assert progress == sorted(progress) and len(seen) >= 3
        # Resuming after the terminal event yields nothing more (the server answers 204).
        assert list(client.events(task.id, last_event_id="1000")) == []
        assert [t.status for t in client.events(task.id, last_event_id="5")] == ["completed"]
        with pytest.raises(NotFoundError):
            list(client.events("video_fd35ee52-2a98-44a6-b930-29a88ce9b8fd"))


def test_async_sdk_list_cancel_delete_wait_events(make_app_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_app_server(workers=1)

    async def scenario() -> None:
        async with AsyncClient(base_url=server.base_url, api_key=server.keys[0]) as client:
            task = await client.create(**PARAMS)
            updates: list[Task] = []
            done = await client.wait(task.id, timeout=60, on_update=updates.append)
            assert done.ok and updates[-1] == done
            events = [t async for t in client.events(task.id)]
            assert [t.status for t in events] == ["completed"]
            page = await client.list()
            assert [t.id for t in page.data] == [task.id]
            with pytest.raises(ConflictError):
                await client.cancel(task.id)
            assert await client.delete(task.id) is None
            assert (await client.list()).data == []
            with pytest.raises(NotFoundError):
                await client.cancel(task.id)

    asyncio.run(scenario())


def test_cli_generate_cancels_on_ctrl_c_and_manages_tasks(make_app_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # The render outlasts any wait of this test however slow the machine (Ctrl-C must find it running).
    server: Server = make_app_server(workers=1, REELQ_SYNTHETIC_DELAY="600")
    env = {**server.env, "REELQ_BASE_URL": server.base_url, "REELQ_API_KEY": server.keys[0]}
    out = tmp_path / "never.mp4"
    generate = subprocess.Popen(
        [*REELQ, "generate", "a slow tide", "-o", str(out), "--duration", "1", "--resolution", "540p"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with Client(base_url=server.base_url, api_key=server.keys[0]) as client:
        deadline = time.monotonic() + 60
        while not (tasks := client.list().data) or tasks[0].status != "processing":
            assert time.monotonic() < deadline and generate.poll() is None
            time.sleep(0.25)
        time.sleep(1.0)  # progress is showing
        generate.send_signal(signal.SIGINT)
        try:
            _, stderr = generate.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            generate.kill()
            raise AssertionError(f"reelq generate ignored Ctrl-C: {generate.communicate()}") from None
        assert generate.returncode == 130, stderr
        assert "cancelled" in stderr
        task = client.get(tasks[0].id)
        assert (task.status, task.error) == ("failed", "Cancelled by user.")
        assert not out.exists()
        # The management subcommands, against the same server.
        queued = client.create(**PARAMS)
    listed = run_cli(server.home, "list", "--limit", "5", env=env).stdout.splitlines()
    assert listed[0].startswith("ID\tSTATUS\t")  # a header names the columns
    assert listed[1].startswith(f"{queued.id}\t") and listed[2].startswith(f"{task.id}\tfailed")
    assert run_cli(server.home, "cancel", queued.id, env=env).stdout.startswith(f"{queued.id}\tfailed")
    assert run_cli(server.home, "delete", queued.id, env=env).stdout.strip() == f"deleted {queued.id}"
    gone = run_cli(server.home, "delete", queued.id, env=env, check=False)
    assert gone.returncode == 1 and "404" in gone.stderr
    no_server = {k: v for k, v in env.items() if k != "REELQ_BASE_URL"}
    refused = run_cli(server.home, "list", env=no_server, check=False)
    assert refused.returncode == 2 and "REELQ_BASE_URL" in refused.stderr
