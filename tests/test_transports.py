"""One task service, every transport: the same requests answer the same through each way in.

uvicorn serves `create_asgi` (the raw-ASGI fast path in front of the FastAPI app); the routed
app alone (`create_app`) is the documented surface and what answers when the fast path steps
aside; and on a database other than SQLite the routed app reads through SQLAlchemy in the
thread pool instead of the inline reader. Each test sends the same requests, in process
through httpx's ASGI transport, to three apps over one SQLite file, each with its own
services (rate limiters and caches), and asserts identical answers: status, the headers a
client acts on, and the body. A create's new id and creation time are the only fields allowed
to differ, and only where each app created its own task.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from PIL import Image

from reelq.api import create_app, create_asgi
from reelq.api.app import build_services
from reelq.api.deps import Services
from reelq.config import Settings, load_settings
from reelq.database import NewTask, TaskStore, make_engine, migrate
from reelq.database.fastread import SqliteReader
from reelq.domain import Status, is_task_id
from reelq.ratelimit import MemoryRateLimiter
from reelq.service import TaskService, TaskView
from reelq.service.errors import Conflict, NotFound, RateLimited, Unauthorized
from reelq.storage import LocalStorage

pytestmark = pytest.mark.anyio

# The headers a client acts on; the rest (date, server) are uvicorn's and not sent here.
MATTERS = ("content-type", "content-length", "retry-after", "www-authenticate")
GENEROUS = {
    "poll_rate": 1000.0,
    "poll_burst": 1000.0,
    "create_rate": 100000.0,
    "max_active_per_key": 10000,
}
GOOD = {"model": "viduq3-turbo", "prompt": "a lighthouse at dusk", "duration": 1, "resolution": "540p"}
MB = 1024 * 1024


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Transports:
    """The three apps over one database, and a store to set task states with."""

    clients: dict[str, httpx.AsyncClient]
    store: TaskStore
    services: list[Services] = field(default_factory=list)

    def key(self, name: str = "k") -> str:
        return self.store.create_key(name)[1]

    def task(self, plain: str) -> str:
        key_id = self.store.key_id_for(plain)
        assert key_id is not None
        new = NewTask(
            model="viduq3-turbo", prompt="state", duration=1, aspect_ratio="16:9", resolution="540p"
        )
        row, _ = self.store.create_task(key_id, new)
        return row.id

    async def each(
        self, method: str, url: str, *, key: str | Callable[[str], str] | None = None, **kwargs: Any
    ) -> dict[str, httpx.Response]:
        """Send one request to every app; `key` may differ per app (a function of the app's name)."""
        answers = {}
        headers = kwargs.pop("headers", None) or {}
        for name, client in self.clients.items():
            plain = key(name) if callable(key) else key
            sent = dict(headers)
            if plain is not None:
                sent["authorization"] = f"Bearer {plain}"
            answers[name] = await client.request(method, url, headers=sent, **kwargs)
        return answers

    async def same(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request to every app; their answers must be identical. Returns the fast path's."""
        answers = await self.each(method, url, **kwargs)
        _assert_same(answers)
        return answers["fast"]

    async def alike(self, method: str, url: str, **kwargs: Any) -> dict[str, httpx.Response]:
        """As `same`, for requests where each app creates its own task: ids and times differ."""
        answers = await self.each(method, url, **kwargs)
        _assert_same(answers, volatile=("id", "created"))
        return answers


def _assert_same(answers: dict[str, httpx.Response], volatile: tuple[str, ...] = ()) -> None:
    first_name, first = next(iter(answers.items()))
    for name, answer in answers.items():
        where = f"{name} vs {first_name}: {answer.text[:300]} / {first.text[:300]}"
        assert answer.status_code == first.status_code, where
        for header in MATTERS:
            assert answer.headers.get(header) == first.headers.get(header), f"{header}: {where}"
        if volatile and answer.status_code == 200:
            mine, theirs = orjson.loads(answer.content), orjson.loads(first.content)
            assert is_task_id(mine["id"]) and is_task_id(theirs["id"])
            for name_ in volatile:
                mine.pop(name_), theirs.pop(name_)
            assert mine == theirs, where
        else:
            assert answer.content == first.content, where


def _settings(home: Path, **overrides: Any) -> Settings:
    return load_settings(home=home, **{**GENEROUS, **overrides})


def _no_reader(settings: Settings) -> Services:
    """Services as on PostgreSQL: no inline reader, so reads go through SQLAlchemy in the thread pool."""
    return Services(
        settings=settings,
        store=TaskStore(make_engine(settings.sqlalchemy_url)),
        storage=LocalStorage(settings.videos_dir),
        reader=None,
    )


@pytest.fixture
async def make_transports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Callable[..., Awaitable[Transports]]]:
    for name in list(os.environ):
        if name.startswith("REELQ_"):
            monkeypatch.delenv(name)
    made: list[Transports] = []

    async def factory(**overrides: Any) -> Transports:
        settings = _settings(tmp_path / f"home{len(made)}", **overrides)
        routed, fast, fallback = build_services(settings), build_services(settings), _no_reader(settings)
        apps = {
            "routed": create_app(settings, routed),
            "fast": create_asgi(settings, fast),
            "fallback": create_app(settings, fallback),
        }
        clients = {
            name: httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
            for name, app in apps.items()
        }
        transports = Transports(clients, routed.store, [routed, fast, fallback])
        made.append(transports)
        return transports

    yield factory
    for transports in made:
        for client in transports.clients.values():
            await client.aclose()
        for services in transports.services:
            services.close()


def _stop_the_buckets_clock(both: Transports) -> None:
    """Rate-limit buckets on a clock that stands still, so Retry-After is exact however slow the
    machine is between two requests (on the wall clock, a limited read 1 s late answers 999, not 1000)."""
    for services in both.services:
        services.tasks.limiter = MemoryRateLimiter(clock=lambda: 0.0)


@pytest.fixture
async def both(make_transports: Callable[..., Awaitable[Transports]]) -> Transports:
    return await make_transports()


def _png_data_uri(size: tuple[int, int], noise: bool = False) -> str:
    image = (
        Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3)) if noise else Image.new("RGB", size)
    )
    out = io.BytesIO()
    image.save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


