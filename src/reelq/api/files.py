"""Signed video downloads: no Authorization, HMAC over path and expiry (SPEC §1 "The video URL")."""

from __future__ import annotations

import asyncio
import time
import weakref
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, Request
from starlette.responses import FileResponse, MalformedRangeHeader, RangeNotSatisfiable, Response

from reelq.api.deps import Services, ServicesDep
from reelq.api.vidu import error_response_doc
from reelq.service.covers import COVER_SLOTS
from reelq.service.errors import ApiError, Gone
from reelq.service.links import COVER, ROUTES, VIDEO

router = APIRouter()


_BINARY = {"schema": {"type": "string", "format": "binary"}}
_ACCEPT_RANGES = {"required": True, "schema": {"type": "string", "enum": ["bytes"]}}
DOWNLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The MP4 (no body for HEAD)",
        "content": {"video/mp4": _BINARY},
        "headers": {"Accept-Ranges": _ACCEPT_RANGES},
    },
    206: {
        "description": "The requested byte range (several ranges: multipart/byteranges)",
        "content": {"video/mp4": _BINARY, "multipart/byteranges": _BINARY},
        "headers": {
            "Accept-Ranges": _ACCEPT_RANGES,
            "Content-Range": {
                "description": "Sent when one range was asked for",
                "schema": {"type": "string", "pattern": "^bytes [0-9]+-[0-9]+/[0-9]+$"},
            },
        },
    },
    400: error_response_doc("Malformed Range header"),
    403: error_response_doc("Missing, forged or altered signature"),
    404: error_response_doc("No such video"),
    410: error_response_doc("The link has expired, or the video was deleted"),
    416: error_response_doc(
        "The Range starts past the end of the file",
        {
            "Content-Range": {
                "description": "The file's size",
                "required": True,
                "schema": {"type": "string", "pattern": r"^bytes \*/[0-9]+$"},
            }
        },
    ),
}
RANGE_PARAMETER = {
    "name": "Range",
    "in": "header",
    "required": False,
    "description": "Byte ranges, e.g. `bytes=0-1023` (players seek with it)",
    "schema": {"type": "string"},
}


# One route for GET and HEAD (so a 405 lists both in Allow); app._openapi suffixes their operationIds.
@router.api_route(
    "/v1/files/{filename}",
    methods=["GET", "HEAD"],
    summary="Download a video (signed URL; supports Range)",
    operation_id="download_video",
    response_class=Response,
    responses=DOWNLOAD_RESPONSES,
    openapi_extra={"parameters": [RANGE_PARAMETER]},
)
async def download_video(
    filename: str, request: Request, services: ServicesDep, expires: str = "", signature: str = ""
) -> Response:
    video = await services.tasks.signed_file(VIDEO, filename, expires, signature)
    return video_file(request, services.storage.path(video.video_key), video.view.id, video.expires_at)


def video_file(request: Request, path: Path, task_id: str, expires_at: int) -> Response:
    """The stored MP4 as a response: `Range`/`206` and `HEAD` (FileResponse), bad ranges in §4 (or the
    surface's envelope: api/openai.py's `/content` shares this); cached privately until `expires_at`."""
    if not path.is_file():
        raise Gone("This video is no longer stored.", code="link_expired")
    _check_range(request.headers.get("range"), path.stat().st_size)
    max_age = max(0, expires_at - int(time.time()))
    return FileResponse(
        path,
        media_type="video/mp4",
        headers={
            "Cache-Control": f"private, max-age={max_age}",
            "Content-Disposition": f'inline; filename="{task_id}.mp4"',
        },
    )


@router.api_route(
    ROUTES[COVER].replace("{task_id}.jpg", "{filename}"),
    methods=["GET", "HEAD"],
    summary="A video's cover image: its first frame as JPEG (signed URL, like the video's)",
    operation_id="download_cover",
    response_class=Response,
    responses={
        200: {"description": "The JPEG", "content": {"image/jpeg": _BINARY}},
        403: error_response_doc("Missing, forged or altered signature"),
        404: error_response_doc("No such video"),
        410: error_response_doc("The link has expired, or the video was deleted"),
    },
)
async def download_cover(
    filename: str, request: Request, services: ServicesDep, expires: str = "", signature: str = ""
) -> Response:
    video = await services.tasks.signed_file(COVER, filename, expires, signature)
    task_id = video.view.id
    # No key here: whoever holds the link reads at REELQ_READ_RATE per task (a miss costs a decode).
    services.tasks.limit_key_reads(f"cover:{task_id}")
    return await cover_response(services, task_id, video.video_key, video.expires_at)


async def cover_response(services: Services, task_id: str, video_key: str, expires_at: int) -> Response:
    """The first frame of the task's video as a JPEG response (made once, then cached: service/covers.py);
    at most COVER_SLOTS made at once."""
    data = services.covers.cached(task_id, video_key)
    if data is None:
        try:
            data = await anyio.to_thread.run_sync(
                services.covers.jpeg, task_id, video_key, services.storage, limiter=_cover_slots()
            )
        except FileNotFoundError:
            raise Gone("This video is no longer stored.", code="link_expired") from None
    max_age = max(0, expires_at - int(time.time()))
    return Response(
        data,
        media_type="image/jpeg",
        headers={
            "Cache-Control": f"private, max-age={max_age}",
            "Content-Disposition": f'inline; filename="{task_id}.jpg"',
        },
    )


def _cover_slots() -> anyio.CapacityLimiter:
    """This event loop's cover-decoding slots (a limiter belongs to one loop; tests run several)."""
    loop = asyncio.get_running_loop()
    slots = _COVER_SLOTS.get(loop)
    if slots is None:
        slots = _COVER_SLOTS[loop] = anyio.CapacityLimiter(COVER_SLOTS)
    return slots


_COVER_SLOTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = (
    weakref.WeakKeyDictionary()
)


def _check_range(header: str | None, size: int) -> None:
    """Refuse a bad Range in the §4 envelope.

    FileResponse answers these itself in plain text; checking first with its own parser
    keeps the two in agreement about what is valid.
    """
    if header is None:
        return
    try:
        FileResponse._parse_range_header(header, size)  # private, but exactly the rules it will apply
    except MalformedRangeHeader as exc:
        raise ApiError(
            f"Invalid Range header ({exc.content.rstrip('.')}).", param="Range", code="invalid_range"
        ) from None
    except RangeNotSatisfiable:
        raise ApiError(
            "The Range starts past the end of the file.",
            status=416,
            code="range_not_satisfiable",
            param="Range",
            headers={"Content-Range": f"bytes */{size}"},
        ) from None
