"""The SDK's own logic (retries, idempotency, polling, errors, downloads) against a stand-in of the wire.

The stand-in is a real HTTP server (Starlette on uvicorn, free port, own thread) that speaks SPEC §1/§4
and can be scripted: tasks advance one state per poll, and canned answers (429, 503, 401, garbage) go
first. Every scenario runs against both Client and AsyncClient. End-to-end runs of the SDK against the
real reelq server live with the e2e tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import threading
import time
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

import reelq.client
from reelq.client import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APITimeoutError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    ConflictError,
    GoneError,
    InternalServerError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ReelqError,
    ServiceUnavailableError,
    Task,
    WaitTimeout,
)
from reelq.client._errors import error_class
from reelq.client._retry import BACKOFF_CAP, MAX_RETRY_AFTER, backoff_delay, parse_retry_after
from tests.conftest import free_port

KEY = "rq_test_0123456789"
ROOT = "/kyyReactApiServer"
VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 64  # not a real MP4: only the bytes matter


# The stand-in server.


@dataclass
class Canned:
    """One scripted answer. `after`: handle the request normally first, then answer this instead (the
    server did the work but the answer was lost)."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    after: bool = False


@dataclass
class Seen:
    method: str
    path: str
    headers: httpx.Headers
    body: Any


def wire_task(task_id: str, status: str, **extra: Any) -> dict[str, Any]:
    """A task object exactly as SPEC §1 spells it."""
    body = {
        "id": task_id,
        "object": "Video",
        "created": 1_760_000_000,
        "model": "viduq3-turbo",
        "status": status,
        "video_url": None,
        "totalTokens": None,
        "error": None,
    }
    return {**body, **extra}


def envelope(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "param": param}}