# --- reads ----------------------------------------------------------------------------------------


async def test_reads_of_every_state_answer_the_same(both: Transports) -> None:
    key = both.key()
    store = both.store
    queued = both.task(key)
    processing = both.task(key)
    assert store.claim_next("w1", 30, processing) is not None
    assert store.renew(processing, "w1", 30, 40)
    handed_back = both.task(key)  # claimed once, back in the queue: still reads `processing`
    assert store.claim_next("w1", 30, handed_back) is not None
    assert store.release(handed_back, "w1")
    completed = both.task(key)
    assert store.claim_next("w1", 30, completed) is not None
    assert store.complete(completed, "w1", f"{completed}.mp4", 1.0, 112)
    failed = both.task(key)
    assert store.claim_next("w1", 30, failed) is not None
    assert store.fail(failed, "engine exploded", "w1")

    expected = {
        queued: (Status.QUEUED, 0),
        processing: (Status.PROCESSING, 40),
        handed_back: (Status.PROCESSING, 0),
        completed: (Status.COMPLETED, 100),
        failed: (Status.FAILED, 0),
    }
    for _ in range(2):  # the second read is served from each process's caches
        for task_id, (status, progress) in expected.items():
            answer = await both.same("GET", f"/v1/result/{task_id}", key=key)
            assert answer.status_code == 200
            body = answer.json()
            assert (body["id"], body["status"], body["progress"]) == (task_id, status, progress)
    done = (await both.same("GET", f"/v1/result/{completed}", key=key)).json()
    assert done["video_url"].startswith(f"http://testserver/v1/files/{completed}.mp4?expires=")
    assert (done["actualDuration"], done["totalTokens"]) == (1, 112)
    assert (await both.same("GET", f"/v1/result/{failed}", key=key)).json()["error"] == "engine exploded"
    # A Host header names where the video link points, on every transport alike.
    other_host = await both.same("GET", f"/v1/result/{completed}", key=key, headers={"host": "cdn.test:8080"})
    assert other_host.json()["video_url"].startswith("http://cdn.test:8080/v1/files/")


