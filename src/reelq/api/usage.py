"""GET /v1/usage: what a key has been charged (SPEC §1 "Tokens"); the rules are TaskService.usage's."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Query
from starlette.responses import Response

from reelq.api.auth import KeyDep
from reelq.api.deps import ServicesDep

router = APIRouter()

DateParam = Annotated[
    str | None, Query(description="UTC date, YYYY-MM-DD (inclusive)", json_schema_extra={"format": "date"})
]


@router.get("/v1/usage", summary="Usage of the calling key, per UTC day and model")
async def get_usage(
    key_id: KeyDep, services: ServicesDep, since: DateParam = None, until: DateParam = None
) -> Response:
    body = await services.tasks.usage(key_id, since, until)
    return Response(orjson.dumps(body), media_type="application/json")
