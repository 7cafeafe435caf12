"""The Vidu-compatible surface: create a task, read its status (SPEC §1)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from reelq.api.auth import KeyDep
from reelq.api.errors import (
    Conflict,
    InsufficientStorage,
    InvalidRequest,
    NotFound,
    Overloaded,
    RateLimited,
)
from reelq.api.schemas import (
    CreateVideoRequest,
    parse_json_object,
    request_fingerprint,
    task_object,
    validate_create_off_loop,
)
from reelq.api.services import VIEW_FIELDS, Services, ServicesDep, TaskView
from reelq.domain import TERMINAL, Status, is_task_id
from reelq.ratelimit import retry_after_header
from reelq.store import QuotaExceeded, TaskRow
from reelq.store.errors import StorageFull

router = APIRouter()

MAX_IDEMPOTENCY_KEY = 200
MAX_LONG_POLL_SECONDS = 60
TERMINAL_VALUES = frozenset(s.value for s in TERMINAL)
VIEW_STATUS = VIEW_FIELDS.index("status")
# Retry-After hints when a quota is full: no way to know when a render ends, so a polite guess.
ACTIVE_LIMIT_RETRY = 5.0
QUEUE_FULL_RETRY = 10.0
STORAGE_FULL_RETRY = 30.0  # a full disk waits for an operator, not for a render to end

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


def _json(content: bytes, status: int = 200) -> Response:
    return Response(content, status, media_type="application/json")


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


TASK_OK = {"description": "The task object", "content": {"application/json": {"schema": TASK_SCHEMA}}}
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
    429: _err(429, "Too many status reads of this task (see Retry-After)"),
}
CREATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {**TASK_OK, "description": "The new task, `queued`", "links": {"GetResult": GET_RESULT_LINK}},
    400: _err(400, "Invalid input, naming the field in `param`"),
    401: _err(401, "Missing, malformed, unknown or revoked API key"),
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


def link_base(services: Services, request: Request) -> str:
    """Where video links point: the public base when configured, else the address serving this request."""
    return services.settings.public_base_url or str(request.base_url).rstrip("/")


def render_task(services: Services, request: Request, view: TaskView) -> dict[str, Any]:
    return render_task_for_base(services, link_base(services, request), view)


def render_task_for_base(services: Services, base_url: str, view: TaskView) -> dict[str, Any]:
    """The wire task object; `base_url` is where video links point (public base or serving address)."""
    (
        task_id,
        _key,
        model,
        status,
        started_at,
        progress,
        created_at,
        finished_at,
        _deleted,
        actual_duration,
        total_tokens,
        error,
    ) = view
    url = None
    if status == Status.COMPLETED:
        expires = int(finished_at + services.settings.video_url_ttl)
        url = services.storage.signed_url(base_url, task_id, expires)
    return task_object(
        task_id=task_id,
        model=model,
        created_at=created_at,
        status=status,
        started=started_at is not None,
        progress=progress,
        video_url=url,
        actual_duration=actual_duration,
        total_tokens=total_tokens,
        error=error,
    )


def _row_view(row: TaskRow) -> TaskView:
    return (
        row.id,
        row.key_id,
        row.model,
        row.status,
        row.started_at,
        row.progress,
        row.created_at,
        row.finished_at,
        row.video_deleted,
        row.actual_duration,
        row.total_tokens,
        row.error,
    )


def _idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not value or len(value) > MAX_IDEMPOTENCY_KEY or not all(32 <= ord(c) < 127 for c in value):
        raise InvalidRequest(
            "Idempotency-Key must be 1..200 printable ASCII characters.",
            param="Idempotency-Key",
            code="invalid_idempotency_key",
        )
    return value


async def create_video_answer(
    services: Services,
    key_id: str,
    *,
    body: bytes,
    content_type: str | None,
    idempotency_key: str | None,
    base_url: str,
) -> bytes:
    """The whole create after authentication, shared by the route and the fast path (api/fastpath.py).

    Returns the task object's JSON bytes, or raises an ApiError.
    """
    wait = services.limiter.acquire(f"create:{key_id}", services.create_limit)
    if wait:
        raise RateLimited(
            f"Too many creates: at most {services.settings.create_rate:g} per minute per key.",
            retry_after_header(wait),
        )
    idempotency_key = _idempotency_key(idempotency_key)
    data = parse_json_object(body, content_type)
    models = services.settings.models
    new = await validate_create_off_loop(data, models)  # images are decoded in a thread
    if idempotency_key is not None:
        new = replace(new, idempotency_key=idempotency_key, request_hash=request_fingerprint(new))
    try:
        # Group commit (store/batcher.py); it also wakes the workers once per stored batch.
        row, created = await services.creates.create(key_id, new)
    except StorageFull:
        raise InsufficientStorage(
            "The server has no room to store the task; nothing was stored. Try again later.",
            retry_after_header(STORAGE_FULL_RETRY),
        ) from None
    except QuotaExceeded as exc:
        if exc.kind == "queue":
            raise Overloaded(
                "The queue is full; try again later.", retry_after_header(QUEUE_FULL_RETRY)
            ) from None
        raise RateLimited(
            f"This key already has {exc.limit} tasks waiting or running; wait for one to finish.",
            retry_after_header(ACTIVE_LIMIT_RETRY),
            code="too_many_active_tasks",
        ) from None
    if not created and row.request_hash != new.request_hash:
        raise Conflict(
            "This Idempotency-Key was already used with a different request body.",
            param="Idempotency-Key",
            code="idempotency_key_reused",
        )
    return orjson.dumps(render_task_for_base(services, base_url, _row_view(row)))


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
    answer = await create_video_answer(
        services,
        key_id,
        body=await request.body(),
        content_type=request.headers.get("content-type"),
        idempotency_key=request.headers.get("idempotency-key"),
        base_url=link_base(services, request),
    )
    return _json(answer)


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
    retry = services.limiter.acquire(f"poll:{key_id}:{task_id}", services.poll_limit)
    if retry:
        raise RateLimited(
            f"Too many status reads for this task: at most {services.settings.poll_rate:g} per second.",
            retry_after_header(retry),
        )
    view = await services.task_view(task_id, key_id) if is_task_id(task_id) else None
    if view is None:
        raise NotFound(f"No task with id '{task_id}'.", param="id", code="task_not_found")
    if wait:
        view = await _until_terminal(
            services, request, task_id, key_id, view, min(wait, services.settings.max_long_poll)
        )
    return _json(orjson.dumps(render_task(services, request, view)))


async def _until_terminal(
    services: Services, request: Request, task_id: str, key_id: str, view: TaskView, wait: float
) -> TaskView:
    """Hold the answer until the task is terminal or `wait` seconds passed.

    Woken by the long-poll hub (api/longpoll.py) when the database changed, which re-reads
    the row (free while it is unchanged: store/fastread.py). A client that hung up ends the
    wait, and a server shutting down answers every held long-poll with the current state
    at once instead of cancelling it at the end of its grace period.
    """
    deadline = time.monotonic() + wait
    hub = services.long_polls
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        seen = hub.version()  # before the read, so a commit after it always wakes us
        latest: TaskView | None = await services.task_view(task_id, key_id)
        while latest is not None:  # None: purged meanwhile, answer with what we had
            view = latest
            remaining = deadline - time.monotonic()
            if view[VIEW_STATUS] in TERMINAL_VALUES or remaining <= 0:
                break
            if gone.done() or services.draining.is_set():  # nobody to answer, or shutting down
                break
            await hub.wait(remaining, seen, gone)
            seen = hub.version()
            latest = await services.task_view(task_id, key_id)
    finally:
        gone.cancel()
    return view


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (a GET has no body: the next message is the hang-up)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
