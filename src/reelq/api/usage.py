"""GET /v1/usage: what a key has been charged (SPEC §1 "Tokens")."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from reelq.api.auth import KeyDep
from reelq.api.services import ServicesDep
from reelq.domain import wire_number
from reelq.service.errors import InvalidRequest

router = APIRouter()

DateParam = Annotated[
    str | None, Query(description="UTC date, YYYY-MM-DD (inclusive)", json_schema_extra={"format": "date"})
]


def _date(value: str | None, name: str) -> str | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise InvalidRequest(f"'{name}' must be a date like 2026-01-31.", param=name) from None


@router.get("/v1/usage", summary="Usage of the calling key, per UTC day and model")
async def get_usage(
    key_id: KeyDep, services: ServicesDep, since: DateParam = None, until: DateParam = None
) -> Response:
    start, end = _date(since, "since"), _date(until, "until")
    rows = await run_in_threadpool(services.store.usage, key_id, start, end)
    by_model: dict[str, dict[str, Any]] = {}
    for row in rows:
        total = by_model.setdefault(row.model, {"videos": 0, "seconds": 0.0, "totalTokens": 0})
        total["videos"] += row.videos
        total["seconds"] += row.seconds
        total["totalTokens"] += row.tokens
    body = {
        "object": "usage",
        "key_id": key_id,
        "since": start,
        "until": end,
        "videos": sum(r.videos for r in rows),
        "seconds": wire_number(round(sum(r.seconds for r in rows), 3)),
        "totalTokens": sum(r.tokens for r in rows),
        "by_model": {m: {**t, "seconds": wire_number(round(t["seconds"], 3))} for m, t in by_model.items()},
        "data": [
            {
                "date": r.day,
                "model": r.model,
                "videos": r.videos,
                "seconds": wire_number(round(r.seconds, 3)),
                "totalTokens": r.tokens,
            }
            for r in rows
        ],
    }
    return Response(orjson.dumps(body), media_type="application/json")
