"""Signed video downloads: no Authorization, HMAC over path and expiry (SPEC §1 "The video URL")."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse, Response

from reelq.api.errors import Forbidden, Gone, NotFound
from reelq.api.services import ServicesDep
from reelq.domain import Status, is_task_id

router = APIRouter()


@router.api_route(
    "/v1/files/{filename}",
    methods=["GET", "HEAD"],
    summary="Download a video (signed URL; supports Range)",
    responses={
        200: {"content": {"video/mp4": {}}, "description": "The MP4"},
        206: {"description": "Partial content"},
        403: {"description": "Missing or invalid signature"},
        404: {"description": "No such video"},
        410: {"description": "The link has expired"},
    },
)
async def download_video(
    filename: str, request: Request, services: ServicesDep, expires: str = "", signature: str = ""
) -> Response:
    task_id = filename.removesuffix(".mp4")
    if not filename.endswith(".mp4") or not is_task_id(task_id):
        raise NotFound("No such video.", code="video_not_found")
    try:
        expires_at = int(expires)
    except ValueError:
        raise Forbidden("Missing or invalid signature.") from None
    # Verify before anything else so a forged link learns nothing, not even whether it expired.
    if not services.storage.verify(task_id, expires_at, signature):
        raise Forbidden("Missing or invalid signature.")
    if expires_at < time.time():
        raise Gone("This video link has expired.", code="link_expired")
    row = await run_in_threadpool(services.store.get_task, task_id)
    if row is None or row.status != Status.COMPLETED or not row.video_key:
        raise NotFound("No such video.", code="video_not_found")
    if row.video_deleted:
        raise Gone("This video has expired and was deleted.", code="link_expired")
    path = services.storage.path(row.video_key)
    if not path.is_file():
        raise Gone("This video is no longer stored.", code="link_expired")
    max_age = max(0, expires_at - int(time.time()))
    return FileResponse(
        path,
        media_type="video/mp4",
        headers={
            "Cache-Control": f"private, max-age={max_age}",
            "Content-Disposition": f'inline; filename="{task_id}.mp4"',
        },
    )