@pytest.mark.parametrize(
    "path",
    [
        "/v1/result/video_00000000-0000-4000-8000-000000000000",  # well formed, no such task
        "/v1/result/abc",
        "/v1/result/video_not-a-uuid",
        "/v1/result/VIDEO_00000000-0000-4000-8000-000000000000",
        "/v1/result/video_00000000-0000-4000-8000-00000000000G",
        "/v1/result/" + "x" * 3000,
        "/v1/result/%E2%82%AC",
        "/v1/result/%20",
        "/v1/result/",  # no id: no route matches
        "/v1/result/a/b",
        "/v1/result/a%2Fb",
        "/v1/result",
    ],
)
async def test_unknown_and_malformed_ids_answer_the_same(both: Transports, path: str) -> None:
    answer = await both.same("GET", path, key=both.key())
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] in ("task_not_found", "not_found")


async def test_another_keys_task_is_not_found_alike(both: Transports) -> None:
    mine, theirs = both.key("mine"), both.key("theirs")
    task_id = both.task(theirs)
    answer = await both.same("GET", f"/v1/result/{task_id}", key=mine)
    assert answer.status_code == 404
    assert answer.json()["error"] == {
        "code": "task_not_found",
        "message": f"No task with id '{task_id}'.",
        "param": "id",
    }
    assert (await both.same("GET", f"/v1/result/{task_id}", key=theirs)).status_code == 200


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Bearer a b", "Bearer rq_unknown", "Token x"],
)
async def test_missing_and_bad_keys_answer_the_same(both: Transports, authorization: str | None) -> None:
    task_id = both.task(both.key())
    headers = {} if authorization is None else {"authorization": authorization}
    for method, path, body in (("GET", f"/v1/result/{task_id}", None), ("POST", "/v1/vidu/videos", GOOD)):
        answer = await both.same(method, path, headers=headers, json=body)
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"] == "Bearer"
        assert answer.json()["error"]["code"] == "invalid_api_key"


async def test_a_revoked_key_is_refused_alike_at_once(both: Transports) -> None:
    key = both.key()
    task_id = both.task(key)
    assert (await both.same("GET", f"/v1/result/{task_id}", key=key)).status_code == 200  # now cached
    assert both.store.revoke_key(key) is not None
    for method, path, body in (("GET", f"/v1/result/{task_id}", None), ("POST", "/v1/vidu/videos", GOOD)):
        answer = await both.same(method, path, key=key, json=body)
        assert answer.status_code == 401
        assert answer.json()["error"]["message"] == "Invalid or revoked API key."


async def test_lower_case_bearer_scheme_is_accepted_alike(both: Transports) -> None:
    key = both.key()
    task_id = both.task(key)
    answer = await both.same("GET", f"/v1/result/{task_id}", headers={"authorization": f"bearer {key}"})
    assert answer.status_code == 200


async def test_rate_limited_reads_answer_the_same(
    make_transports: Callable[..., Awaitable[Transports]],
) -> None:
    both = await make_transports(poll_rate=0.001, poll_burst=1)
    _stop_the_buckets_clock(both)
    key = both.key()
    task_id, other = both.task(key), both.task(key)
    assert (await both.same("GET", f"/v1/result/{task_id}", key=key)).status_code == 200
    limited = await both.same("GET", f"/v1/result/{task_id}", key=key)
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "1000"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    # The bucket is per key and task: another task of the same key still reads.
    assert (await both.same("GET", f"/v1/result/{other}", key=key)).status_code == 200
    # Refused before the lookup: an unknown id is limited the same way once its bucket is empty.
    unknown = "/v1/result/video_00000000-0000-4000-8000-000000000000"
    assert (await both.same("GET", unknown, key=key)).status_code == 404
    assert (await both.same("GET", unknown, key=key)).status_code == 429


async def test_long_polls_answer_the_same(both: Transports) -> None:
    key = both.key()
    queued = both.task(key)
    done = both.task(key)
    assert both.store.claim_next("w1", 30, done) is not None
    assert both.store.complete(done, "w1", f"{done}.mp4", 1.0, 112)
    waited = await both.same("GET", f"/v1/result/{queued}?wait=0.2", key=key)
    assert waited.json()["status"] == "queued"
    assert (await both.same("GET", f"/v1/result/{done}?wait=30", key=key)).json()["status"] == "completed"
    for bad in ("abc", "-1", "61", "nan"):
        answer = await both.same("GET", f"/v1/result/{queued}?wait={bad}", key=key)
        assert (answer.status_code, answer.json()["error"]["param"]) == (400, "wait")


