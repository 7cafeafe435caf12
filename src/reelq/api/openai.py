"""The OpenAI Videos API surface (`/v1/videos`), a thin transport over the task service.

The official `openai` SDK drives it unchanged (`client.videos.create / retrieve / list / delete /
download_content / create_and_poll`). Shapes and the mapping of fields live in service/openai.py;
every rule (auth, limits, validation, idempotency, quotas, webhooks) is TaskService's, so a task
made here is the same task on `/v1/result/{id}` and `/ent/v2/tasks/{id}/creations`. Errors, on
this surface only, are OpenAI's envelope (api/surface.py).

These routes stay out of reelq's OpenAPI document: their contract is OpenAI's API reference.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.responses import RedirectResponse, Response

from reelq.api.auth import KeyDep
from reelq.api.files import cover_response, video_file
from reelq.api.services import Services, ServicesDep
from reelq.api.surface import error_route
from reelq.api.vidu import link_base
from reelq.domain import Status, is_task_id
from reelq.service import openai as shapes
from reelq.service.errors import Gone, InvalidRequest, NotFound
from reelq.service.schemas import parse_json_object

router = APIRouter(route_class=error_route(shapes.error_body), include_in_schema=False)

MAX_FORM_FIELDS = 50


def _json(data: Any, headers: list[tuple[bytes, bytes]] | None = None) -> Response:
    response = Response(orjson.dumps(data), media_type="application/json")
    if headers:
        response.raw_headers.extend(headers)
    return response


def _poll_after(services: Services, view: Any) -> list[tuple[bytes, bytes]]:
    """Our polling hint under the name the SDK's `poll()` reads (`openai-poll-after-ms`)."""
    return [(shapes.POLL_AFTER, value) for _name, value in services.tasks.poll_after(view)]


async def _create_body(request: Request) -> tuple[dict[str, Any], str | None]:
    """The create's fields (JSON or multipart form) and the uploaded `input_reference` as a data URI."""
    content_type = request.headers.get("content-type") or ""
    if content_type.split(";", 1)[0].strip().lower() != "multipart/form-data":
        return parse_json_object(await request.body(), content_type or None), None
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


@router.post("/v1/videos")
async def create_video(request: Request, key_id: KeyDep, services: ServicesDep) -> Response:
    tasks = services.tasks
    body, first_image = await _create_body(request)
    data = shapes.create_fields(body, services.settings.models, first_image)
    view = await tasks.create_from(key_id, data, request.headers.get("idempotency-key"))
    return _json(shapes.video_object(view, services.settings.video_url_ttl), _poll_after(services, view))


@router.get("/v1/videos")
async def list_videos(request: Request, key_id: KeyDep, services: ServicesDep) -> Response:
    query = request.query_params
    after, limit, ascending = shapes.list_params(query.get("after"), query.get("limit"), query.get("order"))
    views, has_more = await services.tasks.page(key_id, limit, after, ascending)
    ttl = services.settings.video_url_ttl
    return _json(shapes.list_object([shapes.video_object(v, ttl) for v in views], has_more))


@router.get("/v1/videos/{video_id}")
async def retrieve_video(video_id: str, key_id: KeyDep, services: ServicesDep) -> Response:
    view = await services.tasks.read(key_id, video_id)
    return _json(shapes.video_object(view, services.settings.video_url_ttl), _poll_after(services, view))


@router.delete("/v1/videos/{video_id}")
async def delete_video(video_id: str, key_id: KeyDep, services: ServicesDep) -> Response:
    return Response(await services.tasks.delete(key_id, video_id), media_type="application/json")


@router.api_route("/v1/videos/{video_id}/content", methods=["GET", "HEAD"])
async def video_content(video_id: str, request: Request, key_id: KeyDep, services: ServicesDep) -> Response:
    """The MP4 (`variant=video`, `Range` works) or its first frame as JPEG (`variant=thumbnail`).

    Not counted as a status read (no poll rate limit): the SDK downloads right after its last poll.
    """
    variant = request.query_params.get("variant", "video")
    if variant not in ("video", "thumbnail"):
        raise InvalidRequest("variant must be 'video' or 'thumbnail' (no spritesheet here).", param="variant")
    row = await run_in_threadpool(services.store.get_task, video_id, key_id) if is_task_id(video_id) else None
    if row is None:
        raise NotFound(f"No video with id '{video_id}'.", param="id", code="video_not_found")
    if row.status != Status.COMPLETED or not row.video_key:
        raise InvalidRequest(
            f"Video '{video_id}' is {shapes.status_of(row)}: its content is only available once "
            "it has completed.",
            param="video_id",
            code="video_not_ready",
        )
    expires_at = int((row.finished_at or 0) + services.settings.video_url_ttl)
    if row.video_deleted or expires_at < time.time():
        raise Gone("This video has expired and was deleted.", code="video_expired")
    if variant == "thumbnail":
        return await cover_response(services, video_id, row.video_key, expires_at)
    try:
        path = services.storage.path(row.video_key)
    except FileNotFoundError:  # stored in S3: send the client to its presigned link
        url = services.storage.video_url(
            link_base(services.tasks, request), video_id, row.video_key, expires_at
        )
        return RedirectResponse(url, status_code=302)
    return video_file(request, path, video_id, expires_at)
