"""The Vidu platform's callbacks for relayed tasks: a thin route over `reelq.service.relay`.

No bearer key: the platform signs its callbacks (HMAC-SHA256 with the upstream key) instead.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from reelq.api.services import ServicesDep
from reelq.api.vidu import error_response_doc
from reelq.service.relay import CALLBACK_ROUTE, RelayCallbacks

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
    403: error_response_doc("Missing, forged or stale signature"),
    404: error_response_doc("No task relayed to the Vidu platform with this id"),
}


@router.post(
    CALLBACK_ROUTE,
    summary="Vidu platform state-change callback for a relayed task",
    response_class=Response,
    responses=CALLBACK_RESPONSES,
)
async def vidu_callback(task_id: str, request: Request, services: ServicesDep) -> Response:
    body = await request.body()
    callbacks = RelayCallbacks(services.settings, services.store)
    outcome = await run_in_threadpool(callbacks.accept, task_id, request.headers, body)
    return Response(orjson.dumps({"status": outcome}), media_type="application/json")