async def test_root_path_spellings_answer_the_same(
    make_transports: Callable[..., Awaitable[Transports]],
) -> None:
    both = await make_transports(root_path="/gateway")
    key = both.key()
    task_id = both.task(key)
    assert both.store.claim_next("w1", 30, task_id) is not None
    assert both.store.complete(task_id, "w1", f"{task_id}.mp4", 1.0, 112)
    prefixed = await both.same("GET", f"/gateway/v1/result/{task_id}", key=key)
    assert prefixed.json()["video_url"].startswith("http://testserver/gateway/v1/files/")
    bare = await both.same("GET", f"/v1/result/{task_id}", key=key)
    assert bare.json()["video_url"].startswith("http://testserver/v1/files/")
    created = await both.alike("POST", "/gateway/v1/vidu/videos", key=key, json=GOOD)
    assert all(a.status_code == 200 for a in created.values())
    for path in (f"/gatewayx/v1/result/{task_id}", "/gateway/v1/result/"):
        assert (await both.same("GET", path, key=key)).status_code == 404
    # The root path alone is the web page's address without its slash (api/web.py): sent there.
    page = await both.same("GET", "/gateway", key=key)
    assert page.status_code == 307 and page.headers["location"].endswith("/gateway/")
    assert (await both.same("GET", "/gateway/", key=key)).headers["content-type"].startswith("text/html")


async def test_public_base_url_wins_alike(make_transports: Callable[..., Awaitable[Transports]]) -> None:
    both = await make_transports(public_base_url="https://videos.example.com/base/")
    key = both.key()
    task_id = both.task(key)
    assert both.store.claim_next("w1", 30, task_id) is not None
    assert both.store.complete(task_id, "w1", f"{task_id}.mp4", 1.0, 112)
    answer = await both.same("GET", f"/v1/result/{task_id}", key=key, headers={"host": "elsewhere"})
    assert answer.json()["video_url"].startswith(f"https://videos.example.com/base/v1/files/{task_id}.mp4?")


# --- creates --------------------------------------------------------------------------------------


async def test_good_creates_answer_alike(both: Transports) -> None:
    key = both.key()
    small = _png_data_uri((64, 36))
    large = _png_data_uri((200, 200), noise=True)  # > 64 KB: validated in the thread pool
    assert len(large) > 64 * 1024
    bodies = [
        GOOD,
        {**GOOD, "aspect_ratio": "9:16", "seed": 7, "callback_url": "https://hooks.example.com/x"},
        {**GOOD, "duration": None, "seed": None, "first_image": None, "callback_url": None},
        {**GOOD, "first_image": small, "last_image": small},
        {**GOOD, "first_image": large},
        {**GOOD, "unknown_field": "ignored"},
    ]
    for body in bodies:
        answers = await both.alike("POST", "/v1/vidu/videos", key=key, json=body)
        for answer in answers.values():
            assert answer.status_code == 200, answer.text
            task = answer.json()
            assert (task["status"], task["model"], task["video_url"], task["progress"]) == (
                "queued",
                "viduq3-turbo",
                None,
                0,
            )
            # Each app stored its task: it reads back through every transport.
            assert (await both.same("GET", f"/v1/result/{task['id']}", key=key)).json() == task
    for content_type in ("application/json; charset=utf-8", "application/vnd.reelq+json", None):
        headers = {} if content_type is None else {"content-type": content_type}
        answers = await both.alike(
            "POST", "/v1/vidu/videos", key=key, content=orjson.dumps(GOOD), headers=headers
        )
        assert all(a.status_code == 200 for a in answers.values())


