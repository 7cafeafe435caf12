"""The Vidu-compatible surface, routed: create a task, read its status (SPEC §1).

A thin transport over the task service (reelq/service/tasks.py), which holds every rule; this
module adds the OpenAPI description and FastAPI's routing. uvicorn serves the fast path
(api/fastpath.py) in front of it, which answers the same requests through the same service.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from reelq.api.auth import KeyDep
from reelq.api.bodies import request_body
from reelq.api.deps import ServicesDep
from reelq.domain import Status
from reelq.service import TaskService
from reelq.service.listing import DEFAULT_LIMIT, MAX_LIMIT
from reelq.service.pollhint import HEADER as POLL_AFTER_HEADER
from reelq.service.schemas import CreateVideoRequest
from reelq.service.tasks import MAX_IDEMPOTENCY_KEY

router = APIRouter()

MAX_LONG_POLL_SECONDS = 60

TASK_EXAMPLE = {
    "id": "video_fd35ee52-2a98-44a6-b930-29a88ce9b8fd",
    "object": "Video",
    "created": 1774836724,
    "model": "viduq3-pro",
    "status": "completed",
    "video_url": "https://example.com/v1/files/video_fd35ee52-2a98-44a6-b930-29a88ce9b8fd.mp4?expires=…",
    "actualDuration": 5,
    "totalTokens": 1500,
    "error": None,
    "progress": 100,
}
ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "param": {"type": ["string", "null"]},
            },
            "required": ["code", "message", "param"],
        }
    },
    "required": ["error"],
}
TASK_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string", "enum": ["Video"]},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "status": {"type": "string", "enum": [s.value for s in Status]},
        "video_url": {"type": ["string", "null"]},
        "actualDuration": {"type": "number"},
        "totalTokens": {"type": ["number", "null"]},
        "error": {"type": ["string", "null"]},
        "progress": {"type": "integer", "minimum": 0, "maximum": 100},
    },
    "required": ["id", "object", "created", "model", "status", "video_url", "totalTokens", "error"],
    "example": TASK_EXAMPLE,
}


def _json(content: bytes, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None) -> Response:
    response = Response(content, status, media_type="application/json")
    if headers:
        response.raw_headers.extend(headers)
    return response


RETRY_AFTER_HEADER = {
    "description": "Whole seconds to wait before retrying (at least 1)",
    "required": True,
    "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"},
}
WWW_AUTHENTICATE_HEADER = {
    "description": "The scheme to authenticate with",
    "required": True,
    "schema": {"type": "string", "enum": ["Bearer"]},
}


def error_response_doc(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """An OpenAPI response whose body is the SPEC §4 error envelope."""
    content = {"application/json": {"schema": ERROR_SCHEMA}}
    doc: dict[str, Any] = {"description": description, "content": content}
    if headers:
        doc["headers"] = headers
    return doc


def _err(status: int, description: str) -> dict[str, Any]:
    if status == 401:
        return error_response_doc(description, {"WWW-Authenticate": WWW_AUTHENTICATE_HEADER})
    if status in (429, 503):
        return error_response_doc(description, {"Retry-After": RETRY_AFTER_HEADER})
    return error_response_doc(description)


POLL_AFTER_DOC = {
    "description": "Only while the task is not finished: milliseconds to wait before asking again "
    "(estimated from the queue position and the model's typical render time); clients may ignore it",
    "required": False,
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}
TASK_OK = {
    "description": "The task object",
    "content": {"application/json": {"schema": TASK_SCHEMA}},
    "headers": {POLL_AFTER_HEADER: POLL_AFTER_DOC},
}
# Lets a client (and a stateful fuzzer) follow a created task to its status.
GET_RESULT_LINK = {
    "operationRef": "#/paths/~1v1~1result~1{task_id}/get",
    "parameters": {"task_id": "$response.body#/id"},
    "description": "The `id` of the created task is the `task_id` of its status read",
}
TASK_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: TASK_OK,
    400: _err(400, "Invalid `wait` parameter"),
    401: _err(401, "Missing, malformed, unknown or revoked API key"),
    404: _err(404, "No such task for this key"),
    429: _err(
        429,
        "Too many status reads of this task, or (`wait`) too many long-polls and event streams open for "
        "this key (see Retry-After)",
    ),
}
CREATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {**TASK_OK, "description": "The new task, `queued`", "links": {"GetResult": GET_RESULT_LINK}},
    400: _err(400, "Invalid input, naming the field in `param`"),
    401: _err(401, "Missing, malformed, unknown or revoked API key"),
    402: _err(402, "The key's budget cannot cover this task's price (`insufficient_budget`)"),
    403: _err(403, "The key may not use this model (`model_not_allowed`, `param: model`)"),
    409: _err(409, "Idempotency-Key reused with a different body"),
    413: _err(413, "Request body over 50 MB"),
    429: _err(429, "Create rate limit or per-key active-task quota exceeded (see Retry-After)"),
    503: _err(503, "The queue is full, or the server's disk is (see Retry-After)"),
}
IDEMPOTENCY_KEY_PARAMETER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "1..200 printable ASCII characters; the same key and body within 24 h give the same task",
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY, "pattern": "^[ -~]+$"},
}


def link_base(tasks: TaskService, request: Request) -> str:
    """Where video links point for this request (the service's rule, fed from the ASGI scope)."""
    scope = request.scope
    return tasks.link_base(
        scope.get("scheme", "http"),
        request.headers.get("host"),
        scope.get("root_path", ""),
        scope.get("server"),
    )


@router.post(
    "/v1/vidu/videos",
    summary="Create a video task",
    responses=CREATE_RESPONSES,
    openapi_extra={
        "parameters": [IDEMPOTENCY_KEY_PARAMETER],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": CreateVideoRequest.model_json_schema()}},
        },
    },
)
async def create_video(request: Request, key_id: KeyDep, services: ServicesDep) -> Response:
    tasks = services.tasks
    headers = request.headers
    await tasks.admit_create(key_id)  # before the body is read (api/bodies.py), as on the fast path
    async with request_body(request, services.bodies) as body:
        view = await tasks.create(
            key_id, body, headers.get("content-type"), headers.get("idempotency-key"), admitted=True
        )
    return _json(tasks.answer(view, link_base(tasks, request)), headers=tasks.poll_after(view))


