"""The two hot routes, served before FastAPI sees the request.

Every client polls `GET /v1/result/{id}` many times per video, and creates come in
bursts, so their cost decides how many clients one API process carries. Routed through
FastAPI (middleware stack, router, dependency injection, parameter validation) a request
costs several times what the work itself costs. This ASGI layer answers plain status
reads and creates directly and hands everything else, including `?wait=` long-polls, to
the app. The FastAPI routes stay the documented ones (OpenAPI) and the fallback when there
is no cached reader (an in-memory test database).

On SQLite the read runs synchronously on the event loop (a miss reads the file in
microseconds). On PostgreSQL an unchanged task is answered from the cache the same way and
only a miss awaits a reader thread (database/fastread.py).

Like the routed app (api/vidu.py), this is only a transport: it reads the HTTP bits from the
ASGI scope, calls the task service (reelq/service/tasks.py) and sends its task view or
ApiError in the same envelope, so both answer byte for byte the same
(tests/test_transports.py runs every request through both).
"""

from __future__ import annotations

import logging
from time import perf_counter

from starlette.types import ASGIApp, Receive, Scope, Send

from reelq.api.bodies import ClientGone, admitted_body
from reelq.api.deps import Services
from reelq.api.middleware import declared_too_large, too_large_body, under_root
from reelq.database.views import TaskView
from reelq.service.errors import ApiError, error_body

log = logging.getLogger("reelq.api")

RESULT_PREFIX = "/v1/result/"
RESULT_ROUTE = "/v1/result/{task_id}"  # the routed app's template, so both transports share series
CREATE_PATH = "/v1/vidu/videos"
JSON_HEADERS = [(b"content-type", b"application/json")]
Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]
# The request headers the fast routes read; the first of each wins, as in Starlette.
WANTED = frozenset((b"authorization", b"host", b"content-type", b"content-length", b"idempotency-key"))


class _ClientGone(Exception):
    """The client disconnected before its request body arrived: there is nobody to answer."""


class FastRoutes:
    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.tasks = services.tasks
        self.bodies = services.bodies
        self.root_path = services.settings.root_path
        # Plain-int counters of the two fast routes (metrics.RouteStats): the whole cost of measuring them.
        self.read_stats = services.http_stats.route("GET", RESULT_ROUTE)
        self.create_stats = services.http_stats.route("POST", CREATE_PATH)
        reader = services.reader
        self.enabled = reader is not None
        self.inline = reader is not None and reader.inline  # SQLite: no await on the read path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.enabled or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        root = ""
        if self.root_path:
            root, path = under_root(path, self.root_path)
        method = scope["method"]
        if method == "GET" and not scope["query_string"] and path.startswith(RESULT_PREFIX):
            task_id = path[len(RESULT_PREFIX) :]
            if task_id and "/" not in task_id:  # else no route matches: the app answers that
                started = perf_counter()
                answer = (
                    self._read(scope, task_id, root)
                    if self.inline
                    else await self._read_off_loop(scope, task_id, root)
                )
                await self._answer(send, answer)
                self.read_stats.observe(answer[0], perf_counter() - started)
                return
        elif method == "POST" and path == CREATE_PATH:
            started = perf_counter()
            try:
                answer = await self._create(scope, receive, root)
            except _ClientGone:
                return
            await self._answer(send, answer)
            self.create_stats.observe(answer[0], perf_counter() - started)
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

    def _link_base(self, scope: Scope, headers: dict[bytes, str], root: str) -> str:
        """Where this request's video links point; the serving address only without a Host header."""
        host = headers.get(b"host")
        server = None if host else scope.get("server")
        return self.tasks.link_base(scope.get("scheme", "http"), host, root, server)

    def _read(self, scope: Scope, task_id: str, root: str) -> Answer:
        tasks = self.tasks
        try:
            headers = _headers(scope)
            key_id = tasks.authenticate_now(headers.get(b"authorization"))
            return self._read_answer(scope, headers, root, tasks.read_now(key_id, task_id))
        except ApiError as exc:
            return _error_answer(exc)
        except Exception:
            log.exception("status read failed")
            return _internal_error()

    async def _read_off_loop(self, scope: Scope, task_id: str, root: str) -> Answer:
        """`_read` where a cache miss must not block the loop (PostgreSQL)."""
        tasks = self.tasks
        try:
            headers = _headers(scope)
            key_id = await tasks.authenticate(headers.get(b"authorization"))
            return self._read_answer(scope, headers, root, await tasks.read(key_id, task_id))
        except ApiError as exc:
            return _error_answer(exc)
        except Exception:
            log.exception("status read failed")
            return _internal_error()

    def _read_answer(self, scope: Scope, headers: dict[bytes, str], root: str, view: TaskView) -> Answer:
        tasks = self.tasks
        return 200, tasks.answer(view, self._link_base(scope, headers, root)), tasks.poll_after(view)

    async def _create(self, scope: Scope, receive: Receive, root: str) -> Answer:
        tasks = self.tasks
        headers = _headers(scope)
        if declared_too_large(headers.get(b"content-length")):
            return 413, too_large_body(), []  # before auth, as BodyLimitMiddleware on the routed path
        try:
            # Authenticate and rate-limit before reading the body, within the process's body budget
            # (api/bodies.py): an unauthenticated or over-limit client is not worth 50 MB.
            authorization = headers.get(b"authorization")
            if self.inline:
                key_id = tasks.authenticate_now(authorization)
            else:
                key_id = await tasks.authenticate(authorization)
            await tasks.admit_create(key_id)  # the create rate limit, before the body too
            async with admitted_body(receive, headers.get(b"content-length"), self.bodies) as body:
                view = await tasks.create(
                    key_id,
                    body,
                    headers.get(b"content-type"),
                    headers.get(b"idempotency-key"),
                    admitted=True,
                )
            return 200, tasks.answer(view, self._link_base(scope, headers, root)), tasks.poll_after(view)
        except ApiError as exc:
            return _error_answer(exc)
        except ClientGone:
            raise _ClientGone from None
        except Exception:
            log.exception("create failed")
            return _internal_error()


def _headers(scope: Scope) -> dict[bytes, str]:
    """The WANTED request headers, decoded as Starlette decodes them."""
    found: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name in WANTED and name not in found:
            found[name] = value.decode("latin-1")
    return found


def _error_answer(exc: ApiError) -> Answer:
    headers = [(k.lower().encode(), v.encode()) for k, v in (exc.headers or {}).items()]
    return exc.status, exc.body(), headers


def _internal_error() -> Answer:
    return 500, error_body("internal_error", "The server hit an unexpected error."), []
