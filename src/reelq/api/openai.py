"""The OpenAI Videos API surface (`/v1/videos`), a thin transport over the task service.

The official `openai` SDK drives it unchanged (`client.videos.create / retrieve / list / delete /
download_content / create_and_poll`). Shapes and the mapping of fields live in
service/shapes/openai.py; every rule (auth, limits, validation, idempotency, quotas, webhooks) is
TaskService's, so a task made here is the same task on `/v1/result/{id}` and
`/ent/v2/tasks/{id}/creations`. Errors, on this surface only, are OpenAI's envelope (api/surface.py).

Their contract is OpenAI's API reference; reelq's OpenAPI document describes them too, under the
`openai` tag (shapes in api/surface_docs.py).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.responses import RedirectResponse, Response

from reelq.api import surface_docs as docs
from reelq.api.auth import KeyDep
from reelq.api.bodies import request_body
from reelq.api.deps import Services, ServicesDep
from reelq.api.files import cover_response, video_file
from reelq.api.surface import error_route
from reelq.api.vidu import link_base
from reelq.database.views import TaskView
from reelq.service.errors import InvalidRequest
from reelq.service.schemas import parse_json_object
from reelq.service.shapes import openai as shapes

router = APIRouter(route_class=error_route(shapes.error_body), tags=["openai"])

MAX_FORM_FIELDS = 50


def _json(data: Any, headers: list[tuple[bytes, bytes]] | None = None) -> Response:
    response = Response(orjson.dumps(data), media_type="application/json")
    if headers:
        response.raw_headers.extend(headers)
    return response


def _poll_after(services: Services, view: TaskView) -> list[tuple[bytes, bytes]]:
    """Our polling hint under the name the SDK's `poll()` reads (`openai-poll-after-ms`)."""
    return [(shapes.POLL_AFTER, value) for _name, value in services.tasks.poll_after(view)]


async def _create_body(request: Request, raw: bytearray) -> tuple[dict[str, Any], str | None]:
    """The create's fields (JSON or multipart form, from its body `raw`, already read within the
    budget) and the uploaded `input_reference` as a data URI."""
    content_type = request.headers.get("content-type") or ""
    if content_type.split(";", 1)[0].strip().lower() != "multipart/form-data":
        return parse_json_object(raw, content_type or None), None
    request._body = raw  # form() parses what body() cached: no second copy
    try:
        form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS)
    except Exception as exc:  # Starlette raises its own MultiPartException and HTTPException here
        raise InvalidRequest(f"The multipart body could not be read: {exc}.", code="invalid_form") from None
    fields: dict[str, Any] = {}
    upload: UploadFile | None = None
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            if name != "input_reference":
                raise InvalidRequest(f"Unexpected file field '{name}'.", param=name)
            upload = value
        else:
            fields[name] = value
    first_image = None
    if upload is not None:
        content = await upload.read()
        first_image = await run_in_threadpool(shapes.data_uri, content, upload.content_type)
    await form.close()
    return fields, first_image


@router.post(
    "/v1/videos",
    summary="Create a video (OpenAI Videos API)",
    responses=docs.OPENAI_VIDEO_OK,
    openapi_extra=docs.OPENAI_CREATE_BODY,
)
async def create_video(request: Request, key_id: KeyDep, services: ServicesDep) -> Response:
    tasks = services.tasks
    await tasks.admit_create(key_id)  # before the body is read (api/bodies.py)
    async with request_body(request, services.bodies) as raw:
        body, first_image = await _create_body(request, raw)
        data = shapes.create_fields(body, services.settings.models, first_image)
        view = await tasks.create_from(key_id, data, request.headers.get("idempotency-key"), admitted=True)
    return _json(shapes.video_object(view, tasks.shown(view)), _poll_after(services, view))


@router.get(
    "/v1/videos",
    summary="List the key's videos (OpenAI Videos API)",
    responses=docs.OPENAI_LIST_OK,
    openapi_extra=docs.OPENAI_LIST_PARAMETERS,
)
async def list_videos(request: Request, key_id: KeyDep, services: ServicesDep) -> Response:
    query = request.query_params
    after, limit, ascending = shapes.list_params(query.get("after"), query.get("limit"), query.get("order"))
    tasks = services.tasks
    views, has_more = await tasks.page(key_id, limit, after, ascending)
    return _json(shapes.list_object([shapes.video_object(v, tasks.shown(v)) for v in views], has_more))


@router.get(
    "/v1/videos/{video_id}", summary="Retrieve a video (OpenAI Videos API)", responses=docs.OPENAI_VIDEO_OK
)
async def retrieve_video(video_id: str, key_id: KeyDep, services: ServicesDep) -> Response:
    view = await services.tasks.read(key_id, video_id)
    return _json(shapes.video_object(view, services.tasks.shown(view)), _poll_after(services, view))


@router.delete(
    "/v1/videos/{video_id}", summary="Delete a video (OpenAI Videos API)", responses=docs.OPENAI_DELETED_OK
)
async def delete_video(video_id: str, key_id: KeyDep, services: ServicesDep) -> Response:
    return Response(await services.tasks.delete(key_id, video_id), media_type="application/json")


@router.api_route(
    "/v1/videos/{video_id}/content",
    methods=["GET", "HEAD"],
    summary="Download a video or its thumbnail (OpenAI Videos API)",
    response_class=Response,
    responses=docs.OPENAI_CONTENT_OK,
    openapi_extra=docs.OPENAI_CONTENT_PARAMETERS,
)
async def video_content(video_id: str, request: Request, key_id: KeyDep, services: ServicesDep) -> Response:
    """The MP4 (`variant=video`, `Range` works) or its first frame as JPEG (`variant=thumbnail`).

    Not counted as a status read (no poll rate limit): the SDK downloads right after its last poll.
    Counted among the key's other reads instead (REELQ_READ_RATE): a thumbnail costs a decode.
    """
    services.tasks.limit_key_reads(key_id)
    variant = request.query_params.get("variant", "video")
    if variant not in ("video", "thumbnail"):
        raise InvalidRequest("variant must be 'video' or 'thumbnail' (no spritesheet here).", param="variant")
    tasks = services.tasks
    video = await tasks.video_content(key_id, video_id, shapes.spelled_status)
    if variant == "thumbnail":
        return await cover_response(services, video_id, video.video_key, video.expires_at)
    if not services.storage.serves_files:  # stored in S3: send the client to its presigned link
        url = tasks.links.video_url(video.view, link_base(tasks, request), video.expires_at)
        return RedirectResponse(url, status_code=302)
    return video_file(request, services.storage.path(video.video_key), video_id, video.expires_at)