@router.get("/v1/result/{task_id}", summary="Task status and result", responses=TASK_RESPONSES)
async def get_result(
    task_id: str,
    request: Request,
    key_id: KeyDep,
    services: ServicesDep,
    wait: Annotated[
        float | None,
        Query(ge=0, le=MAX_LONG_POLL_SECONDS, description="Long-poll: answer once terminal, or after N s"),
    ] = None,
) -> Response:
    tasks = services.tasks
    view = await tasks.read(key_id, task_id)
    if wait:
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            view = await tasks.wait(key_id, task_id, view, wait, gone)
        finally:
            gone.cancel()
    return _json(tasks.answer(view, link_base(tasks, request)), headers=tasks.poll_after(view))


class _HeldStream(StreamingResponse):
    """A stream that hands its key's hold back however it ends: also when the client hangs up before
    the body began (Starlette then never starts the generator, so its `finally` never runs)."""

    def __init__(self, release: Callable[[], None], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (a GET has no body: the next message is the hang-up)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# --- the owner's task management and events --------------------------------------------------------

LIST_SCHEMA = {
    "type": "object",
    "properties": {
        "object": {"type": "string", "enum": ["list"]},
        "data": {"type": "array", "items": TASK_SCHEMA},
        "has_more": {"type": "boolean"},
        "next_cursor": {"type": ["string", "null"]},
    },
    "required": ["object", "data", "has_more", "next_cursor"],
}
LIST_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A page of the key's tasks, newest first",
        "content": {"application/json": {"schema": LIST_SCHEMA}},
    },
    400: _err(400, "Invalid `limit`, `status` or `cursor`"),
}
CANCEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The task, now (or already) `failed` with error `Cancelled by user.`",
        "content": {"application/json": {"schema": TASK_SCHEMA}},
    },
    404: _err(404, "No such task for this key"),
    409: _err(409, "The task had already completed or failed: nothing to cancel, left unchanged"),
}
DELETED_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string", "enum": ["video.deleted"]},
        "deleted": {"type": "boolean", "enum": [True]},
    },
    "required": ["id", "object", "deleted"],
}
DELETE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The task and its video are gone",
        "content": {"application/json": {"schema": DELETED_SCHEMA}},
    },
    404: _err(404, "No such task for this key"),
}
EVENTS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-sent events: `status` and `progress`, each with `id:` and the task object "
        "as `data`; `: keep-alive` comments while idle; the stream ends after the terminal event",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    204: {"description": "`Last-Event-ID` already is the terminal event: nothing more will come"},
    404: _err(404, "No such task for this key"),
    429: _err(429, "Too many status reads, or too many long-polls and event streams open for this key"),
}


@router.get("/v1/vidu/videos", summary="List the key's tasks (newest first)", responses=LIST_RESPONSES)
async def list_videos(
    request: Request,
    key_id: KeyDep,
    services: ServicesDep,
    limit: Annotated[
        str | None, Query(description=f"Tasks per page, 1..{MAX_LIMIT} (default {DEFAULT_LIMIT})")
    ] = None,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page, as it was")] = None,
    status: Annotated[
        str | None, Query(description="Only tasks in this status: queued, processing, completed or failed")
    ] = None,
) -> Response:
    tasks = services.tasks
    page = await tasks.list_tasks(key_id, limit, cursor, status)
    return _json(tasks.page_answer(page, link_base(tasks, request)))


@router.post("/v1/vidu/videos/{task_id}/cancel", summary="Cancel a task", responses=CANCEL_RESPONSES)
async def cancel_video(task_id: str, request: Request, key_id: KeyDep, services: ServicesDep) -> Response:
    tasks = services.tasks
    view = await tasks.cancel(key_id, task_id)
    return _json(tasks.answer(view, link_base(tasks, request)))


@router.delete("/v1/vidu/videos/{task_id}", summary="Delete a task and its video", responses=DELETE_RESPONSES)
async def delete_video(task_id: str, key_id: KeyDep, services: ServicesDep) -> Response:
    return _json(await services.tasks.delete(key_id, task_id))


@router.get(
    "/v1/result/{task_id}/events",
    summary="Server-sent events of a task's status and progress",
    response_class=Response,
    responses=EVENTS_RESPONSES,
)
async def task_events(
    task_id: str,
    request: Request,
    key_id: KeyDep,
    services: ServicesDep,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", description="Resume after this event (sent by EventSource)")
    ] = None,
) -> Response:
    tasks = services.tasks
    view = await tasks.open_events(key_id, task_id, last_event_id)
    if view is None:
        return Response(status_code=204)
    release = tasks.acquire_hold(key_id)  # 429 when the key holds too many streams and long-polls
    gone = asyncio.ensure_future(_client_gone(request))

    async def stream() -> Any:
        try:
            async for chunk in tasks.events(
                key_id, task_id, view, last_event_id, link_base(tasks, request), gone
            ):
                yield chunk
        finally:
            gone.cancel()
            release()

    return _HeldStream(
        release,
        stream(),
        media_type="text/event-stream",
        # no-transform and X-Accel-Buffering: proxies (nginx) must pass events on at once, not buffer them.
        headers={"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"},
    )
