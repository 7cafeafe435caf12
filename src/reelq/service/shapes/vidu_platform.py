"""The Vidu platform's own API shapes (platform.vidu.com/docs), mapped onto the task surface.

api/vidu_platform.py is the transport. The shapes are the ones our relay engine speaks to the
real platform (engines/relay/vidu_upstream.py), seen from the other side:

- create: `POST /ent/v2/text2video` (no `images`), `/img2video` (`images`: one), `/start-end2video`
  (`images`: two, first and last frame); fields `model prompt duration seed aspect_ratio resolution
  callback_url payload off_peak` (off_peak: SPEC §6), others of the platform (`style movement_amplitude
  bgm audio`) accepted and ignored. Answer: `{task_id, state: "created", model, prompt, images,
  duration, seed, aspect_ratio, resolution, payload, credits, created_at}`.
- `GET /ent/v2/tasks/{id}/creations`: `{id, state, err_code, credits, payload, progress,
  creations: [{id, url, cover_url}]}`; states `created` (the create's own answer), `queueing`,
  `processing`, `success`, `failed`.
- errors: the HTTP status with `{"reason": <err code>, "message": <sentence>, "param": <field>}`.

`credits` are our tokens: the expected charge (rate x duration x resolution factor) until the task
completes, then what was charged; 0 for a failed task (nothing is charged).
"""

from __future__ import annotations

from typing import Any

import orjson

from reelq.database.views import TaskView
from reelq.domain import CANCELLED_ERROR, CONTENT_POLICY_PREFIX, Status, total_tokens
from reelq.service.errors import ApiError, InvalidRequest
from reelq.service.links import Shown

ROUTES = {"text2video": 0, "img2video": 1, "start-end2video": 2}
_FIELDS = ("model", "prompt", "duration", "seed", "aspect_ratio", "resolution", "callback_url", "off_peak")
_STATE = {
    Status.QUEUED.value: "queueing",
    Status.PROCESSING.value: "processing",
    Status.COMPLETED.value: "success",
    Status.FAILED.value: "failed",
}
# HTTP status -> the platform's error code (its `reason`).
_REASON = {
    400: "FieldInvalid",
    401: "Unauthorized",
    403: "Forbidden",
    404: "TaskNotFound",
    409: "TaskStateConflict",
    413: "RequestEntityTooLarge",
    429: "TooManyRequests",
    503: "ServiceUnavailable",
}


def error_body(exc: ApiError) -> bytes:
    reason = _REASON.get(exc.status, "InternalServiceFailure")
    if exc.code == "missing_field":
        reason = "FieldLacking"
    elif exc.code == "invalid_image":
        reason = "ImageFormatInvalid"
    elif exc.code == "images_count":
        reason = "FieldItemCountOutOfRange"
    param = param_name(exc.param)  # our first_image/last_image are its `images`
    return orjson.dumps({"reason": reason, "message": exc.message_for(param), "param": param})


def create_fields(route: str, body: dict[str, Any]) -> dict[str, Any]:
    """A platform create body on `route` as the Vidu reseller create fields."""
    wanted = ROUTES[route]
    images = body.get("images")
    if wanted == 0:
        if images:
            raise InvalidRequest(
                "text2video takes no images; use img2video or start-end2video.",
                param="images",
                code="images_count",
            )
        images = []
    elif images is None:
        raise InvalidRequest(
            f"Missing required field 'images' ({route} takes {wanted}).", param="images", code="missing_field"
        )
    if not isinstance(images, list) or len(images) != wanted:
        raise InvalidRequest(
            f"'images' must be a list of exactly {wanted} image{'s' if wanted > 1 else ''} on {route}.",
            param="images",
            code="images_count",
        )
    if body.get("prompt") is None:
        raise InvalidRequest("Missing required field 'prompt'.", param="prompt", code="missing_field")
    if body.get("model") is None:
        raise InvalidRequest("Missing required field 'model'.", param="model", code="missing_field")
    data = {name: body[name] for name in _FIELDS if body.get(name) is not None}
    if images:
        data["first_image"] = images[0]
    if len(images) == 2:
        data["last_image"] = images[1]
    return data


def param_name(param: str | None) -> str | None:
    """Our field name in an error -> the platform's (`first_image`/`last_image` are `images`)."""
    return "images" if param in ("first_image", "last_image") else param


def err_code(error: str | None) -> str:
    if error is None:
        return ""
    if error == CANCELLED_ERROR:
        return "UserCancelled"
    if error.startswith(CONTENT_POLICY_PREFIX):
        return "TaskPromptPolicyViolation"
    return "InternalServiceFailure"


def credits(view: TaskView, shown: Shown, rates: dict[str, float], factors: dict[str, float]) -> int:
    if shown.completed:
        return int(view.total_tokens or 0)
    if shown.failed or view.model not in rates or view.resolution not in factors:
        return 0
    return total_tokens(view.model, view.duration, view.resolution, rates, factors)


def create_answer(
    view: TaskView, data: dict[str, Any], payload: Any, credit: int, images: list[Any]
) -> dict[str, Any]:
    """The create's answer: the task id, `state: "created"`, and the request echoed."""
    return {
        "task_id": view.id,
        "state": "created",
        "model": view.model,
        "prompt": data.get("prompt"),
        "images": images,
        "duration": view.duration,
        "seed": data.get("seed"),
        "aspect_ratio": view.aspect_ratio,
        "resolution": view.resolution,
        "payload": payload if isinstance(payload, str) else "",
        "credits": credit,
        "created_at": _iso(view.created_at),
    }


def creations_answer(view: TaskView, shown: Shown, credit: int) -> dict[str, Any]:
    """`GET /ent/v2/tasks/{id}/creations`; `shown` is what the task shows, with its links
    (TaskService.shown with a base URL)."""
    creations = []
    if shown.completed and shown.video_url is not None:
        creations = [{"id": f"{view.id}-0", "url": shown.video_url, "cover_url": shown.cover_url or ""}]
    return {
        "id": view.id,
        "state": _STATE[shown.status],
        "err_code": err_code(view.error) if shown.failed else "",
        "err_msg": view.error if shown.failed else "",  # reelq extension: the reason in words
        "credits": credit,
        "payload": "",
        "progress": shown.progress,
        "creations": creations,
    }


def _iso(timestamp: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
