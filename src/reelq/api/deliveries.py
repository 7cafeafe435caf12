"""GET /v1/vidu/videos/{id}/deliveries: every webhook delivery attempt of the key's task (SPEC §3).

A thin transport over TaskService.deliveries; the fast path (api/fastpath.py) hands it here unchanged.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter
from starlette.responses import Response

from reelq.api.auth import KeyDep
from reelq.api.deps import ServicesDep
from reelq.api.vidu import error_response_doc

router = APIRouter()

ATTEMPT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "webhook_id": {"type": "string", "description": "The `webhook-id` header: the same on every retry"},
        "event": {"type": "string", "enum": ["video.processing", "video.completed", "video.failed"]},
        "attempt": {"type": "integer", "minimum": 1},
        "created": {"type": "integer", "description": "Unix seconds the attempt started"},
        "timestamp": {"type": "number", "description": "The same, with milliseconds"},
        "duration_ms": {"type": ["number", "null"]},
        "status_code": {"type": ["integer", "null"], "description": "The receiver's HTTP status"},
        "error": {"type": ["string", "null"], "description": "Why no status came back"},
        "outcome": {"type": "string", "enum": ["delivered", "retrying", "given_up"]},
    },
    "required": [
        "webhook_id",
        "event",
        "attempt",
        "created",
        "timestamp",
        "duration_ms",
        "status_code",
        "error",
        "outcome",
    ],
}
DELIVERIES_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The task's delivery attempts, oldest first",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "object": {"type": "string", "enum": ["list"]},
                        "task_id": {"type": "string"},
                        "data": {"type": "array", "items": ATTEMPT_SCHEMA},
                    },
                    "required": ["object", "task_id", "data"],
                }
            }
        },
    },
    404: error_response_doc("No such task for this key"),
}


@router.get(
    "/v1/vidu/videos/{task_id}/deliveries",
    summary="Webhook delivery attempts of a task",
    responses=DELIVERIES_RESPONSES,
)
async def get_deliveries(task_id: str, key_id: KeyDep, services: ServicesDep) -> Response:
    body = await services.tasks.deliveries(key_id, task_id)
    return Response(orjson.dumps(body), media_type="application/json")
