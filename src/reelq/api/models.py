"""GET /v1/models (SPEC §7): the models this server serves that the calling key may use.

OpenAI's list shape, so the `openai` SDK's `client.models.list()` reads it; the rules are
TaskService's (`TaskService.models`), this module only answers.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from starlette.responses import Response

from reelq.api.auth import KeyDep
from reelq.api.deps import ServicesDep

router = APIRouter()

MODEL_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string", "enum": ["model"]},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
        "max_duration": {"type": "integer", "minimum": 1},
        "resolutions": {"type": "array", "items": {"type": "string"}},
        "aspect_ratios": {"type": "array", "items": {"type": "string"}},
        "first_image": {"type": "boolean"},
        "last_image": {"type": "boolean"},
        "off_peak": {"type": "boolean"},
    },
    "required": [
        "id", "object", "created", "owned_by", "max_duration", "resolutions", "aspect_ratios",
        "first_image", "last_image", "off_peak",
    ],
}
LIST_SCHEMA = {
    "type": "object",
    "properties": {
        "object": {"type": "string", "enum": ["list"]},
        "data": {"type": "array", "items": MODEL_SCHEMA},
    },
    "required": ["object", "data"],
}


@router.get(
    "/v1/models",
    summary="The models the calling key may use, and what each accepts",
    response_class=Response,
    responses={
        200: {"description": "The model list", "content": {"application/json": {"schema": LIST_SCHEMA}}}
    },
)
async def list_models(key_id: KeyDep, services: ServicesDep) -> Response:
    return Response(orjson.dumps(await services.tasks.models(key_id)), media_type="application/json")