INVALID_FIELDS: list[tuple[dict[str, Any], str]] = [
    ({k: v for k, v in GOOD.items() if k != "model"}, "model"),
    ({**GOOD, "model": ""}, "model"),
    ({**GOOD, "model": 5}, "model"),
    ({**GOOD, "model": "nope"}, "model"),
    ({k: v for k, v in GOOD.items() if k != "prompt"}, "prompt"),
    ({**GOOD, "prompt": ""}, "prompt"),
    ({**GOOD, "prompt": "   "}, "prompt"),
    ({**GOOD, "prompt": "a\x00b"}, "prompt"),
    ({**GOOD, "prompt": "x" * 5001}, "prompt"),
    ({**GOOD, "prompt": 5}, "prompt"),
    ({**GOOD, "prompt": None}, "prompt"),
    ({**GOOD, "duration": "5"}, "duration"),
    ({**GOOD, "duration": 0}, "duration"),
    ({**GOOD, "duration": 17}, "duration"),
    ({**GOOD, "duration": True}, "duration"),
    ({**GOOD, "duration": 1.5}, "duration"),
    ({**GOOD, "aspect_ratio": "2:1"}, "aspect_ratio"),
    ({**GOOD, "resolution": "4k"}, "resolution"),
    ({**GOOD, "first_image": "ftp://example.com/a.png"}, "first_image"),
    ({**GOOD, "first_image": "data:image/gif;base64,R0lGODlhAQABAAAAACw="}, "first_image"),
    ({**GOOD, "first_image": "data:image/png;base64,!!!!"}, "first_image"),
    ({**GOOD, "first_image": "data:image/png;base64,aGVsbG8="}, "first_image"),
    ({**GOOD, "first_image": 5}, "first_image"),
    ({**GOOD, "last_image": "https://example.com/a.png"}, "last_image"),
    ({**GOOD, "seed": -1}, "seed"),
    ({**GOOD, "seed": 2**31}, "seed"),
    ({**GOOD, "seed": "1"}, "seed"),
    ({**GOOD, "seed": True}, "seed"),
    ({**GOOD, "callback_url": "ftp://example.com/hook"}, "callback_url"),
    ({**GOOD, "callback_url": "http://a b.example/hook"}, "callback_url"),
    ({**GOOD, "callback_url": "https://example.com/" + "a" * 2100}, "callback_url"),
    # Private receivers written as addresses (any spelling) or localhost names: refused at create.
    ({**GOOD, "callback_url": "http://127.0.0.1:8080/hook"}, "callback_url"),
    ({**GOOD, "callback_url": "http://2130706433/hook"}, "callback_url"),
    ({**GOOD, "callback_url": "http://169.254.169.254/latest/meta-data"}, "callback_url"),
    ({**GOOD, "callback_url": "http://[::1]/hook"}, "callback_url"),
    ({**GOOD, "callback_url": "https://10.1.2.3/hook"}, "callback_url"),
    ({**GOOD, "callback_url": "http://LOCALHOST./hook"}, "callback_url"),
    ({**GOOD, "callback_url": "http://api.localhost/hook"}, "callback_url"),
]


@pytest.mark.parametrize(
    ("body", "param"), INVALID_FIELDS, ids=[f"{p}-{i}" for i, (_, p) in enumerate(INVALID_FIELDS)]
)
async def test_every_invalid_field_answers_the_same(
    both: Transports, body: dict[str, Any], param: str
) -> None:
    answer = await both.same("POST", "/v1/vidu/videos", key=both.key(), json=body)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == param


@pytest.mark.parametrize(
    ("content", "content_type", "code"),
    [
        (b"{not json", "application/json", "invalid_json"),
        (b"", "application/json", "invalid_json"),
        (b"   ", "application/json", "invalid_json"),
        (b"[1, 2]", "application/json", "invalid_json"),
        (b"null", "application/json", "invalid_json"),
        (b'"text"', "application/json", "invalid_json"),
        (b"\xff\xfe", "application/json", "invalid_json"),
        (orjson.dumps(GOOD), "text/plain", "invalid_content_type"),
        (orjson.dumps(GOOD), "application/x-www-form-urlencoded", "invalid_content_type"),
        (orjson.dumps(GOOD), ";", "invalid_content_type"),
    ],
)
async def test_bad_bodies_answer_the_same(
    both: Transports, content: bytes, content_type: str, code: str
) -> None:
    headers = {"content-type": content_type}
    answer = await both.same("POST", "/v1/vidu/videos", key=both.key(), content=content, headers=headers)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == code


