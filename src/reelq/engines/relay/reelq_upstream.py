"""A server of this same API as the upstream (another reelq, or a reseller of the Vidu surface).

`POST /v1/vidu/videos` with `Authorization: Bearer` and `Idempotency-Key: <our task id>`: a create
sent again after a crash or a lost answer returns the task the upstream already made, so no path
through this module pays for a second generation. `GET /v1/result/{id}` reads its status.
"""

from __future__ import annotations

from typing import Any

import httpx

from reelq.domain import CONTENT_POLICY_PREFIX
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

_STATES = {"queued": QUEUED, "processing": PROCESSING, "completed": COMPLETED, "failed": FAILED}


class ReelqUpstream:
    def __init__(self, options: RelayOptions, model: str, client: httpx.AsyncClient) -> None:
        self.options = options
        self.model = model
        self._client = client
        self._root = options.root

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.options.api_key()}", "Accept": "application/json"}

    async def create(self, request: RelayRequest) -> Created:
        task = request.task
        body: dict[str, Any] = {
            "model": self.options.model_name(self.model),
            "prompt": task.prompt,
            "duration": task.duration,
            "aspect_ratio": task.aspect_ratio,
            "resolution": task.resolution,
        }
        if task.seed is not None:
            body["seed"] = task.seed
        if request.first_image is not None:
            body["first_image"] = request.first_image
        if request.last_image is not None:
            body["last_image"] = request.last_image
        headers = {**self._headers(), "Idempotency-Key": task.id}
        response = await send(
            self._client,
            "POST",
            f"{self._root}/v1/vidu/videos",
            headers=headers,
            json=body,
            timeout=self.options.request_timeout,
            what="the create",
        )
        if response.status_code != 200:
            raise UpstreamRejected(_refusal(response), response.status_code)
        data = json_object(response, "the create")
        upstream_id = data.get("id")
        if not isinstance(upstream_id, str) or not upstream_id:
            raise UpstreamUnavailable("the upstream's answer to the create has no task id")
        return Created(upstream_id=upstream_id)

    async def query(self, upstream_id: str) -> UpstreamStatus:
        response = await send(
            self._client,
            "GET",
            f"{self._root}/v1/result/{upstream_id}",
            headers=self._headers(),
            timeout=self.options.request_timeout,
            what="a status read",
        )
        if response.status_code == 404:
            raise UpstreamLost("the upstream no longer knows the task (HTTP 404)")
        if response.status_code != 200:
            raise UpstreamRejected(_refusal(response), response.status_code)
        data = json_object(response, "a status read")
        status = _STATES.get(str(data.get("status")))
        if status is None:
            raise UpstreamUnavailable("the upstream answered a status read with an unknown status")
        progress = as_int(data.get("progress"))
        if status == COMPLETED:
            url = data.get("video_url")
            if not isinstance(url, str) or not url:
                raise UpstreamUnavailable("the upstream's completed task has no video_url")
            return UpstreamStatus(COMPLETED, video_url=url, credits=as_int(data.get("totalTokens")))
        if status == FAILED:
            return UpstreamStatus(FAILED, error=_failure(data.get("error")))
        return UpstreamStatus(status, progress=progress)

    async def cancel(self, upstream_id: str) -> None:
        response = await send(
            self._client,
            "POST",
            f"{self._root}/v1/vidu/videos/{upstream_id}/cancel",
            headers=self._headers(),
            timeout=self.options.request_timeout,
            what="the cancel",
        )
        if response.status_code == 404:
            raise UpstreamLost("the upstream no longer knows the task (HTTP 404)")
        if response.status_code >= 400:
            raise UpstreamRejected(_refusal(response), response.status_code)


def _failure(error: object) -> str:
    """The upstream's reason, kept recognisable: a content-policy refusal keeps its prefix first."""
    text = short_text(error) if isinstance(error, str) and error.strip() else "no reason given"
    if text.startswith(CONTENT_POLICY_PREFIX):
        return text
    return f"Upstream generation failed: {text}"


def _refusal(response: httpx.Response) -> str:
    """A 4xx create/read answer as one clear line: the upstream's own message when it sent one."""
    message = ""
    try:
        data = response.json()
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            message = str(data["error"].get("message") or "")
    except ValueError:
        pass
    detail = f": {short_text(message)}" if message else ""
    if response.status_code in (401, 403):
        return f"Upstream refused the relay's credentials (HTTP {response.status_code}){detail}"
    return f"Upstream refused the request (HTTP {response.status_code}){detail}"
