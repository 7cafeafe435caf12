"""Request bodies under abuse (issue 19, item 7): a create's body is read only after its key is
authenticated and charged its create rate limit, and the bodies held at once stay within the
process's byte budget (api/bodies.py), on both transports and every create surface.

Each request is sent straight to the real ASGI app with a `receive` we control, so a test sees
whether (and how much of) the body was ever asked for.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from reelq.api import create_app, create_asgi
from reelq.api.app import build_services
from reelq.api.bodies import BodyBudget
from reelq.config import load_settings

pytestmark = [pytest.mark.service, pytest.mark.anyio]

MB = 1024 * 1024
GOOD = {"model": "viduq3-turbo", "prompt": "a lighthouse at dusk", "duration": 1, "resolution": "540p"}
BOUNDARY = "reelqboundary"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("REELQ_"):
            monkeypatch.delenv(name)


class Exchange:
    """One request through an ASGI app: the body is handed out chunk by chunk as the app asks."""

    def __init__(self, chunks: list[bytes], hold: asyncio.Event | None = None) -> None:
        self.chunks = list(chunks)
        self.asked = 0  # how many times the app asked for body
        self.hold = hold  # set: the last chunk waits for it (a body still arriving)
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body = b""
        self.reading = asyncio.Event()  # set once the app asked for the body

    async def receive(self) -> dict[str, Any]:
        self.asked += 1
        self.reading.set()
        if not self.chunks:
            await asyncio.Event().wait()  # the body is over: a real server now waits for a hang-up
        chunk = self.chunks.pop(0)
        if not self.chunks and self.hold is not None:
            await self.hold.wait()
        return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks)}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")


def scope(path: str, headers: dict[str, str]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 1234),
    }


async def send_request(app: Any, path: str, headers: dict[str, str], exchange: Exchange) -> Exchange:
    await app(scope(path, headers), exchange.receive, exchange.send)
    return exchange


def multipart(fields: dict[str, str]) -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    ]
    return ("".join(parts) + f"--{BOUNDARY}--\r\n").encode()


# Every create surface: (path, auth scheme, content type, body).
SURFACES = {
    "vidu": ("/v1/vidu/videos", "Bearer", "application/json", orjson.dumps(GOOD)),
    "openai-json": (
        "/v1/videos",
        "Bearer",
        "application/json",
        orjson.dumps({"model": "viduq3-turbo", "prompt": "a lighthouse", "seconds": "1"}),
    ),
    "openai-multipart": (
        "/v1/videos",
        "Bearer",
        f"multipart/form-data; boundary={BOUNDARY}",
        multipart({"model": "viduq3-turbo", "prompt": "a lighthouse", "seconds": "1"}),
    ),
    "ent": (
        "/ent/v2/text2video",
        "Token",
        "application/json",
        orjson.dumps(
            {"model": "viduq3-turbo", "prompt": "a lighthouse", "duration": 1, "resolution": "540p"}
        ),
    ),
}


@pytest.fixture
def apps(tmp_path: Path, clean_env: None) -> Iterator[Callable[..., dict[str, Any]]]:
    made: list[Any] = []

    def build(**overrides: Any) -> dict[str, Any]:
        settings = load_settings(
            home=tmp_path / f"home{len(made)}", poll_rate=1000.0, max_active_per_key=10000, **overrides
        )
        fast, routed = build_services(settings), build_services(settings)
        made.extend([fast, routed])
        key = fast.store.create_key("k")[1]
        return {"fast": create_asgi(settings, fast), "routed": create_app(settings, routed), "key": key,
                "services": {"fast": fast, "routed": routed}}

    yield build
    for services in made:
        services.close()


@pytest.mark.parametrize("surface", sorted(SURFACES))
@pytest.mark.parametrize("transport", ["fast", "routed"])
async def test_a_key_over_its_create_limit_is_refused_before_its_body_is_read(
    apps: Callable[..., dict[str, Any]], surface: str, transport: str
) -> None:
    built = apps(create_rate=1.0)  # a burst of one create per key
    app, key = built[transport], built["key"]
    path, scheme, content_type, body = SURFACES[surface]
    headers = {"authorization": f"{scheme} {key}", "content-type": content_type,
               "content-length": str(len(body))}
    first = await send_request(app, path, headers, Exchange([body]))
    assert first.status == 200, first.body
    assert first.asked >= 1
    second = await send_request(app, path, headers, Exchange([body]))
    assert second.status == 429, second.body
    assert second.headers.get("retry-after")
    assert second.asked == 0  # not a byte of the body was asked for


@pytest.mark.parametrize("transport", ["fast", "routed"])
async def test_an_unauthenticated_create_is_refused_before_its_body_is_read(
    apps: Callable[..., dict[str, Any]], transport: str
) -> None:
    app = apps()[transport]
    body = orjson.dumps(GOOD)
    headers = {"authorization": "Bearer nope", "content-type": "application/json",
               "content-length": str(len(body))}
    answer = await send_request(app, "/v1/vidu/videos", headers, Exchange([body]))
    assert answer.status == 401 and answer.asked == 0


def padded_create(size: int) -> bytes:
    """A valid create body of exactly `size` bytes (JSON padded with spaces)."""
    body = orjson.dumps(GOOD)
    return body + b" " * (size - len(body))


@pytest.mark.parametrize("surface", ["vidu", "openai-json", "ent"])
@pytest.mark.parametrize("transport", ["fast", "routed"])
async def test_bodies_held_at_once_stay_within_the_budget(
    apps: Callable[..., dict[str, Any]], surface: str, transport: str
) -> None:
    built = apps(body_budget_mb=1.0)
    app, key = built[transport], built["key"]
    budget: BodyBudget = built["services"][transport].bodies
    budget.wait = 0.0  # answer at once instead of waiting for room (the wait is covered below)
    path, scheme, content_type, small = SURFACES[surface]
    size = 700 * 1024
    body = small + b" " * (size - len(small))
    headers = {"authorization": f"{scheme} {key}", "content-type": content_type, "content-length": str(size)}

    # A first body still arriving holds its 700 KiB of the 1 MiB budget...
    release = asyncio.Event()
    slow = Exchange([body[: size // 2], body[size // 2 :]], hold=release)
    first = asyncio.create_task(send_request(app, path, headers, slow))
    await asyncio.wait_for(slow.reading.wait(), 10)
    assert budget.held == size
    # ...so a second one does not fit: 503 with Retry-After, and its body is never read.
    second = await send_request(app, path, headers, Exchange([body]))
    assert second.status == 503, second.body
    assert second.headers.get("retry-after") == "1"
    assert second.asked == 0
    # A small create still fits beside it.
    tiny = {**headers, "content-length": str(len(small))}
    assert (await send_request(app, path, tiny, Exchange([small]))).status == 200
    release.set()
    assert (await asyncio.wait_for(first, 30)).status == 200
    assert budget.held == 0  # given back when each request ended
    # With the room back, the same large body is admitted.
    assert (await send_request(app, path, headers, Exchange([body]))).status == 200


async def test_a_body_waits_briefly_for_room_before_503(apps: Callable[..., dict[str, Any]]) -> None:
    built = apps(body_budget_mb=1.0)
    app, key = built["fast"], built["key"]
    budget: BodyBudget = built["services"]["fast"].bodies
    budget.wait = 30.0
    size = 700 * 1024
    body = padded_create(size)
    headers = {
        "authorization": f"Bearer {key}", "content-type": "application/json", "content-length": str(size)
    }
    release = asyncio.Event()
    slow = Exchange([body[:100], body[100:]], hold=release)
    first = asyncio.create_task(send_request(app, "/v1/vidu/videos", headers, slow))
    await asyncio.wait_for(slow.reading.wait(), 10)
    waiting_exchange = Exchange([body])
    waiting = asyncio.create_task(send_request(app, "/v1/vidu/videos", headers, waiting_exchange))
    await asyncio.sleep(0.2)
    assert not waiting.done() and waiting_exchange.asked == 0  # waiting for room, body unread
    release.set()
    assert (await asyncio.wait_for(first, 30)).status == 200
    assert (await asyncio.wait_for(waiting, 30)).status == 200  # admitted once the first ended


async def test_a_body_of_unannounced_length_is_counted_as_it_arrives(
    apps: Callable[..., dict[str, Any]],
) -> None:
    built = apps(body_budget_mb=1.0)
    app, key = built["fast"], built["key"]
    budget: BodyBudget = built["services"]["fast"].bodies
    budget.wait = 0.0
    budget.held = 900 * 1024  # another request holds most of the budget
    body = padded_create(300 * 1024)
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}  # chunked
    answer = await send_request(app, "/v1/vidu/videos", headers, Exchange([body[:1000], body[1000:]]))
    assert answer.status == 503, answer.body
    assert budget.held == 900 * 1024  # what it had taken was given back


def test_one_body_alone_always_fits_the_budget() -> None:
    budget = BodyBudget(1 * MB)
    assert budget.try_take(50 * MB)  # alone: admitted even over the budget
    assert not budget.try_take(1)
    budget.give(50 * MB)
    assert budget.try_take(512 * 1024) and budget.try_take(512 * 1024) and not budget.try_take(1)


def test_a_data_uri_is_decoded_without_copying_it_whole() -> None:
    """The payload is decoded a slice at a time: no whole copy of it as a slice, padded or ASCII bytes
    (each as large as the data URI) on the way to the decoded image."""
    import base64
    import tracemalloc

    from reelq.images import parse_data_uri

    raw = os.urandom(12 * MB)
    uri = "data:image/png;base64," + base64.b64encode(raw).decode()  # 16 MiB of base64
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        data = parse_data_uri(uri, "first_image")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert data == raw
    # The decoded bytes, their pieces while joined, and one slice: about 2x the image, not 3.7x.
    assert peak < 2.5 * len(raw), f"peak {peak / MB:.1f} MiB for a {len(raw) / MB:.0f} MiB image"