async def test_oversized_bodies_are_refused_alike(both: Transports) -> None:
    key = both.key()
    declared = {"content-length": str(50 * MB + 1), "content-type": "application/json"}
    # Declared too large: refused before authentication, before a byte of the body is read.
    for sent_key in (key, None):
        answer = await both.same("POST", "/v1/vidu/videos", key=sent_key, content=b"{}", headers=declared)
        assert answer.status_code == 413
        assert answer.json()["error"]["code"] == "payload_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(51):
            yield b" " * MB

    for name, client in both.clients.items():
        answer = await client.post(
            "/v1/vidu/videos", content=chunks(), headers={"authorization": f"Bearer {key}"}
        )
        assert answer.status_code == 413, name
        assert (
            answer.content == (await both.same("POST", "/v1/vidu/videos", key=key, headers=declared)).content
        )


async def test_idempotent_replay_and_conflict_answer_the_same(both: Transports) -> None:
    key = both.key()
    first = await both.clients["routed"].post(
        "/v1/vidu/videos", json=GOOD, headers={"authorization": f"Bearer {key}", "idempotency-key": "order-1"}
    )
    assert first.status_code == 200
    replay = await both.same(
        "POST", "/v1/vidu/videos", key=key, json=GOOD, headers={"idempotency-key": "order-1"}
    )
    assert replay.json() == first.json()
    # "The same body" is the validated request: key order, spacing and defaults spelled out match.
    spelled = {"resolution": "540p", "duration": 1, "prompt": "a lighthouse at dusk", "model": "viduq3-turbo",
               "aspect_ratio": "16:9", "seed": None}  # fmt: skip
    again = await both.same(
        "POST", "/v1/vidu/videos", key=key, json=spelled, headers={"idempotency-key": "order-1"}
    )
    assert again.json()["id"] == first.json()["id"]
    conflict = await both.same(
        "POST",
        "/v1/vidu/videos",
        key=key,
        json={**GOOD, "prompt": "other"},
        headers={"idempotency-key": "order-1"},
    )
    assert conflict.status_code == 409
    assert conflict.json()["error"] == {
        "code": "idempotency_key_reused",
        "message": "This Idempotency-Key was already used with a different request body.",
        "param": "Idempotency-Key",
    }
    # The same Idempotency-Key under another key is another request.
    others = await both.alike("POST", "/v1/vidu/videos", key=lambda _: both.key("other"), json=GOOD,
                              headers={"idempotency-key": "order-1"})  # fmt: skip
    assert len({a.json()["id"] for a in others.values()} | {first.json()["id"]}) == 4


