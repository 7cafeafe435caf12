"""Reads other than a task's status have a per-key budget, and covers are decoded a few at a time
(issue 19 item 11).

In process through `create_asgi` on a temporary SQLite home, with real MP4s in the local storage
(encoded with PyAV) so that `/content`, thumbnails and covers do their real work.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from reelq.api import create_asgi
from reelq.api.deps import Services
from reelq.config import load_settings
from reelq.database import NewTask
from reelq.media import encode_frames
from reelq.service import covers

pytestmark = [pytest.mark.service, pytest.mark.anyio]

READ_BURST = 3
SLOTS = 2  # covers.COVER_SLOTS: the test also runs (and fails) where it does not exist


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Api:
    client: httpx.AsyncClient
    services: Services

    def key(self) -> str:
        return self.services.store.create_key("reads")[1]

    def completed(self, plain: str) -> str:
        """A completed task of the key, with a real 64x64 MP4 stored as its video."""
        store = self.services.store
        key_id = store.key_id_for(plain)
        assert key_id is not None
        new = NewTask(model="viduq3-turbo", prompt="reads", duration=1, aspect_ratio="1:1", resolution="540p")
        task_id = store.create_task(key_id, new)[0].id
        assert store.claim_next("w1", 30, task_id) is not None
        video_key = f"{task_id}-1.mp4"
        frames = (np.full((64, 64, 3), 40 * i, dtype=np.uint8) for i in range(4))
        encode_frames(frames, self.services.storage.path(video_key), 64, 64)
        assert store.complete(task_id, "w1", video_key, 1.0, 112)
        return task_id

    async def get(self, url: str, plain: str | None = None, scheme: str = "Bearer") -> httpx.Response:
        headers = {"Authorization": f"{scheme} {plain}"} if plain else {}
        return await self.client.get(url, headers=headers)


async def _api(tmp_path: Path, **settings: object) -> AsyncIterator[Api]:
    app = create_asgi(
        load_settings(
            home=tmp_path / "home",
            poll_rate=1000.0,
            poll_burst=1000.0,
            create_rate=100000.0,
            max_active_per_key=10000,
            **settings,
        )
    )
    services: Services = app.app.state.services  # type: ignore[attr-defined]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://reelq.test") as client:
        yield Api(client, services)
    services.close()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    # A slow refill (one read a minute) so that the burst, not the clock, decides.
    async for value in _api(tmp_path, read_rate=1 / 60, read_burst=float(READ_BURST)):
        yield value


@pytest.fixture
async def roomy(tmp_path: Path) -> AsyncIterator[Api]:
    async for value in _api(tmp_path):
        yield value


def assert_limited(response: httpx.Response) -> dict[str, object]:
    assert response.status_code == 429, (response.status_code, response.text)
    assert int(response.headers["retry-after"]) >= 1
    return response.json()["error"]


@pytest.mark.parametrize(
    "route",
    [
        "/v1/vidu/videos",
        "/v1/videos",
        "/v1/usage",
        "/v1/videos/{id}/content",
        "/v1/videos/{id}/content?variant=thumbnail",
    ],
)
async def test_each_read_route_has_a_per_key_budget(api: Api, route: str) -> None:
    plain, other = api.key(), api.key()
    task_id = api.completed(plain)
    url = route.format(id=task_id)
    for _ in range(READ_BURST):
        answer = await api.get(url, plain)
        assert answer.status_code == 200, answer.text
    error = assert_limited(await api.get(url, plain))
    # The OpenAI surface answers in OpenAI's envelope, the rest in SPEC §4's: both say rate limit.
    assert error["code"] == "rate_limit_exceeded"
    if url.startswith("/v1/videos"):
        assert error["type"] == "rate_limit_error"
    # Per key: another key is unaffected, and status reads keep their own (poll) limit.
    assert (await api.get(route.format(id=api.completed(other)), other)).status_code == 200
    assert (await api.get(f"/v1/result/{task_id}", plain)).status_code == 200


async def test_the_read_routes_share_one_budget(api: Api) -> None:
    plain = api.key()
    task_id = api.completed(plain)
    for url in ("/v1/vidu/videos", "/v1/usage", f"/v1/videos/{task_id}/content?variant=thumbnail"):
        assert (await api.get(url, plain)).status_code == 200
    assert_limited(await api.get("/v1/videos", plain))


async def test_a_signed_cover_link_has_a_budget_per_task(api: Api) -> None:
    plain = api.key()
    task_id = api.completed(plain)
    creations = (await api.get(f"/ent/v2/tasks/{task_id}/creations", plain, scheme="Token")).json()
    cover_url = creations["creations"][0]["cover_url"]
    for _ in range(READ_BURST):
        cover = await api.client.get(cover_url)
        assert cover.status_code == 200 and cover.headers["content-type"] == "image/jpeg"
    assert_limited(await api.client.get(cover_url))


async def test_covers_are_decoded_a_few_at_a_time(roomy: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """However many thumbnails are asked for at once, at most COVER_SLOTS decode at a time; the rest
    wait (on the event loop) and are all answered."""
    active = 0
    most = 0
    calls = 0
    lock = threading.Lock()
    crowded = threading.Event()
    real = covers.first_frame_jpeg

    def counted(path: Path) -> bytes:
        nonlocal active, most, calls
        with lock:
            calls += 1
            active += 1
            most = max(most, active)
            if active > SLOTS:
                crowded.set()
        try:
            # Hold the slot briefly so that decodes which are allowed to overlap do overlap; ends at
            # once if more than COVER_SLOTS are in here together (the failure being tested for).
            crowded.wait(timeout=0.3)
            return real(path)
        finally:
            with lock:
                active -= 1

    monkeypatch.setattr(covers, "first_frame_jpeg", counted)
    plain = roomy.key()
    ids = [roomy.completed(plain) for _ in range(6)]
    answers = await asyncio.gather(
        *(roomy.get(f"/v1/videos/{task_id}/content?variant=thumbnail", plain) for task_id in ids)
    )
    assert [a.status_code for a in answers] == [200] * len(ids)
    assert all(a.content.startswith(b"\xff\xd8\xff") for a in answers)
    assert most <= SLOTS, f"{most} covers decoded at once"
    assert covers.COVER_SLOTS == SLOTS
    # Made once: asked again, each comes from the cache without a decode.
    decodes = calls
    again = await roomy.get(f"/v1/videos/{ids[0]}/content?variant=thumbnail", plain)
    assert again.content == answers[0].content
    assert calls == decodes == len(ids)


def test_the_cover_cache_is_bounded_in_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Files:  # what Covers uses of a Storage that keeps local files
        serves_files = True

        def path(self, key: str) -> Path:
            return tmp_path / key

    for n in range(3):
        frames = (np.full((64, 64, 3), 60 * n + 10 * i, dtype=np.uint8) for i in range(2))
        encode_frames(frames, tmp_path / f"{n}.mp4", 64, 64)
    made = 0
    real = covers.first_frame_jpeg

    def counted(path: Path) -> bytes:
        nonlocal made
        made += 1
        return real(path)

    monkeypatch.setattr(covers, "first_frame_jpeg", counted)
    size = len(real(tmp_path / "0.mp4"))
    monkeypatch.setattr(covers, "MAX_CACHED_BYTES", 2 * size + size // 2)  # room for two, not three
    cache = covers.Covers()
    for n in range(3):
        cache.jpeg(f"video_{n}", f"{n}.mp4", Files())
    assert cache.cached("video_0", "0.mp4") is None  # the oldest went to make room
    assert cache.cached("video_2", "2.mp4") is not None
    cache.jpeg("video_2", "2.mp4", Files())
    assert made == 3  # the cached one was not decoded again