class StandIn:
    """A scripted imitation of the reelq wire, served by uvicorn in a thread."""

    def __init__(self) -> None:
        self.base_url = ""
        self.reset()

    def reset(self) -> None:
        self.requests: list[Seen] = []
        self.canned: dict[str, deque[Canned]] = defaultdict(deque)  # route -> answers that go first
        self.scripts: dict[str, list[dict[str, Any]]] = {}  # task id -> states of successive polls
        self.polls: Counter[str] = Counter()
        self.keys: dict[str, tuple[Any, str]] = {}  # Idempotency-Key -> (body, task id)
        self.next_script: list[dict[str, Any]] | None = None

    def add_task(self, *states: dict[str, Any]) -> str:
        task_id = f"video_{uuid.uuid4()}"
        self.scripts[task_id] = [{**state, "id": task_id} for state in states]
        return task_id

    def video_url(self, name: str) -> str:
        return f"{self.base_url}/files/{name}?expires=1999999999&signature=c2lnbmVk"

    def rate_limit(self, route: str, retry_after: str, times: int = 1) -> None:
        """The next `times` requests to `route` answer 429 with this Retry-After."""
        limited = Canned(429, envelope("rate_limit_exceeded", "Slow down."), {"Retry-After": retry_after})
        self.canned[route].extend([limited] * times)

    def seen(self, route_path: str) -> list[Seen]:
        return [seen for seen in self.requests if seen.path.endswith(route_path)]

    def app(self) -> Starlette:
        routes = [
            Route("/v1/vidu/videos", self._create, methods=["POST"]),
            Route("/v1/result/{task_id:path}", self._result, methods=["GET"]),
            Route("/files/{name}", self._file, methods=["GET"]),
        ]
        return Starlette(routes=[*routes, Mount(ROOT, routes=routes)])

    async def _answer(self, request: Request, route: str, handle: Callable[[Any], Response]) -> Response:
        raw = await request.body()
        body = httpx.Response(200, content=raw).json() if raw else None
        path = request.scope["raw_path"].decode()  # as sent: percent-escapes kept
        self.requests.append(Seen(request.method, path, httpx.Headers(request.headers), body))
        canned = self.canned[route].popleft() if self.canned[route] else None
        if canned is not None:
            await asyncio.sleep(canned.delay)
            if canned.after:
                handle(body)
            content = canned.body if isinstance(canned.body, str | bytes) else None
            if content is not None:
                return Response(content, canned.status, headers=canned.headers, media_type="text/html")
            return JSONResponse(canned.body, canned.status, headers=canned.headers)
        if route != "file" and request.headers.get("authorization") != f"Bearer {KEY}":
            return JSONResponse(
                envelope("invalid_api_key", "Invalid or revoked API key."),
                401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return handle(body if route == "create" else request.path_params)

    async def _create(self, request: Request) -> Response:
        return await self._answer(request, "create", lambda body: self._do_create(request, body))

    def _do_create(self, request: Request, body: Any) -> Response:
        if not isinstance(body, dict) or not str(body.get("prompt", "")).strip():
            return JSONResponse(envelope("invalid_request", "prompt must not be empty.", "prompt"), 400)
        key = request.headers.get("idempotency-key")
        if key in self.keys:
            first_body, task_id = self.keys[key]
            if first_body != body:
                message = "This Idempotency-Key was used with a different body."
                return JSONResponse(envelope("idempotency_key_reused", message), 409)
            return JSONResponse(wire_task(task_id, "queued", model=body["model"]))
        task_id = self.add_task(*(self.next_script or [wire_task("", "queued")]))
        if key is not None:
            self.keys[key] = (body, task_id)
        return JSONResponse(wire_task(task_id, "queued", model=body["model"]))

    async def _result(self, request: Request) -> Response:
        return await self._answer(request, "result", self._do_result)

    def _do_result(self, params: dict[str, str]) -> Response:
        task_id = params["task_id"]
        if task_id not in self.scripts:
            return JSONResponse(envelope("task_not_found", f"No task with id '{task_id}'.", "id"), 404)
        script = self.scripts[task_id]
        state = script[min(self.polls[task_id], len(script) - 1)]
        self.polls[task_id] += 1
        return JSONResponse(state)

    async def _file(self, request: Request) -> Response:
        def serve(params: dict[str, str]) -> Response:
            if params["name"] == "expired.mp4":
                return JSONResponse(envelope("link_expired", "This video link has expired."), 410)
            return Response(VIDEO, 200, media_type="video/mp4")

        return await self._answer(request, "file", serve)


@pytest.fixture(scope="module")
def server() -> Iterator[StandIn]:
    stand_in = StandIn()
    port = free_port()
    config = uvicorn.Config(
        stand_in.app(), host="127.0.0.1", port=port, log_level="warning", lifespan="off", ws="none"
    )
    runner = uvicorn.Server(config)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not runner.started:
        assert thread.is_alive() and time.monotonic() < deadline, "stand-in server did not start"
        time.sleep(0.01)
    stand_in.base_url = f"http://127.0.0.1:{port}"
    yield stand_in
    runner.should_exit = True
    thread.join(10)


@pytest.fixture
def stand_in(server: StandIn) -> StandIn:
    server.reset()
    return server


# Running Client and AsyncClient through the same scenarios.


class SDK:
    """A Client or an AsyncClient behind one blocking face: coroutines run on one event loop (an
    httpx.AsyncClient's pool belongs to the loop that opened it). Sleeps are recorded, and shortened
    unless `fast` is false (then the client's own sleep runs, for the full time asked)."""

    def __init__(self, client: Client | AsyncClient, runner: asyncio.Runner | None, fast: bool) -> None:
        self.client = client
        self.runner = runner
        self.sleeps: list[float] = []
        self.real_sleep: Callable[[float], Any] | None = None if fast else client._sleep
        client._sleep = self._async_sleep if runner else self._sync_sleep  # type: ignore[method-assign]

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            return self.run(result) if inspect.isawaitable(result) else result

        return call

    def run(self, awaitable: Any) -> Any:
        assert self.runner is not None

        async def main() -> Any:
            return await awaitable

        return self.runner.run(main())

    def _sync_sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.real_sleep is not None:
            self.real_sleep(seconds)
        else:
            time.sleep(min(seconds, 0.01))

    async def _async_sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.real_sleep is not None:
            await self.real_sleep(seconds)
        else:
            await asyncio.sleep(min(seconds, 0.01))


@pytest.fixture(params=["sync", "async"])
def make_sdk(request: pytest.FixtureRequest, stand_in: StandIn) -> Iterator[Callable[..., SDK]]:
    """Factory: make_sdk(base_url=stand-in, api_key=KEY, fast_sleep=True, http_headers=None, **client)."""
    runner = asyncio.Runner() if request.param == "async" else None
    made: list[SDK] = []
    owned: list[httpx.Client | httpx.AsyncClient] = []

    def factory(
        base_url: str | None = None,
        api_key: str = KEY,
        fast_sleep: bool = True,
        http_headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> SDK:
        if http_headers is not None:
            http = httpx.AsyncClient(headers=http_headers) if runner else httpx.Client(headers=http_headers)
            owned.append(http)
            kwargs["http_client"] = http
        cls = AsyncClient if runner else Client
        sdk = SDK(cls(base_url or stand_in.base_url, api_key, **kwargs), runner, fast_sleep)
        made.append(sdk)
        return sdk

    yield factory
    for sdk in made:
        sdk.close()
    for http in owned:
        if isinstance(http, httpx.AsyncClient):
            assert runner is not None
            runner.run(http.aclose())
        else:
            http.close()
    if runner is not None:
        runner.close()


# The public surface.


def test_all_is_pinned() -> None:
    assert reelq.client.__all__ == [
        "APIConnectionError",
        "APIError",
        "APIResponseValidationError",
        "APITimeoutError",
        "AsyncClient",
        "AuthenticationError",
        "BadRequestError",
        "Client",
        "ConflictError",
        "Delivery",
        "GoneError",
        "InternalServerError",
        "NotFoundError",
        "PayloadTooLargeError",
        "PermissionDeniedError",
        "RateLimitError",
        "ReelqError",
        "ServiceUnavailableError",
        "Task",
        "TaskList",
        "WaitTimeout",
        "WebhookVerificationError",
        "verify_webhook",
    ]
    for name in reelq.client.__all__:
        assert getattr(reelq.client, name).__module__ == "reelq.client"


def test_exception_hierarchy() -> None:
    for cls in (BadRequestError, AuthenticationError, NotFoundError, ConflictError, RateLimitError):
        assert issubclass(cls, APIError)
    assert issubclass(ServiceUnavailableError, InternalServerError)
    assert issubclass(APITimeoutError, APIConnectionError)
    for cls in (APIError, APIConnectionError, WaitTimeout):
        assert issubclass(cls, ReelqError)
    expected = {
        400: BadRequestError, 401: AuthenticationError, 403: PermissionDeniedError, 404: NotFoundError,
        409: ConflictError, 410: GoneError, 413: PayloadTooLargeError, 429: RateLimitError,
        500: InternalServerError, 502: InternalServerError, 503: ServiceUnavailableError, 418: APIError,
    }  # fmt: skip
    for status, cls in expected.items():
        assert error_class(status) is cls, status


def test_configuration_from_environment(monkeypatch: pytest.MonkeyPatch, stand_in: StandIn) -> None:
    monkeypatch.setenv("REELQ_BASE_URL", stand_in.base_url + "/")
    monkeypatch.setenv("REELQ_API_KEY", KEY)
    with Client() as client:
        assert client.base_url == stand_in.base_url
        assert KEY not in repr(client)
        task_id = stand_in.add_task(wire_task("", "processing"))
        assert client.get(task_id).status == "processing"
    monkeypatch.delenv("REELQ_API_KEY")
    with pytest.raises(ReelqError, match="REELQ_API_KEY"):
        Client()
    monkeypatch.delenv("REELQ_BASE_URL")
    with pytest.raises(ReelqError, match="REELQ_BASE_URL"):
        AsyncClient(api_key=KEY)
    for bad in ("ftp://host", "not a url", "http://"):
        with pytest.raises(ReelqError, match="Invalid base URL"):
            Client(bad, KEY)


# Creating.


def test_create_sends_the_body_without_nones_the_key_and_an_idempotency_key(
    make_sdk: Callable[..., SDK], stand_in: StandIn
) -> None:
    sdk = make_sdk()
    task = sdk.create(prompt="a red fox", duration=5, seed=7, first_image=None, style="noir")
    assert isinstance(task, Task)
    assert task.status == "queued" and task.id.startswith("video_") and not task.done
    sdk.create(prompt="a red fox", duration=5, seed=7)
    sdk.create(prompt="a red fox", idempotency_key="mine-1")
    first, second, third = stand_in.seen("/v1/vidu/videos")
    assert first.method == "POST"
    assert first.headers["authorization"] == f"Bearer {KEY}"
    assert first.body == {
        "model": "viduq3-turbo",
        "prompt": "a red fox",
        "duration": 5,
        "seed": 7,
        "style": "noir",
    }
    # One fresh key per call, not one per client: otherwise the second create would be refused (409).
    assert first.headers["idempotency-key"] != second.headers["idempotency-key"]
    assert third.headers["idempotency-key"] == "mine-1"
    assert len(stand_in.scripts) == 3


def test_a_retried_create_reuses_its_idempotency_key_and_makes_one_task(
    make_sdk: Callable[..., SDK], stand_in: StandIn
) -> None:
    sdk = make_sdk()
    # The first attempt creates the task but its answer is lost (500); then the server is overloaded.
    stand_in.canned["create"].extend([
        Canned(500, envelope("internal_error", "Something broke."), after=True),
        Canned(503, envelope("overloaded", "Queue full."), {"Retry-After": "2"}),
        Canned(429, envelope("rate_limit_exceeded", "Slow down."), {"retry-after-ms": "20"}),
    ])  # fmt: skip
    task = sdk.create(prompt="a red fox")
    posts = stand_in.seen("/v1/vidu/videos")
    assert len(posts) == 4
    assert len({post.headers["idempotency-key"] for post in posts}) == 1
    assert list(stand_in.scripts) == [task.id]  # the server's idempotency gave back the first task
    backoff, retry_after, retry_after_ms = sdk.sleeps
    assert 0.375 <= backoff <= 0.5  # 0.5 s base, up to 25 % jitter off
    assert (retry_after, retry_after_ms) == (2.0, 0.02)


def test_conflict_is_not_retried(make_sdk: Callable[..., SDK], stand_in: StandIn) -> None:
    sdk = make_sdk()
    sdk.create(prompt="one", idempotency_key="same")
    with pytest.raises(ConflictError) as caught:
        sdk.create(prompt="two", idempotency_key="same")
    assert caught.value.status_code == 409 and caught.value.code == "idempotency_key_reused"
    assert len(stand_in.seen("/v1/vidu/videos")) == 2 and sdk.sleeps == []


def test_retries_stop_after_max_retries(make_sdk: Callable[..., SDK], stand_in: StandIn) -> None:
    sdk = make_sdk(max_retries=2)
    task_id = stand_in.add_task(wire_task("", "queued"))
    stand_in.canned["result"].extend(Canned(503, envelope("overloaded", "Busy.")) for _ in range(3))
    with pytest.raises(ServiceUnavailableError) as caught:
        sdk.get(task_id)
    assert len(stand_in.seen(task_id)) == 3
    assert len(sdk.sleeps) == 2 and sdk.sleeps[1] > sdk.sleeps[0]  # exponential
    assert str(caught.value) == "503 overloaded: Busy."


def test_real_sleeps_honour_retry_after(make_sdk: Callable[..., SDK], stand_in: StandIn) -> None:
    sdk = make_sdk(fast_sleep=False)
    task_id = stand_in.add_task(wire_task("", "processing"))
    stand_in.rate_limit("result", retry_after="0.3")
    started = time.monotonic()
    assert sdk.get(task_id).status == "processing"
    # The client's real sleep was asked for exactly the Retry-After (recorded, not timed), and it
    # really slept (a lower bound: a slow machine only lengthens it).
    assert sdk.sleeps == [0.3]
    assert time.monotonic() - started >= 0.3


def test_connection_errors_are_retried_then_raised(make_sdk: Callable[..., SDK]) -> None:
    sdk = make_sdk(base_url=f"http://127.0.0.1:{free_port()}", max_retries=2)  # nothing listens there
    with pytest.raises(APIConnectionError) as caught:
        sdk.get("video_x")
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert len(sdk.sleeps) == 2
    assert KEY not in str(caught.value)


def test_a_slow_answer_is_a_timeout(make_sdk: Callable[..., SDK], stand_in: StandIn) -> None:
    sdk = make_sdk(timeout=0.1, max_retries=0)
    stand_in.canned["result"].append(Canned(200, wire_task("video_x", "queued"), delay=0.5))
    with pytest.raises(APITimeoutError):
        sdk.get("video_x")


# Errors.


def test_errors_carry_the_envelope(make_sdk: Callable[..., SDK], stand_in: StandIn) -> None:
    with pytest.raises(AuthenticationError) as auth:
        make_sdk(api_key="rq_revoked").get("video_x")
    assert (auth.value.status_code, auth.value.code, auth.value.param) == (401, "invalid_api_key", None)
    assert auth.value.message == "Invalid or revoked API key."
    assert str(auth.value) == "401 invalid_api_key: Invalid or revoked API key."
    assert auth.value.headers["www-authenticate"] == "Bearer"

    sdk = make_sdk()
    with pytest.raises(NotFoundError) as missing:
        sdk.get("video_does-not-exist")
    assert (missing.value.code, missing.value.param) == ("task_not_found", "id")

    with pytest.raises(BadRequestError) as bad:
        sdk.create(prompt="   ")
    assert bad.value.param == "prompt"
    assert str(bad.value) == "400 invalid_request: prompt must not be empty. (param: prompt)"
    assert sdk.sleeps == []  # none of these is worth a retry


def test_bodies_that_are_not_the_envelope(make_sdk: Callable[..., SDK], stand_in: StandIn) -> None:
    sdk = make_sdk(max_retries=0)
    stand_in.canned["result"].extend([
        Canned(502, "<html>Bad gateway</html>"),
        Canned(413, {"detail": "Too big."}),
        Canned(200, {"nope": True}),
    ])  # fmt: skip
    with pytest.raises(InternalServerError) as proxy:
        sdk.get("video_x")
    assert (proxy.value.status_code, proxy.value.code) == (502, None)
    assert str(proxy.value) == "502: <html>Bad gateway</html>"
    with pytest.raises(PayloadTooLargeError, match="413: Too big"):
        sdk.get("video_x")
    with pytest.raises(APIResponseValidationError, match="not a task object"):
        sdk.get("video_x")


def test_bad_task_ids_are_refused_before_sending(make_sdk: Callable[..., SDK], stand_in: StandIn) -> None:
    sdk = make_sdk()
    for bad in ("", "..", " "):
        with pytest.raises(ValueError):
            sdk.get(bad)
    with pytest.raises(NotFoundError):
        sdk.get("../files/a.mp4")  # quoted into one path segment
    assert [seen.path for seen in stand_in.requests] == ["/v1/result/..%2Ffiles%2Fa.mp4"]


# Waiting.


def test_wait_follows_a_task_to_completed(make_sdk: Callable[..., SDK], stand_in: StandIn) -> None:
    sdk = make_sdk()
    url = stand_in.video_url("fox.mp4")
    task_id = stand_in.add_task(
        wire_task("", "queued", progress=0),
        wire_task("", "processing", progress=30),
        wire_task("", "processing", progress=70),
        wire_task("", "completed", progress=100, video_url=url, actualDuration=5, totalTokens=750),
    )
    updates: list[Task] = []
    task = sdk.wait(task_id, poll_interval=0.1, max_interval=0.2, on_update=updates.append)
    assert task.ok and task.done
    assert (task.video_url, task.actual_duration, task.total_tokens, task.error) == (url, 5, 750, None)
    assert [(t.status, t.progress) for t in updates] == [
        ("queued", 0), ("processing", 30), ("processing", 70), ("completed", 100),
    ]  # fmt: skip
    assert stand_in.polls[task_id] == 4
    assert sdk.sleeps == pytest.approx([0.1, 0.15, 0.2])  # grows, then capped at max_interval


def test_wait_returns_a_failed_task(make_sdk: Callable[..., SDK], stand_in: StandIn) -> None:
    sdk = make_sdk()
    reason = "Content policy violation: the prompt contains a blocked term."
    task_id = stand_in.add_task(wire_task("", "processing"), wire_task("", "failed", error=reason))
    task = sdk.wait(task_id, poll_interval=0.01)
    assert task.done and not task.ok
    assert (task.status, task.error, task.video_url) == ("failed", reason, None)
    with pytest.raises(ReelqError, match="no video_url"):
        sdk.download(task, "never.mp4")


def test_wait_times_out(make_sdk: Callable[..., SDK], stand_in: StandIn) -> None:
    sdk = make_sdk(fast_sleep=False)
    task_id = stand_in.add_task(wire_task("", "processing", progress=12))
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as caught:
        sdk.wait(task_id, timeout=0.3, poll_interval=0.05, max_interval=0.1)
    assert time.monotonic() - started >= 0.3  # waited its timeout out (a slow machine only lengthens it)
    # ...and no longer: every real sleep was capped by max_interval and by the time left, so together
    # they never passed the deadline (read from what was asked of the sleep, not from a clock race).
    assert sdk.sleeps and all(0 < s <= 0.1 for s in sdk.sleeps), sdk.sleeps
    assert sum(sdk.sleeps) <= 0.3 + 1e-6, sdk.sleeps
    assert caught.value.task.status == "processing" and caught.value.task.progress == 12
    assert task_id in str(caught.value) and "processing" in str(caught.value)


def test_wait_rides_out_rate_limits_without_counting_them(
    make_sdk: Callable[..., SDK], stand_in: StandIn
) -> None:
    sdk = make_sdk(max_retries=1)
    task_id = stand_in.add_task(wire_task("", "completed", video_url=stand_in.video_url("a.mp4")))
    stand_in.rate_limit("result", retry_after="1", times=4)
    assert sdk.wait(task_id, poll_interval=0.01).ok
    assert sdk.sleeps == [1.0] * 4


def test_wait_gives_up_on_repeated_server_errors(make_sdk: Callable[..., SDK], stand_in: StandIn) -> None:
    sdk = make_sdk(max_retries=1)
    task_id = stand_in.add_task(wire_task("", "completed"))
    stand_in.canned["result"].extend(Canned(503, envelope("overloaded", "Busy.")) for _ in range(2))
    with pytest.raises(ServiceUnavailableError):
        sdk.wait(task_id, poll_interval=0.01)
    with pytest.raises(NotFoundError):  # not transient: raised at once
        sdk.wait("video_unknown", poll_interval=0.01)
    assert len(sdk.sleeps) == 1
    offline = make_sdk(base_url=f"http://127.0.0.1:{free_port()}", max_retries=2)
    with pytest.raises(APIConnectionError):
        offline.wait(task_id, poll_interval=0.01)
    assert len(offline.sleeps) == 2


def test_wait_deadline_covers_retry_after(make_sdk: Callable[..., SDK], stand_in: StandIn) -> None:
    sdk = make_sdk(fast_sleep=False)
    task_id = stand_in.add_task(wire_task("", "processing"))
    stand_in.rate_limit("result", retry_after="30")
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as caught:
        sdk.wait(task_id, timeout=0.3, poll_interval=0.05)
    # Slept to the deadline, not the 30 s asked, then looked once more: one real sleep, cut to the
    # time left (what the sleep was asked for, not a clock race); the lower bound is safe.
    assert time.monotonic() - started >= 0.3
    assert len(sdk.sleeps) == 1 and 0 < sdk.sleeps[0] <= 0.3, sdk.sleeps
    assert caught.value.task.status == "processing"
    assert len(stand_in.seen(task_id)) == 2


def test_create_and_wait(make_sdk: Callable[..., SDK], stand_in: StandIn) -> None:
    sdk = make_sdk()
    stand_in.next_script = [wire_task("", "processing"), wire_task("", "completed", actualDuration=4)]
    updates: list[str] = []
    task = sdk.create_and_wait(
        prompt="a fox", duration=4, poll_interval=0.01, on_update=lambda t: updates.append(t.status)
    )
    assert task.ok and task.actual_duration == 4
    assert updates == ["processing", "completed"]
    assert stand_in.seen("/v1/vidu/videos")[0].body == {
        "model": "viduq3-turbo",
        "prompt": "a fox",
        "duration": 4,
    }


def test_async_wait_awaits_a_coroutine_callback(stand_in: StandIn) -> None:
    task_id = stand_in.add_task(wire_task("", "processing"), wire_task("", "completed"))
    seen: list[str] = []

    async def on_update(task: Task) -> None:
        await asyncio.sleep(0)
        seen.append(task.status)

    async def main() -> Task:
        async with AsyncClient(stand_in.base_url, KEY) as client:
            return await client.wait(task_id, poll_interval=0.01, on_update=on_update)

    assert asyncio.run(main()).ok
    assert seen == ["processing", "completed"]


# Downloading.


def test_download_writes_the_file_without_sending_the_key(
    make_sdk: Callable[..., SDK], stand_in: StandIn, tmp_path: Path
) -> None:
    # Default headers of a caller's own httpx client must not reach the file host either.
    sdk = make_sdk(http_headers={"Authorization": f"Bearer {KEY}"})
    task = Task.from_dict(wire_task("video_1", "completed", video_url=stand_in.video_url("fox.mp4")))
    target = tmp_path / "new" / "fox.mp4"
    assert sdk.download(task, target) == target
    assert target.read_bytes() == VIDEO
    assert sdk.download(stand_in.video_url("fox.mp4"), str(tmp_path / "by-url.mp4")).read_bytes() == VIDEO
    for seen in stand_in.seen("fox.mp4"):
        assert "authorization" not in seen.headers
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["by-url.mp4", "fox.mp4", "new"]  # no temp left
    sdk.close()
    assert not sdk.client._http.is_closed  # a caller's httpx client is the caller's to close


def test_download_of_an_expired_link_leaves_nothing(
    make_sdk: Callable[..., SDK], stand_in: StandIn, tmp_path: Path
) -> None:
    sdk = make_sdk()
    target = tmp_path / "old.mp4"
    target.write_bytes(b"previous")
    with pytest.raises(GoneError) as caught:
        sdk.download(stand_in.video_url("expired.mp4"), target)
    assert caught.value.code == "link_expired"
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["old.mp4"]
    assert "signature" not in str(caught.value)


def test_download_retries_a_server_error(
    make_sdk: Callable[..., SDK], stand_in: StandIn, tmp_path: Path
) -> None:
    sdk = make_sdk()
    stand_in.canned["file"].append(Canned(502, "Bad gateway"))
    assert sdk.download(stand_in.video_url("v.mp4"), tmp_path / "v.mp4").read_bytes() == VIDEO
    assert len(stand_in.seen("v.mp4")) == 2 and len(sdk.sleeps) == 1


# A root path.


def test_base_url_with_a_root_path(make_sdk: Callable[..., SDK], stand_in: StandIn) -> None:
    sdk = make_sdk(base_url=stand_in.base_url + ROOT)
    stand_in.next_script = [wire_task("", "completed")]
    task = sdk.create(prompt="a fox")
    assert sdk.get(task.id).ok
    assert [seen.path for seen in stand_in.requests] == [
        f"{ROOT}/v1/vidu/videos",
        f"{ROOT}/v1/result/{task.id}",
    ]


# Pure pieces.


def test_task_from_the_wire() -> None:
    wire = wire_task("video_1", "completed", video_url="http://x/v.mp4", actualDuration=5.0, totalTokens=1500)
    wire["progress"] = 100
    wire["future_key"] = "kept"
    task = Task.from_dict(wire)
    assert (task.id, task.object, task.created, task.model) == (
        "video_1",
        "Video",
        1_760_000_000,
        "viduq3-turbo",
    )
    assert (task.actual_duration, task.total_tokens, task.progress) == (5.0, 1500, 100)
    assert task.raw["future_key"] == "kept" and "raw" not in repr(task)
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.status = "failed"  # type: ignore[misc]
    assert hash(task) == hash(Task.from_dict(wire))
    queued = Task.from_dict(wire_task("video_2", "queued"))
    assert (queued.actual_duration, queued.total_tokens, queued.progress) == (None, None, None)
    not_tasks: list[Any] = [[], {"status": "queued"}, {"id": "v", "status": "queued", "created": "yesterday"}]
    for bad in not_tasks:
        with pytest.raises(ValueError):
            Task.from_dict(bad)


def test_retry_after_parsing() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after(httpx.Headers({"Retry-After": "3"})) == 3.0
    assert parse_retry_after(httpx.Headers({"Retry-After": "1.5"})) == 1.5
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "250", "Retry-After": "9"})) == 0.25
    date = format_datetime(now + timedelta(seconds=7), usegmt=True)
    assert parse_retry_after(httpx.Headers({"Retry-After": date}), now=now) == 7.0
    past = format_datetime(now - timedelta(seconds=7), usegmt=True)
    assert parse_retry_after(httpx.Headers({"Retry-After": past}), now=now) == 0.0
    assert parse_retry_after(httpx.Headers({"Retry-After": "86400"})) == MAX_RETRY_AFTER
    for junk in ("soon", "-1", "nan", ""):
        assert parse_retry_after(httpx.Headers({"Retry-After": junk})) is None, junk
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "x", "Retry-After": "2"})) == 2.0
    assert parse_retry_after(httpx.Headers()) is None


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    assert [backoff_delay(n, rng=lambda: 0.0) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert backoff_delay(0, rng=lambda: 1.0) == 0.375
    assert backoff_delay(10_000, rng=lambda: 0.0) == BACKOFF_CAP
