"""The OpenAI Videos API's shapes, mapped onto the task surface (api/openai.py is its transport).

One task, seen through OpenAI's `video` object: our statuses become `queued | in_progress |
completed | failed`, our duration its `seconds` (a string, as OpenAI sends it), our aspect ratio
and resolution its `size` (`"1280x720"`: the exact frame size we encode, domain.frame_size). A
create is translated into the Vidu fields and handed to `TaskService.create_from`, so limits,
idempotency, quotas and webhooks are the same; its errors are translated back, naming OpenAI's
fields, in OpenAI's envelope `{"error": {"message", "type", "param", "code"}}`.

Defaults follow OpenAI's (`seconds` "4", `size` "720x1280"), so a client that sends neither gets
what it would get there; `model` defaults to the first served model (OpenAI's model names are not
ours: this surface takes the configured ones, like every other).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import orjson

from reelq.database.views import TaskView
from reelq.domain import (
    CANCELLED_ERROR,
    CONTENT_POLICY_PREFIX,
    Status,
    frame_size,
    parse_ascii_int,
)
from reelq.service.errors import ApiError, InvalidRequest
from reelq.service.links import Shown

ASPECT_RATIOS = ("16:9", "9:16", "1:1", "4:3", "3:4")
RESOLUTIONS = ("540p", "720p", "1080p")
# "WxH" -> (aspect_ratio, resolution): every size we can make, and only those.
SIZES: dict[str, tuple[str, str]] = {
    "{}x{}".format(*frame_size(resolution, ratio)): (ratio, resolution)
    for resolution in RESOLUTIONS
    for ratio in ASPECT_RATIOS
}
DEFAULT_SECONDS = "4"
DEFAULT_SIZE = "720x1280"
MAX_LIST_LIMIT = 100
DEFAULT_LIST_LIMIT = 20
POLL_AFTER = b"openai-poll-after-ms"  # what the SDK's create_and_poll reads between polls

_STATUS = {
    Status.QUEUED.value: "queued",
    Status.PROCESSING.value: "in_progress",
    Status.COMPLETED.value: "completed",
    Status.FAILED.value: "failed",
}
# Our field names -> OpenAI's, for errors raised by the shared validation.
_PARAM = {
    "duration": "seconds",
    "aspect_ratio": "size",
    "resolution": "size",
    "first_image": "input_reference",
    "id": "video_id",
}
_TYPE = {401: "invalid_request_error", 429: "rate_limit_error", 503: "server_error", 500: "server_error"}
# Passed through untouched (reelq extensions, e.g. with the SDK's `extra_body`).
_EXTENSIONS = ("seed", "callback_url", "last_image", "off_peak")


def error_body(exc: ApiError) -> bytes:
    """An ApiError in OpenAI's envelope (what its SDK parses into `e.message`, `e.code`, `e.param`)."""
    param = _PARAM.get(exc.param, exc.param) if exc.param else None
    # Built around OpenAI's name for the field (ApiError.named), never by rewriting the service's text.
    message = exc.message_for(param)
    kind = _TYPE.get(exc.status, "invalid_request_error")
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": exc.code}})


def data_uri(content: bytes, declared: str | None) -> str:
    """An uploaded `input_reference` file as the data URI the task stores (its type from its bytes)."""
    if content.startswith(b"\x89PNG"):
        media = "image/png"
    elif content.startswith(b"\xff\xd8\xff"):
        media = "image/jpeg"
    elif content[:4] == b"RIFF" and content[8:12] == b"WEBP":
        media = "image/webp"
    else:
        media = (declared or "application/octet-stream").split(";", 1)[0].strip()
    return f"data:{media};base64,{base64.b64encode(content).decode('ascii')}"


