"""The Vidu platform's own API shape, exercised by a client written from the platform's documentation
(platform.vidu.com/docs: `Authorization: Token`, `/ent/v2/...`, `state`, `creations[]`, `credits`),
with plain httpx against `reelq serve`."""

from __future__ import annotations

import base64
import io
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from reelq.engines.relay.upstream import COMPLETED
from reelq.engines.relay.vidu_upstream import parse_status
from tests.conftest import Server, free_port, reelq_env
from tests.harness import AppServer
from tests.videos import decode_frames

# Every test here reads or writes tasks, videos, limits or deliveries: the backend's behaviour.
pytestmark = [pytest.mark.e2e, pytest.mark.scaled]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("vidu-platform")
    # A second of render latency: a task can be cancelled before it finishes.
    env = reelq_env(home, REELQ_POLL_RATE="5", REELQ_SYNTHETIC_DELAY="1")
    srv = AppServer(home=home, port=free_port(), env=env)
    srv.new_key("a")
    srv.new_key("b")
    srv.start(workers=2)
    yield srv
    srv.stop(signal.SIGKILL)


class PlatformClient:
    """What a user of the official platform writes from its docs, with only the base URL changed."""

    def __init__(self, base_url: str, key: str) -> None:
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Token {key}"}, timeout=30)

    def create(self, route: str, body: dict[str, Any]) -> httpx.Response:
        return self.http.post(f"/ent/v2/{route}", json=body)

    def creations(self, task_id: str) -> dict[str, Any]:
        response = self.http.get(f"/ent/v2/tasks/{task_id}/creations")
        response.raise_for_status()
        return response.json()

    def wait(self, task_id: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = self.creations(task_id)
            if answer["state"] in ("success", "failed"):
                return answer
            time.sleep(0.25)
        raise AssertionError(f"{task_id} did not finish")


def image_uri(color: tuple[int, int, int]) -> str:
    out = io.BytesIO()
    Image.new("RGB", (320, 180), color).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def test_text2video_to_success_with_creations_and_cover(server: Server, tmp_path: Path) -> None:
    client = PlatformClient(server.base_url, server.keys[0])
    body = {
        "model": "viduq3-pro",
        "prompt": "a kite over a beach",
        "duration": 2,
        "aspect_ratio": "16:9",
        "resolution": "540p",
        "style": "general",  # the platform's fields we do not use are accepted
        "movement_amplitude": "auto",
        "payload": "order-42",
    }
    created = client.create("text2video", body)
    assert created.status_code == 200, created.text
    task = created.json()
    assert task["state"] == "created"
    assert task["payload"] == "order-42"
    assert (task["model"], task["duration"], task["resolution"]) == ("viduq3-pro", 2, "540p")
    # Credits are our tokens: 300/s x 2 s x 0.75 (540p), expected before, charged after.
    assert task["credits"] == 450
    done = client.wait(task["task_id"])
    assert done["state"] == "success" and done["err_code"] == ""
    assert done["credits"] == 450
    [creation] = done["creations"]
    assert set(creation) >= {"id", "url", "cover_url"}
    video = httpx.get(creation["url"], timeout=60)  # signed: no Authorization, as the platform's links
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    (tmp_path / "v.mp4").write_bytes(video.content)
    frames = decode_frames(tmp_path / "v.mp4")
    assert len(frames) == 48 and frames[0].shape == (540, 960, 3)
    cover = httpx.get(creation["cover_url"], timeout=60)
    assert cover.status_code == 200 and cover.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(cover.content)).size == (960, 540)
    # A cover link's signature does not open the video, nor one altered.
    forged = creation["cover_url"].replace("signature=", "signature=0")
    assert httpx.get(forged, timeout=60).status_code == 403
    # Our own relay engine's client, written from the same docs, reads the answer as completed.
    status = parse_status(done)
    assert status.status == COMPLETED and status.video_url == creation["url"]
    # The same task on the reseller surface and on OpenAI's.
    with server.client() as http:
        assert http.get(f"/v1/result/{task['task_id']}").json()["totalTokens"] == 450
        openai_view = http.get(f"/v1/videos/{task['task_id']}").json()
    assert (openai_view["status"], openai_view["size"]) == ("completed", "960x540")


def test_img2video_and_start_end2video(server: Server) -> None:
    client = PlatformClient(server.base_url, server.keys[0])
    one = client.create(
        "img2video",
        {"model": "viduq3-turbo", "prompt": "wake up", "images": [image_uri((10, 200, 10))], "duration": 1},
    )
    assert one.status_code == 200, one.text
    two = client.create(
        "start-end2video",
        {
            "model": "viduq3-turbo",
            "prompt": "dawn to dusk",
            "images": [image_uri((250, 250, 200)), image_uri((10, 10, 60))],
            "duration": 1,
            "resolution": "540p",
        },
    )
    assert two.status_code == 200, two.text
    for task in (one.json(), two.json()):
        assert client.wait(task["task_id"])["state"] == "success"


def test_errors_in_the_platform_shape(server: Server) -> None:
    client = PlatformClient(server.base_url, server.keys[0])
    wrong_count = client.create("img2video", {"model": "viduq3-pro", "prompt": "x", "images": []})
    assert wrong_count.status_code == 400
    assert wrong_count.json()["reason"] == "FieldItemCountOutOfRange"
    assert wrong_count.json()["param"] == "images"
    lacking = client.create("text2video", {"model": "viduq3-pro"})
    assert lacking.status_code == 400 and lacking.json()["reason"] == "FieldLacking"
    bad = client.create("text2video", {"model": "viduq3-pro", "prompt": "x", "resolution": "360p"})
    assert bad.status_code == 400 and bad.json()["param"] == "resolution"
    assert set(bad.json()) == {"reason", "message", "param"}
    bad_image = client.create(
        "img2video", {"model": "viduq3-pro", "prompt": "x", "images": ["data:image/png;base64,AAAA"]}
    )
    assert bad_image.status_code == 400 and bad_image.json()["param"] == "images"
    # Bearer is another surface's scheme: this one wants `Token`.
    bearer = httpx.post(
        f"{server.base_url}/ent/v2/text2video",
        headers={"Authorization": f"Bearer {server.keys[0]}"},
        json={"model": "viduq3-pro", "prompt": "x"},
        timeout=60,
    )
    assert bearer.status_code == 401 and bearer.json()["reason"] == "Unauthorized"
    assert bearer.headers["www-authenticate"] == "Token"
    unknown = client.http.get("/ent/v2/tasks/video_00000000-0000-4000-8000-000000000000/creations")
    assert unknown.status_code == 404 and unknown.json()["reason"] == "TaskNotFound"
    # Another key's task is unknown too.
    task = client.create("text2video", {"model": "viduq3-turbo", "prompt": "mine", "duration": 1}).json()
    other = PlatformClient(server.base_url, server.keys[1])
    assert other.http.get(f"/ent/v2/tasks/{task['task_id']}/creations").status_code == 404


def test_cancel(server: Server) -> None:
    client = PlatformClient(server.base_url, server.keys[0])
    task = client.create("text2video", {"model": "viduq3-pro", "prompt": "never mind", "duration": 4}).json()
    cancelled = client.http.post(f"/ent/v2/tasks/{task['task_id']}/cancel", json={"id": task["task_id"]})
    assert cancelled.status_code == 200, cancelled.text
    answer = client.creations(task["task_id"])
    assert (answer["state"], answer["err_code"], answer["credits"]) == ("failed", "UserCancelled", 0)
    with server.client() as http:
        assert http.get(f"/v1/result/{task['task_id']}").json()["error"] == "Cancelled by user."
