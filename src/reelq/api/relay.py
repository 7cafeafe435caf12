"""The Vidu platform's callbacks for relayed tasks: a thin route over `reelq.service.relay`.

No bearer key: the platform signs its callbacks (HMAC-SHA256 with the upstream key) instead.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from reelq.api.bodies import request_body, too_large
from reelq.api.deps import ServicesDep
from reelq.api.middleware import declared_too_large
from reelq.api.vidu import error_response_doc
from reelq.engines.relay.pokes import CALLBACK_ROUTE
from reelq.service.errors import NotFound
from reelq.service.relay import MAX_CALLBACK_BODY

router = APIRouter()

CALLBACK_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Verified: the task's status is read from the platform now",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"status": {"type": "string", "enum": ["accepted", "ignored"]}},
                    "required": ["status"],
                }
            }
        },
    },
    400: error_response_doc("The body is not a JSON object, or names another upstream task"),
    403: error_response_doc("Missing, forged, stale or replayed signature"),
    404: error_response_doc("No task relayed to the Vidu platform with this id (or callbacks are off)"),
    413: error_response_doc("Body over 64 KiB"),
}


@router.post(
    CALLBACK_ROUTE,
    summary="Vidu platform state-change callback for a relayed task",
    response_class=Response,
    responses=CALLBACK_RESPONSES,
)
async def vidu_callback(task_id: str, request: Request, services: ServicesDep) -> Response:
    # Anyone can post here, so nothing is read before it is worth reading: where no Vidu relay asks for
    # callbacks the route does not exist (404); the signature and its Date are checked from the headers;
    # only then is the body read, at most MAX_CALLBACK_BODY (413), within the process's body budget.
    callbacks = services.relay_callbacks
    if not callbacks.enabled:
        raise NotFound("No relayed task with this id.")
    if declared_too_large(request.headers.get("content-length"), MAX_CALLBACK_BODY):
        raise too_large(MAX_CALLBACK_BODY)
    row = await run_in_threadpool(callbacks.verify, task_id, request.headers)
    async with request_body(request, services.bodies, MAX_CALLBACK_BODY) as body:
        outcome = await run_in_threadpool(callbacks.take, row, bytes(body))
    return Response(orjson.dumps({"status": outcome}), media_type="application/json")