@pytest.mark.parametrize("value", ["", "x" * 201, b"caf\xe9", "tab\there"])
async def test_bad_idempotency_keys_answer_the_same(both: Transports, value: str | bytes) -> None:
    answer = await both.same(
        "POST", "/v1/vidu/videos", key=both.key(), json=GOOD, headers={"idempotency-key": value}
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_idempotency_key"


async def test_create_rate_limit_answers_alike(make_transports: Callable[..., Awaitable[Transports]]) -> None:
    both = await make_transports(create_rate=1.0)
    _stop_the_buckets_clock(both)
    key = both.key()
    assert all(
        a.status_code == 200
        for a in (await both.alike("POST", "/v1/vidu/videos", key=key, json=GOOD)).values()
    )
    limited = await both.same("POST", "/v1/vidu/videos", key=key, json=GOOD)
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "60"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    # Limited before the body is looked at: a broken body gets the same 429.
    assert (await both.same("POST", "/v1/vidu/videos", key=key, content=b"{")).status_code == 429


async def test_active_task_quota_answers_the_same(
    make_transports: Callable[..., Awaitable[Transports]],
) -> None:
    both = await make_transports(max_active_per_key=2)
    key = both.key()
    both.task(key), both.task(key)
    refused = await both.same("POST", "/v1/vidu/videos", key=key, json=GOOD)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "5"
    assert refused.json()["error"]["code"] == "too_many_active_tasks"


async def test_full_queue_answers_the_same(make_transports: Callable[..., Awaitable[Transports]]) -> None:
    both = await make_transports(max_queue=1)
    both.task(both.key("filler"))
    refused = await both.same("POST", "/v1/vidu/videos", key=both.key(), json=GOOD)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "10"
    assert refused.json()["error"]["code"] == "overloaded"


async def test_routes_the_fast_path_does_not_serve_still_answer(both: Transports) -> None:
    key = both.key()
    task_id = both.task(key)
    assert (await both.same("POST", "/v1/vidu/videos/", key=key, json=GOOD)).status_code in (307, 404)
    assert (await both.same("PUT", "/v1/vidu/videos", key=key, json=GOOD)).status_code == 405
    assert (await both.same("DELETE", f"/v1/result/{task_id}", key=key)).status_code == 405
    assert (await both.same("GET", "/healthz")).json() == {"status": "ok"}


# --- the service itself ---------------------------------------------------------------------------


def test_the_task_service_imports_no_http_framework() -> None:
    code = (
        "import sys, reelq.service\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette', 'uvicorn'))\n"
        "print(','.join(loaded))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


async def test_the_task_service_answers_without_any_http(tmp_path: Path) -> None:
    """What a new transport (a CLI, another API surface) gets: task views and typed errors."""
    settings = _settings(tmp_path / "home", poll_rate=0.001, poll_burst=2)
    settings.home_dir.mkdir(parents=True)
    engine = make_engine(settings.sqlalchemy_url)
    migrate(engine)
    store = TaskStore(engine)
    storage = LocalStorage(settings.videos_dir)
    assert settings.sqlite_path is not None
    rung: list[bool] = []
    tasks = TaskService(
        settings,
        store,
        storage,
        SqliteReader(settings.sqlite_path),
        MemoryRateLimiter(),
        threading.Event(),
        on_stored=lambda: rung.append(True),
    )
    try:
        _, plain = store.create_key("direct")
        key_id = tasks.authenticate_now(f"Bearer {plain}")
        assert await tasks.authenticate(f"Bearer {plain}") == key_id
        with pytest.raises(Unauthorized):
            tasks.authenticate_now("Bearer nope")
        view = await tasks.create(key_id, orjson.dumps(GOOD), "application/json", "once")
        assert isinstance(view, TaskView) and (view.status, view.key_id) == ("queued", key_id)
        # The workers were woken for the stored create (by the writer thread, just after it answered).
        for _ in range(200):
            if rung:
                break
            await asyncio.sleep(0.005)
        assert rung
        assert await tasks.create(key_id, orjson.dumps(GOOD), None, "once") == view  # replayed
        with pytest.raises(Conflict):
            await tasks.create(key_id, orjson.dumps({**GOOD, "seed": 1}), None, "once")
        assert tasks.read_now(key_id, view.id) == view
        assert (await tasks.read(key_id, view.id)).id == view.id
        with pytest.raises(RateLimited):
            tasks.read_now(key_id, view.id)  # the burst of 2 is spent
        with pytest.raises(NotFound):
            await tasks.read(key_id, "video_00000000-0000-4000-8000-000000000000")
        assert tasks.render(view, "https://x.test")["status"] == "queued"
        assert orjson.loads(tasks.answer(view, "https://x.test")) == tasks.render(view, "https://x.test")
        assert tasks.link_base("https", None, "/r", ("::1", 8443)) == "https://[::1]:8443/r"
        assert tasks.link_base("http", None, "", ("10.0.0.5", 80)) == "http://10.0.0.5"
        assert tasks.link_base("http", "api.test", "", ("10.0.0.5", 80)) == "http://api.test"
    finally:
        tasks.close()
        engine.dispose()


async def test_a_client_leaving_mid_body_is_no_server_error(
    both: Transports, caplog: pytest.LogCaptureFixture
) -> None:
    """The routed create (the path on PostgreSQL) reads the body through Starlette, which raises
    ClientDisconnect when the client leaves or the connection guard cuts a stalled body."""
    key = both.key()
    app = both.clients["fallback"]._transport.app  # type: ignore[attr-defined]
    sent: list[dict[str, Any]] = []
    part = {"type": "http.request", "body": b'{"mod', "more_body": True}
    messages = iter([part, {"type": "http.disconnect"}])

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/vidu/videos",
        "raw_path": b"/v1/vidu/videos",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json")],
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 5000),
    }
    with caplog.at_level(logging.INFO, logger="reelq"):
        await app(scope, receive, send)
    assert sent[0]["status"] == 400
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert both.store.count_by_status() == {}