def create_fields(body: dict[str, Any], models: Sequence[str], first_image: str | None) -> dict[str, Any]:
    """An OpenAI create (a JSON object, or the fields of a multipart form as strings) as the Vidu
    create fields; InvalidRequest naming OpenAI's field for what does not map.

    `first_image` is the uploaded `input_reference` file, already a data URI; without one, a JSON
    `input_reference` may be a URL or data URI string, or `{"image_url": ...}`.
    """
    prompt = body.get("prompt")
    if prompt is None:
        raise InvalidRequest(
            "Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter"
        )
    model = body.get("model")
    if model is None:
        model = models[0] if models else ""
    data: dict[str, Any] = {"prompt": prompt, "model": model}
    data["duration"] = _seconds(body.get("seconds", DEFAULT_SECONDS))
    size = body.get("size", DEFAULT_SIZE)
    if not isinstance(size, str) or size not in SIZES:
        raise InvalidRequest(
            f"Invalid value for 'size': {_shown(size)} is not supported; "
            f"supported sizes are {', '.join(SIZES)}.",
            param="size",
            code="invalid_size",
        )
    data["aspect_ratio"], data["resolution"] = SIZES[size]
    if first_image is None:
        first_image = _reference(body.get("input_reference"))
    if first_image is not None:
        data["first_image"] = first_image
    for name in _EXTENSIONS:
        if body.get(name) is not None:
            data[name] = body[name]
    if isinstance(data.get("seed"), str):
        # A form sends every field as a string. Anything but ASCII digits stays a string, which the
        # create's strict validation refuses as "not an integer".
        seed = parse_ascii_int(data["seed"])
        if seed is not None:
            data["seed"] = seed
    return data


def _seconds(value: Any) -> Any:
    """OpenAI's `seconds` ("4", a string; an integer accepted too) as our integer duration."""
    if isinstance(value, str):
        seconds = parse_ascii_int(value.strip(" \t"))
        if seconds is not None:
            return seconds
    elif isinstance(value, int) and not isinstance(value, bool):
        return value
    raise InvalidRequest(
        f"Invalid value for 'seconds': {_shown(value)} is not a whole number of seconds.",
        param="seconds",
        code="invalid_seconds",
    )


def _shown(value: Any, limit: int = 40) -> str:
    """A client's value quoted in an error, cut short: a 5,000-digit `seconds` need not come back whole."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _reference(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("image_url")
    if not isinstance(value, str):
        raise InvalidRequest(
            "Invalid value for 'input_reference': expected an image file, an image URL or a data URI.",
            param="input_reference",
        )
    return value


def list_params(after: str | None, limit: str | None, order: str | None) -> tuple[str | None, int, bool]:
    """`after`, `limit`, `order` of a list as (after id, limit, ascending); InvalidRequest naming one."""
    count = DEFAULT_LIST_LIMIT
    if limit is not None:
        count = parse_ascii_int(limit) or 0
        if not 1 <= count <= MAX_LIST_LIMIT:
            raise InvalidRequest(f"limit must be an integer from 1 to {MAX_LIST_LIMIT}.", param="limit")
    if order not in (None, "asc", "desc"):
        raise InvalidRequest("order must be 'asc' or 'desc'.", param="order")
    return after or None, count, order == "asc"


def error_code(error: str | None) -> str:
    """A failed task's `error.code`: what kind of failure, for code to branch on."""
    if error == CANCELLED_ERROR:
        return "cancelled"
    if error and error.startswith(CONTENT_POLICY_PREFIX):
        return "content_policy_violation"
    return "generation_failed"


def spelled_status(shown: str) -> str:
    """A wire status (service/links.py `Shown.status`) as OpenAI spells it."""
    return _STATUS[shown]


def video_object(view: TaskView, shown: Shown) -> dict[str, Any]:
    """The task as OpenAI's `video` object; `shown` is what it shows (TaskService.shown)."""
    return {
        "id": view.id,
        "object": "video",
        "model": view.model,
        "status": _STATUS[shown.status],
        "progress": shown.progress,
        "created_at": int(view.created_at),
        "completed_at": int(view.finished_at)
        if (shown.completed or shown.failed) and view.finished_at is not None
        else None,
        # The content can be downloaded until the video link expires (REELQ_VIDEO_URL_TTL).
        "expires_at": shown.expires_at,
        "seconds": str(view.duration),
        "size": "{}x{}".format(*frame_size(view.resolution, view.aspect_ratio)),
        "remixed_from_video_id": None,
        "error": {"code": error_code(view.error), "message": view.error} if shown.failed else None,
    }


def list_object(objects: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A page in OpenAI's cursor-list shape (the SDK pages on with `after=last_id`)."""
    return {
        "object": "list",
        "data": objects,
        "first_id": objects[0]["id"] if objects else None,
        "last_id": objects[-1]["id"] if objects else None,
        "has_more": has_more,
    }
