"""The Vidu platform's own API (`/ent/v2/...`, `Authorization: Token <key>`), a thin transport.

For clients written against the official platform (platform.vidu.com/docs): the same tasks and
keys as every other surface, in the platform's shapes (service/shapes/vidu_platform.py), its states
and its error envelope (api/surface.py). Every rule is TaskService's. The platform's documentation is
the contract; reelq's OpenAPI document describes these routes too (`vidu-platform` tag, shapes in
api/surface_docs.py).
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from reelq.api import surface_docs as docs
from reelq.api.bodies import request_body
from reelq.api.deps import Services, ServicesDep
from reelq.api.surface import error_route
from reelq.api.vidu import link_base
from reelq.database.views import TaskView
from reelq.service.links import Shown
from reelq.service.schemas import parse_json_object
from reelq.service.shapes import vidu_platform as shapes

router = APIRouter(route_class=error_route(shapes.error_body), tags=["vidu-platform"])
_TOKEN: dict[str, list[dict[str, list[str]]]] = {"security": [{docs.TOKEN_AUTH: []}]}


def _create_doc(images: int) -> dict[str, Any]:
    return {**docs.platform_create_body(images), **_TOKEN}


async def _token_key(request: Request) -> str:
    return await request.app.state.services.tasks.authenticate(request.headers.get("authorization"), "Token")


TokenKeyDep = Annotated[str, Depends(_token_key)]


def _json(data: Any) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")


def _credits(services: Services, view: TaskView, shown: Shown) -> int:
    settings = services.settings
    return shapes.credits(view, shown, settings.token_rates, settings.resolution_factors)


async def _create(route: str, request: Request, key_id: str, services: Services) -> Response:
    await services.tasks.admit_create(key_id)  # before the body is read (api/bodies.py)
    # The budget holds the body's bytes until the create is stored: its decoded forms live that long.
    async with request_body(request, services.bodies) as raw:
        body = parse_json_object(raw, request.headers.get("content-type"))
        data = shapes.create_fields(route, body)
        # Errors name the platform's fields (`images`, not first_image): shapes.error_body.
        view = await services.tasks.create_from(
            key_id, data, request.headers.get("idempotency-key"), admitted=True
        )
    answer = shapes.create_answer(
        view,
        data,
        body.get("payload"),
        _credits(services, view, services.tasks.shown(view)),
        body.get("images") or [],
    )
    return _json(answer)


@router.post(
    "/ent/v2/text2video",
    summary="Text to video (Vidu platform API)",
    responses=docs.PLATFORM_CREATE_OK,
    openapi_extra=_create_doc(0),
)
async def text2video(request: Request, key_id: TokenKeyDep, services: ServicesDep) -> Response:
    return await _create("text2video", request, key_id, services)


@router.post(
    "/ent/v2/img2video",
    summary="Image to video (Vidu platform API)",
    responses=docs.PLATFORM_CREATE_OK,
    openapi_extra=_create_doc(1),
)
async def img2video(request: Request, key_id: TokenKeyDep, services: ServicesDep) -> Response:
    return await _create("img2video", request, key_id, services)


@router.post(
    "/ent/v2/start-end2video",
    summary="First and last frame to video (Vidu platform API)",
    responses=docs.PLATFORM_CREATE_OK,
    openapi_extra=_create_doc(2),
)
async def start_end2video(request: Request, key_id: TokenKeyDep, services: ServicesDep) -> Response:
    return await _create("start-end2video", request, key_id, services)


@router.get(
    "/ent/v2/tasks/{task_id}/creations",
    summary="A task's state and results (Vidu platform API)",
    responses=docs.PLATFORM_CREATIONS_OK,
    openapi_extra=_TOKEN,
)
async def creations(task_id: str, request: Request, key_id: TokenKeyDep, services: ServicesDep) -> Response:
    tasks = services.tasks
    view = await tasks.read(key_id, task_id)
    shown = tasks.shown(view, link_base(tasks, request))
    return _json(shapes.creations_answer(view, shown, _credits(services, view, shown)))


@router.post(
    "/ent/v2/tasks/{task_id}/cancel",
    summary="Cancel a task (Vidu platform API)",
    responses=docs.PLATFORM_CANCEL_OK,
    openapi_extra=_TOKEN,
)
async def cancel(task_id: str, key_id: TokenKeyDep, services: ServicesDep) -> Response:
    await services.tasks.cancel(key_id, task_id)
    return _json({})
