"""A server of the OpenAI Videos shape as the upstream (SPEC §7 `upstream = "openai"`).

SGLang Diffusion, vLLM-Omni, FastVideo, a LiteLLM proxy or another reelq: `POST /v1/videos` (JSON,
or multipart with the first image as the `input_reference` file), `GET /v1/videos/{id}`,
`GET /v1/videos/{id}/content` (the video, behind the same key) and, where the server has it,
`DELETE /v1/videos/{id}`. Our duration goes as `seconds`, our ratio and resolution as `size`
(`"1280x720"`, the frame size we would encode). States `queued` and `in_progress` wait;
`completed` is downloaded from `/content`; `failed` fails the task in our words.

Such servers keep their jobs in memory: a restart forgets them (404 for an id they accepted). The
relay worker then creates the task again, at most `max_resubmits` times. They have no idempotency
key either, so a create whose answer never came is not sent again (`ambiguous_create`).

Every HTTP call goes through `_call`, one place to bound it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from reelq.domain import CONTENT_POLICY_PREFIX, frame_size
from reelq.engines.relay.bounded import Answer
from reelq.engines.relay.options import RelayOptions
from reelq.engines.relay.upstream import (
    COMPLETED,
    FAILED,
    PROCESSING,
    QUEUED,
    Created,
    RelayRequest,
    UpstreamLost,
    UpstreamRejected,
    UpstreamStatus,
    UpstreamUnavailable,
    as_int,
    json_object,
    send,
    short_text,
)
from reelq.fetch import fetch_bytes
from reelq.images import is_data_uri, parse_data_uri

_STATES = {"queued": QUEUED, "in_progress": PROCESSING, "completed": COMPLETED, "failed": FAILED}
# OpenAI's (and reelq's) codes for a refusal on content grounds: kept recognisable for our clients.
_POLICY_CODES = frozenset({"content_policy_violation", "moderation_blocked", "content_filter"})
_IMAGE_TYPES = {b"\x89PNG": ("png", "image/png"), b"\xff\xd8\xff": ("jpg", "image/jpeg")}


class OpenAIUpstream:
    # REELQ_ALLOW_PRIVATE_URLS, for fetching a first image given by URL (the worker sets it).
    allow_private = False

    def __init__(self, options: RelayOptions, model: str, client: httpx.AsyncClient) -> None:
        self.options = options
        self.model = model
        self._client = client
        self._root = options.root

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.options.api_key()}", "Accept": "application/json"}

    async def _call(self, method: str, path: str, what: str, **kwargs: Any) -> Answer:
        """Every request to this upstream (create, read, cancel): one place for its bounds."""
        return await send(
            self._client,
            method,
            f"{self._root}{path}",
            headers=self._headers(),
            timeout=self.options.request_timeout,
            what=what,
            **kwargs,
        )

    async def create(self, request: RelayRequest) -> Created:
        task = request.task
        width, height = frame_size(task.resolution, task.aspect_ratio)
        fields: dict[str, Any] = {
            "model": self.options.model_name(self.model),
            "prompt": task.prompt,
            "seconds": str(task.duration),  # OpenAI's type; SGLang and vLLM-Omni read it as a number
            "size": f"{width}x{height}",
        }
        if task.seed is not None:
            fields["seed"] = task.seed
        if request.first_image is None:
            response = await self._call("POST", "/v1/videos", "the create", json=fields)
        else:
            name, mime, data = await _image_file(request.first_image, self.allow_private)
            form = {k: str(v) for k, v in fields.items()}
            files = {"input_reference": (name, data, mime)}
            response = await self._call("POST", "/v1/videos", "the create", data=form, files=files)
        if response.status_code not in (200, 201, 202):
            raise _refusal(response)
        data_ = json_object(response, "the create")
        upstream_id = data_.get("id")
        if not isinstance(upstream_id, str) or not upstream_id:
            raise UpstreamUnavailable("the upstream's answer to the create has no video id")
        return Created(upstream_id=upstream_id)

    async def query(self, upstream_id: str) -> UpstreamStatus:
        response = await self._call("GET", f"/v1/videos/{upstream_id}", "a status read")
        if response.status_code == 404:
            raise UpstreamLost("the upstream no longer knows the task (HTTP 404)")
        if response.status_code != 200:
            raise _refusal(response)
        return parse_video(json_object(response, "a status read"), self._root, upstream_id, self._headers())

    async def served_models(self) -> list[str] | None:
        """The model ids `GET /v1/models` lists (vLLM-Omni, LiteLLM, reelq), or None where the server
        has no such list (SGLang Diffusion serves one model and lists none there)."""
        return await listed_models(self._call)

    async def cancel(self, upstream_id: str) -> None:
        """`DELETE /v1/videos/{id}`: stops or forgets the job where the server supports it (SGLang
        Diffusion forgets it; a server without the route answers 404/405, which is no error here)."""
        response = await self._call("DELETE", f"/v1/videos/{upstream_id}", "the cancel")
        if response.status_code in (404, 405):
            raise UpstreamLost(f"the upstream cannot cancel the task (HTTP {response.status_code})")
        if response.status_code >= 400:
            raise _refusal(response)


async def listed_models(call: Any) -> list[str] | None:
    """`GET /v1/models` in the OpenAI list shape through `call` (an upstream's request function);
    None when the server has no such list or cannot say now."""
    try:
        response = await call("GET", "/v1/models", "the model list")
    except UpstreamUnavailable:
        return None
    if response.status_code != 200:
        return None
    try:
        data = response.json()
    except ValueError:
        return None
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return None
    return [str(item["id"]) for item in items if isinstance(item, dict) and "id" in item]


def parse_video(data: dict[str, Any], root: str, upstream_id: str, headers: dict[str, str]) -> UpstreamStatus:
    """An OpenAI `video` object as our status."""
    status = _STATES.get(str(data.get("status")))
    if status is None:
        raise UpstreamUnavailable("the upstream answered a status read with an unknown status")
    if status == COMPLETED:
        return UpstreamStatus(
            COMPLETED,
            video_url=f"{root}/v1/videos/{upstream_id}/content",
            video_headers={"Authorization": headers["Authorization"]},
        )
    if status == FAILED:
        error = data.get("error")
        code = message = ""
        if isinstance(error, dict):
            code, message = str(error.get("code") or ""), str(error.get("message") or "")
        elif isinstance(error, str):
            message = error
        detail = short_text(f"{code}: {message}" if code else message) or None
        if code in _POLICY_CODES or message.startswith(CONTENT_POLICY_PREFIX):
            refused = f"{CONTENT_POLICY_PREFIX} the upstream's content policy refused it."
            return UpstreamStatus(FAILED, error=refused, detail=detail)
        return UpstreamStatus(FAILED, error="Upstream generation failed.", detail=detail)
    return UpstreamStatus(status, progress=as_int(data.get("progress")))


def _refusal(response: Answer) -> UpstreamRejected:
    """A 4xx answer: our words for the client; the upstream's text (OpenAI's `error.message` or
    FastAPI's `detail`) as the detail for the log."""
    message = ""
    try:
        data = response.json()
        if isinstance(data, dict):
            error = data.get("error")
            said = error.get("message") if isinstance(error, dict) else data.get("detail")
            message = str(said or "")
    except ValueError:
        pass
    status = response.status_code
    detail = f"HTTP {status}: {short_text(message)}" if message else f"HTTP {status}"
    if status in (401, 403):
        return UpstreamRejected(f"Upstream refused the relay's credentials (HTTP {status}).", status, detail)
    return UpstreamRejected(f"Upstream refused the request (HTTP {status}).", status, detail)


async def _image_file(value: str, allow_private: bool) -> tuple[str, str, bytes]:
    """The first image as an upload: a data URI's bytes, or the bytes behind a URL the create took
    (fetched like a render worker fetches it: SSRF-guarded and bounded)."""
    if is_data_uri(value):
        data = parse_data_uri(value, "first_image")
    else:
        data = await asyncio.to_thread(fetch_bytes, value, field="first_image", allow_private=allow_private)
    for magic, (ext, mime) in _IMAGE_TYPES.items():
        if data.startswith(magic):
            return f"first_image.{ext}", mime, data
    return "first_image.webp", "image/webp", data

