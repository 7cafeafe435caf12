"""The admin API (SPEC §6): keys, their settings and credits, and every key's usage.

Every route needs an admin key; any other valid key gets `403 forbidden`, no key `401`. The rules
are in service/admin.py and the store (database/keys.py); this module only routes.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from reelq.api.auth import KeyDep
from reelq.api.deps import ServicesDep
from reelq.database.keys import BudgetInUse
from reelq.domain import wire_number
from reelq.service.admin import MAX_KEY_PAGE, key_object, parse_settings, require_admin
from reelq.service.errors import Conflict, InvalidRequest, NotFound
from reelq.service.schemas import parse_json_object
from reelq.service.usage import parse_date

router = APIRouter()

def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


async def _admin(services: Any, key_id: str) -> None:
    require_admin(await services.tasks.policies.get(key_id))


async def _body(request: Request) -> dict[str, Any]:
    return parse_json_object(await request.body(), request.headers.get("content-type"))


def _no_key(key_id: str) -> NotFound:
    return NotFound(f"No key with id '{key_id}'.", param="id")


@router.post("/v1/admin/keys", summary="Create a key (admin)")
async def create_key(request: Request, key_id: KeyDep, services: ServicesDep) -> Response:
    await _admin(services, key_id)
    data = await _body(request)
    admin = data.get("admin", False)
    if not isinstance(admin, bool):
        raise InvalidRequest("Invalid value for 'admin': expected a boolean.", param="admin")
    settings = parse_settings(data, partial=False)
    record, plain, secret = await run_in_threadpool(services.store.create_key_with, settings, admin=admin)
    return _json({**key_object(record), "key": plain, "webhook_secret": secret})


@router.get("/v1/admin/keys", summary="List keys (admin)")
async def list_keys(
    key_id: KeyDep,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=MAX_KEY_PAGE)] = 20,
    after: Annotated[str | None, Query(max_length=40, description="next_cursor of the previous page")] = None,
) -> Response:
    await _admin(services, key_id)
    rows = await run_in_threadpool(services.store.key_page, limit + 1, after)
    has_more = len(rows) > limit
    rows = rows[:limit]
    return _json(
        {
            "object": "list",
            "data": [key_object(r) for r in rows],
            "has_more": has_more,
            "next_cursor": rows[-1].id if has_more else None,
        }
    )


@router.get("/v1/admin/keys/{target}", summary="One key, with its latest credits (admin)")
async def get_key(target: str, key_id: KeyDep, services: ServicesDep) -> Response:
    await _admin(services, key_id)
    record = await run_in_threadpool(services.store.key_record, target)
    if record is None:
        raise _no_key(target)
    credits = await run_in_threadpool(services.store.key_credits, target)
    return _json(
        {
            **key_object(record),
            "credits": [
                {"created": int(c.at), "tokens": c.tokens, "note": c.note, "by": c.by} for c in credits
            ],
        }
    )


@router.patch("/v1/admin/keys/{target}", summary="Change a key's settings (admin)")
async def update_key(target: str, request: Request, key_id: KeyDep, services: ServicesDep) -> Response:
    await _admin(services, key_id)
    settings = parse_settings(await _body(request), partial=True)
    try:
        record = await run_in_threadpool(services.store.update_key, target, settings)
    except BudgetInUse:
        raise Conflict(
            "The budget cannot be lower than what the key has spent and holds for live tasks.",
            param="budget",
            code="budget_in_use",
        ) from None
    if record is None:
        raise _no_key(target)
    return _json(key_object(record))


@router.post("/v1/admin/keys/{target}/credits", summary="Add tokens to a key's budget (admin)")
async def credit_key(target: str, request: Request, key_id: KeyDep, services: ServicesDep) -> Response:
    await _admin(services, key_id)
    data = await _body(request)
    tokens, note = data.get("tokens"), data.get("note")
    if not isinstance(tokens, int) or isinstance(tokens, bool) or abs(tokens) > 2**53:
        raise InvalidRequest("Invalid value for 'tokens': expected an integer.", param="tokens")
    if note is not None and (not isinstance(note, str) or len(note) > 1000):
        raise InvalidRequest("Invalid value for 'note': a string of at most 1000 characters.", param="note")
    try:
        record = await run_in_threadpool(services.store.credit_key, target, tokens, note, key_id)
    except ValueError as exc:
        raise Conflict(f"This key has no budget: {exc}.", param="tokens", code="no_budget") from None
    except BudgetInUse:
        raise Conflict(
            "The budget cannot go below what the key has spent and holds for live tasks.",
            param="tokens",
            code="budget_in_use",
        ) from None
    if record is None:
        raise _no_key(target)
    return _json(key_object(record))


@router.delete("/v1/admin/keys/{target}", summary="Revoke a key (admin)")
async def revoke_key(target: str, key_id: KeyDep, services: ServicesDep) -> Response:
    await _admin(services, key_id)
    if not target.startswith("key_"):  # by id only: a plain key must never travel in a URL
        raise _no_key(target)
    revoked = await run_in_threadpool(services.store.revoke_key, target)
    if revoked is None:
        raise _no_key(target)
    record = await run_in_threadpool(services.store.key_record, target)
    assert record is not None
    return _json(key_object(record))



@router.get("/v1/admin/usage", summary="Every key's usage per UTC day and model (admin)")
async def all_usage(
    key_id: KeyDep,
    services: ServicesDep,
    since: Annotated[str | None, Query(max_length=10)] = None,
    until: Annotated[str | None, Query(max_length=10)] = None,
    target: Annotated[str | None, Query(alias="key_id", max_length=40)] = None,
) -> Response:
    await _admin(services, key_id)
    start, end = parse_date(since, "since"), parse_date(until, "until")
    rows = await run_in_threadpool(services.store.all_usage, start, end, target)
    return _json(
        {
            "object": "usage",
            "since": start,
            "until": end,
            "data": [
                {
                    "key_id": owner,
                    "date": r.day,
                    "model": r.model,
                    "videos": r.videos,
                    "seconds": wire_number(round(r.seconds, 3)),
                    "totalTokens": r.tokens,
                }
                for owner, r in rows
            ],
        }
    )

