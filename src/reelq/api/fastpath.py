"""The two hot routes, served before FastAPI sees the request.

Every client polls `GET /v1/result/{id}` many times per video, and creates come in
bursts, so their cost decides how many clients one API process carries. Routed through
FastAPI (middleware stack, router, dependency injection, parameter validation) a request
costs several times what the work itself costs. This ASGI layer answers plain status
reads and creates directly and hands everything else, including `?wait=` long-polls, to
the app. The FastAPI routes stay the documented ones (OpenAPI) and the fallback when the
store is not SQLite; both share `authenticate_token`, `render_task_for_base`,
`create_video_answer` and the error envelope, so they answer byte for byte the same.
"""

from __future__ import annotations

import logging

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from reelq.api.auth import authenticate_token
from reelq.api.errors import ApiError, NotFound, RateLimited, error_body
from reelq.api.middleware import MAX_BODY_BYTES, too_large_body
from reelq.api.services import Services, TaskView
from reelq.api.vidu import TERMINAL_VALUES, VIEW_STATUS, create_video_answer, render_task_for_base
from reelq.domain import is_task_id
from reelq.ratelimit import retry_after_header

log = logging.getLogger("reelq.api")

RESULT_PREFIX = "/v1/result/"
CREATE_PATH = "/v1/vidu/videos"
MAX_CACHED_ANSWERS = 4096
JSON_HEADERS = [(b"content-type", b"application/json")]
Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]
# The request headers the fast routes read; the first of each wins, as in Starlette.
WANTED = frozenset((b"authorization", b"host", b"content-type", b"content-length", b"idempotency-key"))


class _ClientGone(Exception):
    """The client disconnected before its request body arrived: there is nobody to answer."""


class FastRoutes:
    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services
        self.root_path = services.settings.root_path
        self.inline = services.reader is not None
        self._finished: dict[tuple[str, TaskView], bytes] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.inline or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        root = ""
        if self.root_path and path.startswith(self.root_path + "/"):
            root, path = self.root_path, path[len(self.root_path) :]
        method = scope["method"]
        if method == "GET" and not scope["query_string"] and path.startswith(RESULT_PREFIX):
            task_id = path[len(RESULT_PREFIX) :]
            if "/" not in task_id:
                await self._answer(send, self._read_answer(scope, task_id, root))
                return
        elif method == "POST" and path == CREATE_PATH:
            try:
                answer = await self._create(scope, receive, root)
            except _ClientGone:
                return
            await self._answer(send, answer)
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _answer(send: Send, answer: Answer) -> None:
        status, body, headers = answer
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*JSON_HEADERS, (b"content-length", str(len(body)).encode()), *headers],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _read_answer(self, scope: Scope, task_id: str, root: str) -> Answer:
        try:
            return self._read(scope, task_id, root)
        except ApiError as exc:
            return _error_answer(exc)
        except Exception:
            log.exception("status read failed")
            return _internal_error()

    def _read(self, scope: Scope, task_id: str, root: str) -> Answer:
        services = self.services
        reader = services.reader
        assert reader is not None
        headers = _headers(scope)
        key_id = authenticate_token(_text(headers.get(b"authorization")), reader.key_id_for)
        retry = services.limiter.acquire(f"poll:{key_id}:{task_id}", services.poll_limit)
        if retry:
            raise RateLimited(
                f"Too many status reads for this task: at most {services.settings.poll_rate:g} per second.",
                retry_after_header(retry),
            )
        view = reader.task(task_id, key_id) if is_task_id(task_id) else None
        if view is None:
            raise NotFound(f"No task with id '{task_id}'.", param="id", code="task_not_found")
        base = services.settings.public_base_url or _base_url(scope, _text(headers.get(b"host")), root)
        if view[VIEW_STATUS] not in TERMINAL_VALUES:
            return 200, orjson.dumps(render_task_for_base(services, base, view)), []
        # A finished task reads the same until it is purged: keyed on the whole row, the
        # cached answer can never be stale, and clients poll finished tasks a lot.
        cache_key = (base, view)
        body = self._finished.get(cache_key)
        if body is None:
            body = orjson.dumps(render_task_for_base(services, base, view))
            if len(self._finished) >= MAX_CACHED_ANSWERS:
                self._finished.clear()
            self._finished[cache_key] = body
        return 200, body, []

    async def _create(self, scope: Scope, receive: Receive, root: str) -> Answer:
        services = self.services
        reader = services.reader
        assert reader is not None
        headers = _headers(scope)
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return 413, too_large_body(), []  # before auth, as BodyLimitMiddleware on the routed path
        try:
            # Authenticate before reading the body: an unauthenticated client is not worth 50 MB.
            key_id = authenticate_token(_text(headers.get(b"authorization")), reader.key_id_for)
            body = await _read_body(receive)
            if body is None:
                return 413, too_large_body(), []
            base = services.settings.public_base_url or _base_url(scope, _text(headers.get(b"host")), root)
            answer = await create_video_answer(
                services,
                key_id,
                body=body,
                content_type=_text(headers.get(b"content-type")),
                idempotency_key=_text(headers.get(b"idempotency-key")),
                base_url=base,
            )
        except ApiError as exc:
            return _error_answer(exc)
        except _ClientGone:
            raise
        except Exception:
            log.exception("create failed")
            return _internal_error()
        return 200, answer, []


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None as soon as it passes the 50 MB limit (not buffered further)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _headers(scope: Scope) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in WANTED and name not in found:
            found[name] = value
    return found


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _error_answer(exc: ApiError) -> Answer:
    headers = [(k.lower().encode(), v.encode()) for k, v in (exc.headers or {}).items()]
    return exc.status, error_body(exc.code, exc.message, exc.param), headers


def _internal_error() -> Answer:
    return 500, error_body("internal_error", "The server hit an unexpected error."), []


def _base_url(scope: Scope, host: str | None, root: str) -> str:
    """What Starlette's `request.base_url` gives, without building a Request."""
    scheme = scope.get("scheme", "http")
    if host is None:
        server = scope.get("server")
        if server:
            default = {"http": 80, "https": 443}.get(scheme)
            host = server[0] if server[1] == default else f"{server[0]}:{server[1]}"
        else:
            host = "localhost"
    return f"{scheme}://{host}{root}"
