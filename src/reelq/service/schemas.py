"""Wire shapes: the create request (validated strictly, errors naming the field) and the task object."""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from collections.abc import Collection, Mapping
from typing import Any, Literal

import anyio
import anyio.to_thread
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from reelq.database import NewTask
from reelq.database.views import TaskView
from reelq.domain import (
    DEFAULT_DURATION,
    MAX_DURATION,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MIN_DURATION,
    ModelLimits,
    has_visible_text,
    wire_number,
)
from reelq.images import DECODE_SLOTS, ImageError, is_data_uri, url_syntax_problem, validate_image_reference
from reelq.service.errors import InvalidRequest
from reelq.service.links import Shown

AspectRatio = Literal["16:9", "9:16", "1:1", "4:3", "3:4"]
Resolution = Literal["540p", "720p", "1080p"]
MAX_URL_CHARS = 2048
# A create has a dozen fields, and unknown ones are ignored; but a body of 50 MB of tiny values
# (`[0,0,…]`, `[{},{},…]`) costs a second and a gigabyte to parse only to be ignored. Commas bound
# the number of values (a 5,000-character prompt holds at most 5,000 of them; base64 holds none).
MAX_JSON_SEPARATORS = 20_000
_SEPARATOR_SCAN_CHUNK = 1 << 20
# Optional fields sent as JSON null mean "not given" (clients built from typed models send them).
NULLABLE_OPTIONAL = (
    "duration",
    "aspect_ratio",
    "resolution",
    "first_image",
    "last_image",
    "seed",
    "callback_url",
    "off_peak",
)


class CreateVideoRequest(BaseModel):
    """POST /v1/vidu/videos. Strict types: "5" is not a duration, true is not a seed."""

    model_config = ConfigDict(strict=True, extra="ignore")

    model: str = Field(
        min_length=1, max_length=100, description="viduq3-pro or viduq3-turbo (or an operator-mapped name)"
    )
    prompt: str = Field(
        description="1..5000 characters after trimming; no NUL",
        json_schema_extra={"minLength": 1, "pattern": r"\S"},
    )
    duration: int = Field(DEFAULT_DURATION, ge=MIN_DURATION, le=MAX_DURATION, description="seconds")
    aspect_ratio: AspectRatio = "16:9"
    resolution: Resolution = "720p"
    first_image: str | None = Field(None, description="http(s) URL or data:image/(png|jpeg|webp);base64,…")
    last_image: str | None = Field(None, description="only together with first_image")
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    callback_url: str | None = Field(None, max_length=MAX_URL_CHARS)
    off_peak: bool = Field(False, description="SPEC §6: run only while nothing else waits, at a lower price")

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        value = value.strip()
        if not value:
            raise ValueError("must not be empty")
        # Zero-width characters, lone combining marks and the like survive strip(), yet show nothing.
        if not has_visible_text(value):
            raise ValueError("must contain at least one visible character")
        if len(value) > MAX_PROMPT_CHARS:
            raise ValueError(f"must be at most {MAX_PROMPT_CHARS} characters (got {len(value)})")
        return value

    @field_validator("callback_url")
    @classmethod
    def _callback(cls, value: str | None) -> str | None:
        # The syntax rules of an image URL (http(s), a host, <= 2048 characters, no credentials, no
        # whitespace or control characters). Where the host resolves to is judged at delivery, on every
        # attempt, as for image URLs at fetch time: DNS may change between create and delivery.
        if value is not None:
            problem = url_syntax_problem(value)
            if problem is not None:
                raise ValueError(problem)
        return value


def _first_error(exc: ValidationError) -> InvalidRequest:
    error = exc.errors(include_url=False)[0]
    loc = error.get("loc") or ()
    param = str(loc[0]) if loc else None
    message = str(error.get("msg", "invalid value"))
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if error.get("type") == "missing":
        return InvalidRequest(
            f"Missing required field '{param}'.",
            param=param,
            code="missing_field",
            named=lambda name: f"Missing required field '{name}'.",
        )
    return InvalidRequest(
        f"Invalid value for '{param}': {message}.",
        param=param,
        named=lambda name: f"Invalid value for '{name}': {message}.",
    )


def _too_many_values(body: bytes) -> bool:
    """Whether the body separates more values than any create could need, counted a chunk at a time
    so that a hostile body is refused after its first megabyte."""
    count = 0
    for start in range(0, len(body), _SEPARATOR_SCAN_CHUNK):
        count += body.count(b",", start, start + _SEPARATOR_SCAN_CHUNK)
        if count > MAX_JSON_SEPARATORS:
            return True
    return False


