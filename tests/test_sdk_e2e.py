"""The SDK and the remote CLI against a real `reelq serve` (not a stand-in)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import reelq
from reelq.client import AsyncClient, AuthenticationError, BadRequestError, Client, NotFoundError, Task
from tests.conftest import Server, reelq_env, run_cli
from tests.videos import decode_frames

pytestmark = pytest.mark.e2e


@pytest.mark.scaled
def test_sync_client_create_wait_download(app_server: Server, tmp_path: Path) -> None:
    assert reelq.Client is Client
    seen: list[Task] = []
    with Client(base_url=app_server.base_url, api_key=app_server.keys[0]) as client:
        task = client.create(prompt="a clockwork bird", model="viduq3-pro", duration=2, resolution="540p")
        assert task.status == "queued" and task.id.startswith("video_")
        done = client.wait(task.id, timeout=120, poll_interval=0.1, on_update=seen.append)
        assert done.status == "completed" and done.ok
        assert done.actual_duration == 2 and done.total_tokens == 450
        out = client.download(done, tmp_path / "bird.mp4")
        assert client.get(task.id).status == "completed"
    assert seen and seen[-1].status == "completed"
    assert len(decode_frames(out)) == 48


def test_sync_client_errors_are_typed(app_server: Server) -> None:
    with Client(base_url=app_server.base_url, api_key=app_server.keys[0]) as client:
        with pytest.raises(BadRequestError) as bad:
            client.create(prompt="x", duration=99)
        assert bad.value.status_code == 400 and bad.value.param == "duration"
        with pytest.raises(NotFoundError):
            client.get("video_fd35ee52-2a98-44a6-b930-29a88ce9b8fd")
    with Client(base_url=app_server.base_url, api_key="rq_not_a_key") as client:
        with pytest.raises(AuthenticationError) as unauth:
            client.get("video_fd35ee52-2a98-44a6-b930-29a88ce9b8fd")
        assert unauth.value.code == "invalid_api_key"


def test_failed_task_is_a_result_not_an_exception(app_server: Server) -> None:
    with Client(base_url=app_server.base_url, api_key=app_server.keys[0]) as client:
        done = client.create_and_wait(prompt="bomb making at home", duration=1, timeout=60)
    assert done.status == "failed" and not done.ok
    assert done.error is not None and done.error.startswith("Content policy violation:")


@pytest.mark.scaled
def test_async_client(app_server: Server, tmp_path: Path) -> None:
    async def main() -> Path:
        async with AsyncClient(base_url=app_server.base_url, api_key=app_server.keys[1]) as client:
            task = await client.create(prompt="an async kite", duration=1, resolution="540p", seed=5)
            done = await client.wait(task.id, timeout=120, poll_interval=0.1)
            assert done.status == "completed"
            return await client.download(done, tmp_path / "kite.mp4")

    assert len(decode_frames(asyncio.run(main()))) == 24


@pytest.mark.scaled
def test_generate_remote_uses_the_server(app_server: Server, tmp_path: Path) -> None:
    out = tmp_path / "remote.mp4"
    env = reelq_env(
        tmp_path / "unused-home", REELQ_BASE_URL=app_server.base_url, REELQ_API_KEY=app_server.keys[0]
    )
    result = run_cli(
        tmp_path,
        "generate",
        "a remote lantern",
        "-o",
        str(out),
        "--duration",
        "1",
        "--resolution",
        "540p",
        env=env,
    )
    assert "wrote" in result.stderr
    assert len(decode_frames(out)) == 24
    assert not (tmp_path / "unused-home" / "reelq.db").exists()  # nothing rendered locally
