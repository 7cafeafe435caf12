"""The status read, served before FastAPI sees the request.

Every client polls `GET /v1/result/{id}` many times per video, so its cost decides how
many clients one API process carries. Routed through FastAPI (middleware stack, router,
dependency injection, parameter validation) a read costs several times what the work
itself costs: one key lookup and one primary-key read on SQLite, plus orjson. This ASGI
layer answers plain status reads directly and hands everything else, including
`?wait=` long-polls, to the app. The FastAPI route stays the documented one (OpenAPI)
and the fallback when the store is not SQLite; both share `authenticate_token`,
`render_task` and the error envelope, so they answer byte for byte the same.
"""

from __future__ import annotations

import logging

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from reelq.api.auth import authenticate_token
from reelq.api.errors import ApiError, NotFound, RateLimited, error_body
from reelq.api.services import Services, TaskView
from reelq.api.vidu import TERMINAL_VALUES, VIEW_STATUS, render_task_for_base
from reelq.domain import is_task_id
from reelq.ratelimit import retry_after_header

log = logging.getLogger("reelq.api")

RESULT_PREFIX = "/v1/result/"
MAX_CACHED_ANSWERS = 4096
JSON_HEADERS = [(b"content-type", b"application/json")]


class FastStatusReads:
    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services
        self.root_path = services.settings.root_path
        self.inline = services.reader is not None
        self._finished: dict[tuple[str, TaskView], bytes] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.inline or scope["type"] != "http" or scope["method"] != "GET" or scope["query_string"]:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        root = ""
        if self.root_path and path.startswith(self.root_path + "/"):
            root, path = self.root_path, path[len(self.root_path) :]
        if not path.startswith(RESULT_PREFIX) or "/" in path[len(RESULT_PREFIX) :]:
            await self.app(scope, receive, send)
            return
        task_id = path[len(RESULT_PREFIX) :]
        try:
            status, body, headers = self._read(scope, task_id, root)
        except ApiError as exc:
            status, body = exc.status, error_body(exc.code, exc.message, exc.param)
            headers = [(k.lower().encode(), v.encode()) for k, v in (exc.headers or {}).items()]
        except Exception:
            log.exception("status read failed for %s", task_id)
            status, body, headers = (
                500,
                error_body("internal_error", "The server hit an unexpected error."),
                [],
            )
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*JSON_HEADERS, (b"content-length", str(len(body)).encode()), *headers],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _read(self, scope: Scope, task_id: str, root: str) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        services = self.services
        reader = services.reader
        assert reader is not None
        authorization = None
        host = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"host":
                host = value.decode("latin-1")
        key_id = authenticate_token(authorization, reader.key_id_for)
        retry = services.limiter.acquire(f"poll:{key_id}:{task_id}", services.poll_limit)
        if retry:
            raise RateLimited(
                f"Too many status reads for this task: at most {services.settings.poll_rate:g} per second.",
                retry_after_header(retry),
            )
        view = reader.task(task_id, key_id) if is_task_id(task_id) else None
        if view is None:
            raise NotFound(f"No task with id '{task_id}'.", param="id", code="task_not_found")
        base = services.settings.public_base_url or _base_url(scope, host, root)
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