def parse_json_object(body: bytes, content_type: str | None) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 explaining what is wrong with it."""
    if content_type:
        media = content_type.split(";", 1)[0].strip().lower()
        if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
            raise InvalidRequest(
                f"Content-Type must be application/json (got {media or 'nothing'}).",
                code="invalid_content_type",
            )
    if not body or body.isspace():  # not `strip()`: that copies a 50 MB body to look at its ends
        raise InvalidRequest("The request body is empty; expected a JSON object.", code="invalid_json")
    if _too_many_values(body):
        raise InvalidRequest(
            f"The request body holds too many JSON values (over {MAX_JSON_SEPARATORS} separators); "
            "a create needs a dozen.",
            code="invalid_json",
        )
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return data


def validate_create(data: dict[str, Any], models: Mapping[str, ModelLimits] | Collection[str]) -> NewTask:
    """Validate a create body fully (images included) and return what to store.

    `models` are the served models with what each can be asked for (a bare collection of names: no
    model limits anything)."""
    cleaned = {k: v for k, v in data.items() if not (k in NULLABLE_OPTIONAL and v is None)}
    try:
        req = CreateVideoRequest.model_validate(cleaned)
    except ValidationError as exc:
        raise _first_error(exc) from None
    if req.model not in models:
        raise InvalidRequest(
            f"Unknown model '{req.model}'; available: {', '.join(models)}.",
            param="model",
            code="invalid_model",
        )
    if req.last_image is not None and req.first_image is None:
        raise InvalidRequest("last_image requires first_image.", param="last_image")
    limits = models.get(req.model) if isinstance(models, Mapping) else None
    refusal = limits and limits.refusal(
        req.model, req.duration, req.first_image is not None, req.last_image is not None
    )
    if refusal:
        param, naming = refusal
        raise InvalidRequest(naming(param), param=param, code="unsupported_by_model", named=naming)
    for name in IMAGE_FIELDS:
        value = getattr(req, name)
        if value is not None:
            try:
                validate_image_reference(value, name)
            except ImageError as exc:

                def named(field: str, why: str = exc.reason) -> str:
                    return f"{field} {why}"

                raise InvalidRequest(str(exc), param=name, code="invalid_image", named=named) from None
    return NewTask(
        model=req.model,
        prompt=req.prompt,
        duration=req.duration,
        aspect_ratio=req.aspect_ratio,
        resolution=req.resolution,
        seed=req.seed,
        first_image=req.first_image,
        last_image=req.last_image,
        callback_url=req.callback_url,
        off_peak=req.off_peak,
    )


IMAGE_FIELDS = ("first_image", "last_image")
# Threads for creates with a data-URI image, per event loop: as many as images/ decodes at once, so a
# create waiting for its turn waits on the event loop, holding no thread of the pool that everyone's
# authentication and reads share.
_image_threads: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = (
    weakref.WeakKeyDictionary()
)


async def validate_create_off_loop(
    data: dict[str, Any], models: Mapping[str, ModelLimits] | Collection[str]
) -> NewTask:
    """`validate_create` without holding up the event loop: inline when no image is a data URI (the
    checks are then syntax only, bounded by the sizes of the fields), in a thread otherwise (decoding an
    image, even base64 of 20 MB, scales with the input)."""
    if not any(is_data_uri(data.get(name)) for name in IMAGE_FIELDS):
        return validate_create(data, models)
    loop = asyncio.get_running_loop()
    limiter = _image_threads.get(loop)
    if limiter is None:
        limiter = _image_threads[loop] = anyio.CapacityLimiter(DECODE_SLOTS)
    return await anyio.to_thread.run_sync(validate_create, data, models, limiter=limiter)


def request_fingerprint(new: NewTask) -> str:
    """What "the same body" means for Idempotency-Key: the validated request, not its bytes."""
    payload = orjson.dumps(
        [
            new.model,
            new.prompt,
            new.duration,
            new.aspect_ratio,
            new.resolution,
            new.seed,
            new.first_image,
            new.last_image,
            new.callback_url,
            *([True] if new.off_peak else []),  # fingerprints of earlier tasks stay the same
        ]
    )
    return hashlib.sha256(payload).hexdigest()


def task_object(view: TaskView, shown: Shown) -> dict[str, Any]:
    """The SPEC §1 task object, keys in the Vidu order, plus the `progress` extension; `shown` is
    what the task shows (service/links.py), its video link included once completed."""
    completed = shown.completed
    obj: dict[str, Any] = {
        "id": view.id,
        "object": "Video",
        "created": int(view.created_at),
        "model": view.model,
        "status": shown.status,
        "video_url": shown.video_url if completed else None,
    }
    if completed and view.actual_duration is not None:
        obj["actualDuration"] = wire_number(view.actual_duration)
    obj["totalTokens"] = view.total_tokens if completed else None
    obj["error"] = view.error if shown.failed else None
    obj["progress"] = shown.progress
    return obj
