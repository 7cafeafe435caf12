"""The Vidu platform's own API (`/ent/v2/...`, `Authorization: Token <key>`), a thin transport.

For clients written against the official platform (platform.vidu.com/docs): the same tasks and
keys as every other surface, in the platform's shapes (service/vidu_platform.py), its states and
its error envelope (api/surface.py). Every rule is TaskService's. Out of reelq's OpenAPI document:
the platform's documentation is the contract.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from reelq.api.services import Services, ServicesDep
from reelq.api.surface import error_route
from reelq.api.vidu import link_base
from reelq.domain import Status
from reelq.service import vidu_platform as shapes
from reelq.service.errors import ApiError
from reelq.service.schemas import parse_json_object

router = APIRouter(route_class=error_route(shapes.error_body), include_in_schema=False)


async def _token_key(request: Request) -> str:
    return await request.app.state.services.tasks.authenticate(request.headers.get("authorization"), "Token")


TokenKeyDep = Annotated[str, Depends(_token_key)]


def _json(data: Any) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")


def _credits(services: Services, view: Any) -> int:
    settings = services.settings
    return shapes.credits(view, settings.token_rates, settings.resolution_factors)


async def _create(route: str, request: Request, key_id: str, services: Services) -> Response:
    body = parse_json_object(await request.body(), request.headers.get("content-type"))
    data = shapes.create_fields(route, body)
    try:
        view = await services.tasks.create_from(key_id, data, request.headers.get("idempotency-key"))
    except ApiError as exc:
        exc.param = shapes.param_name(exc.param)  # our first_image/last_image are its `images`
        raise
    answer = shapes.create_answer(
        view, data, body.get("payload"), _credits(services, view), body.get("images") or []
    )
    return _json(answer)


@router.post("/ent/v2/text2video")
async def text2video(request: Request, key_id: TokenKeyDep, services: ServicesDep) -> Response:
    return await _create("text2video", request, key_id, services)


@router.post("/ent/v2/img2video")
async def img2video(request: Request, key_id: TokenKeyDep, services: ServicesDep) -> Response:
    return await _create("img2video", request, key_id, services)


@router.post("/ent/v2/start-end2video")
async def start_end2video(request: Request, key_id: TokenKeyDep, services: ServicesDep) -> Response:
    return await _create("start-end2video", request, key_id, services)


@router.get("/ent/v2/tasks/{task_id}/creations")
async def creations(task_id: str, request: Request, key_id: TokenKeyDep, services: ServicesDep) -> Response:
    tasks = services.tasks
    view = await tasks.read(key_id, task_id)
    video_url = cover_url = None
    if view.status == Status.COMPLETED and view.finished_at is not None:
        base = link_base(tasks, request)
        expires = int(view.finished_at + services.settings.video_url_ttl)
        video_url = tasks.storage.video_url(base, view.id, view.video_key, expires)
        cover_url = services.covers.url(base, view.id, expires)
    return _json(shapes.creations_answer(view, _credits(services, view), video_url, cover_url))


@router.post("/ent/v2/tasks/{task_id}/cancel")
async def cancel(task_id: str, key_id: TokenKeyDep, services: ServicesDep) -> Response:
    await services.tasks.cancel(key_id, task_id)
    return _json({})
