"""The OpenAI Videos surface, driven by the official `openai` SDK, unmodified, against `reelq serve`."""

from __future__ import annotations

import io
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from tests.conftest import Server, free_port, reelq_env, wait_terminal
from tests.harness import AppServer
from tests.videos import decode_frames
from tests.webhook_receiver import Receiver

# Every test here reads or writes tasks, videos, limits or deliveries: the backend's behaviour.
pytestmark = [pytest.mark.e2e, pytest.mark.scaled]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("openai")
    # Polls faster than the SDK's helper does; a second key to check isolation.
    env = reelq_env(home, REELQ_POLL_RATE="5", REELQ_ALLOW_PRIVATE_URLS="true")  # the local webhook receiver
    srv = AppServer(home=home, port=free_port(), env=env)
    srv.new_key("a")
    srv.new_key("b")
    srv.start(workers=2)
    yield srv
    srv.stop(signal.SIGKILL)


def sdk(server: Server, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(api_key=key or server.keys[0], base_url=f"{server.base_url}/v1", max_retries=3)


def png(color: tuple[int, int, int], size: tuple[int, int] = (320, 180)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def test_sdk_lifecycle(server: Server, tmp_path: Path) -> None:
    client = sdk(server)
    video = client.videos.create(
        prompt="a paper boat on a pond", model="viduq3-turbo", seconds="2", size="960x540"
    )
    assert video.object == "video"
    assert video.id.startswith("video_")
    assert video.status in ("queued", "in_progress")
    assert (video.seconds, video.size, video.model) == ("2", "960x540", "viduq3-turbo")
    assert video.error is None and video.completed_at is None and video.expires_at is None

    assert client.videos.retrieve(video.id).id == video.id

    done = client.videos.create_and_poll(
        prompt="a lighthouse at dusk", model="viduq3-pro", seconds="1", size="720x1280", poll_interval_ms=200
    )
    assert done.status == "completed", done
    assert done.progress == 100
    assert done.completed_at is not None and done.expires_at is not None
    assert done.expires_at > done.completed_at >= done.created_at

    # Download through the SDK to a file that decodes: 1 s at 24 fps, portrait 720x1280.
    target = tmp_path / "out.mp4"
    client.videos.download_content(done.id).write_to_file(target)
    frames = decode_frames(target)
    assert len(frames) == 24
    assert frames[0].shape == (1280, 720, 3)
    thumb = Image.open(io.BytesIO(client.videos.download_content(done.id, variant="thumbnail").content))
    assert (thumb.format, thumb.size) == ("JPEG", (720, 1280))

    # Range works on /content (players and resumable downloads).
    headers = {"Authorization": f"Bearer {server.keys[0]}", "Range": "bytes=0-99"}
    part = httpx.get(
        f"{server.base_url}/v1/videos/{done.id}/content", headers=headers, follow_redirects=True, timeout=60
    )
    assert part.status_code == 206 and len(part.content) == 100
    assert part.headers["content-type"] == "video/mp4"
    assert part.content == target.read_bytes()[:100]

    # One task, every surface: the same state on the reseller's and the Vidu platform's shapes.
    with server.client() as http:
        assert http.get(f"/v1/result/{done.id}").json()["status"] == "completed"
    platform = httpx.get(
        f"{server.base_url}/ent/v2/tasks/{done.id}/creations",
        headers={"Authorization": f"Token {server.keys[0]}"},
        timeout=60,
    ).json()
    assert platform["state"] == "success"

    # List: the SDK pages on with `after` (limit 1 forces a page per task); order asc is the reverse.
    ids = [v.id for v in client.videos.list(limit=1)]
    assert ids[:2] == [done.id, video.id]
    ascending = [v.id for v in client.videos.list(order="asc", limit=100)]
    assert ascending == list(reversed(ids))
    page = client.videos.list(limit=1, after=done.id)
    assert [v.id for v in page.data] == [video.id]

    deleted = client.videos.delete(done.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (done.id, True, "video.deleted")
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(done.id)


def test_input_reference_upload_is_the_first_frame(server: Server, tmp_path: Path) -> None:
    client = sdk(server)
    color = (200, 40, 30)
    video = client.videos.create_and_poll(
        prompt="it moves",
        model="viduq3-turbo",
        seconds="1",
        size="960x540",
        input_reference=("frame.png", png(color), "image/png"),
        poll_interval_ms=200,
    )
    assert video.status == "completed", video
    target = tmp_path / "i2v.mp4"
    client.videos.download_content(video.id).write_to_file(target)
    first = decode_frames(target)[0]
    # The uploaded image fills the first frame (cover-fit): its colour dominates.
    centre = first[200:340, 380:580].reshape(-1, 3).mean(axis=0)
    assert np.abs(centre - np.array(color)).max() < 30, centre


def test_sdk_errors_are_its_own_classes(server: Server) -> None:
    with pytest.raises(openai.AuthenticationError):
        sdk(server, key="rq_not_a_key").videos.retrieve("video_00000000-0000-4000-8000-000000000000")
    client = sdk(server)
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve("video_00000000-0000-4000-8000-000000000000")
    with pytest.raises(openai.BadRequestError) as bad_size:
        client.videos.create(prompt="x", model="viduq3-pro", size="1024x1792")
    assert bad_size.value.param == "size" and bad_size.value.code == "invalid_size"
    with pytest.raises(openai.BadRequestError) as bad_seconds:
        client.videos.create(prompt="x", model="viduq3-pro", seconds="60")
    assert bad_seconds.value.param == "seconds"
    with pytest.raises(openai.BadRequestError) as bad_model:
        client.videos.create(prompt="x", model="sora-2")
    assert bad_model.value.param == "model"
    # Another key's task is not found, exactly like one that never existed.
    video = client.videos.create(prompt="mine", model="viduq3-turbo", seconds="1", size="960x540")
    with pytest.raises(openai.NotFoundError):
        sdk(server, key=server.keys[1]).videos.retrieve(video.id)


def test_error_envelope_and_json_create(server: Server) -> None:
    url = f"{server.base_url}/v1/videos"
    headers = {"Authorization": f"Bearer {server.keys[0]}"}
    bad = httpx.post(url, headers=headers, json={"prompt": "x", "size": "1x1"}, timeout=60)
    assert bad.status_code == 400
    error = bad.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == "size"
    unauth = httpx.get(url, headers={"Authorization": "Bearer nope"}, timeout=60)
    assert unauth.status_code == 401 and unauth.json()["error"]["code"] == "invalid_api_key"
    # A JSON create (not multipart) with OpenAI's defaults: 4 s, 720x1280, the first served model.
    made = httpx.post(url, headers=headers, json={"prompt": "defaults"}, timeout=60)
    assert made.status_code == 200, made.text
    body = made.json()
    assert (body["seconds"], body["size"], body["model"]) == ("4", "720x1280", "viduq3-pro")
    assert "openai-poll-after-ms" in made.headers
    with server.client() as http:
        http.post(f"/v1/vidu/videos/{body['id']}/cancel")
        assert wait_terminal(http, body["id"])["error"] == "Cancelled by user."
    failed = httpx.get(f"{url}/{body['id']}", headers=headers, timeout=60).json()
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "cancelled", "message": "Cancelled by user."}
    content = httpx.get(f"{url}/{body['id']}/content", headers=headers, timeout=60)
    assert content.status_code == 400 and content.json()["error"]["code"] == "video_not_ready"


def test_idempotency_and_webhook_fields_apply(server: Server) -> None:
    client = sdk(server)
    kwargs = {"prompt": "same", "model": "viduq3-turbo", "seconds": "1", "size": "960x540"}
    first = client.videos.create(**kwargs, extra_headers={"Idempotency-Key": "k-1"})
    again = client.videos.create(**kwargs, extra_headers={"Idempotency-Key": "k-1"})
    assert first.id == again.id
    with pytest.raises(openai.ConflictError):
        client.videos.create(**{**kwargs, "prompt": "other"}, extra_headers={"Idempotency-Key": "k-1"})


def test_webhooks_and_usage_apply(server: Server) -> None:
    """A task made here is called back like any other (the `callback_url` extension through the SDK's
    `extra_body`) and charged to the key's usage."""
    receiver = Receiver().start()
    try:
        client = sdk(server, key=server.keys[1])
        done = client.videos.create_and_poll(
            prompt="called back",
            model="viduq3-pro",
            seconds="1",
            size="960x540",
            extra_body={"callback_url": receiver.url()},
            poll_interval_ms=200,
        )
        assert done.status == "completed"
        receiver.wait_for(
            lambda got: any(r.json["id"] == done.id and r.json["status"] == "completed" for r in got), 60
        )
    finally:
        receiver.stop()
    with server.client(server.keys[1]) as http:
        usage = http.get("/v1/usage").json()
    # 300 tokens/s x 1 s x 0.75 (540p)
    assert usage["videos"] == 1 and usage["totalTokens"] == 225
