"""A server of this same API as the upstream (another reelq, or a reseller of the Vidu surface).

`POST /v1/vidu/videos` with `Authorization: Bearer` and `Idempotency-Key: <our task id>`: a create
sent again after a crash or a lost answer returns the task the upstream already made, so no path
through this module pays for a second generation. `GET /v1/result/{id}?wait=N` reads its status by
long-poll: the answer comes the moment the task ends, with no 1 s polling lag and one read per wait.
"""

from __future__ import annotations

from typing import Any

import httpx

from reelq.domain import CONTENT_POLICY_PREFIX
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

_STATES = {"queued": QUEUED, "processing": PROCESSING, "completed": COMPLETED, "failed": FAILED}


class ReelqUpstream:
    long_poll = True  # the worker waits with `query(id, wait=N)` instead of sleeping between reads

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
        if task.off_peak:  # SPEC §6: the upstream reelq runs it off-peak too
            body["off_peak"] = True
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
            raise _refusal(response)
        data = json_object(response, "the create")
        upstream_id = data.get("id")
        if not isinstance(upstream_id, str) or not upstream_id:
            raise UpstreamUnavailable("the upstream's answer to the create has no task id")
        return Created(upstream_id=upstream_id)

    async def query(self, upstream_id: str, wait: float = 0.0) -> UpstreamStatus:
        held = int(max(0.0, min(wait, 60.0)))  # the API's long-poll bound (SPEC §3)
        response = await send(
            self._client,
            "GET",
            f"{self._root}/v1/result/{upstream_id}" + (f"?wait={held}" if held else ""),
            headers=self._headers(),
            timeout=self.options.request_timeout + held,
            what="a status read",
        )
        if response.status_code == 404:
            raise UpstreamLost("the upstream no longer knows the task (HTTP 404)")
        if response.status_code != 200:
            raise _refusal(response)
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
            reason = data.get("error")
            return UpstreamStatus(
                FAILED, error=_failure(reason), detail=reason if isinstance(reason, str) else None
            )
        return UpstreamStatus(status, progress=progress)

    async def served_models(self) -> list[str] | None:
        """The models `GET /v1/models` lists (SPEC §7), or None from a server without it."""
        from reelq.engines.relay.openai_upstream import listed_models

        async def call(method: str, path: str, what: str) -> Answer:
            return await send(
                self._client,
                method,
                f"{self._root}{path}",
                headers=self._headers(),
                timeout=self.options.request_timeout,
                what=what,
            )

        return await listed_models(call)

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
            raise _refusal(response)


def _failure(error: object) -> str:
    """Our words for an upstream failure: a content-policy refusal keeps its words (the client must
    recognise it, and it is this API's own wording); anything else is the upstream's internals, which
    the relay worker logs (`UpstreamStatus.detail`) and the client never sees."""
    text = short_text(error) if isinstance(error, str) and error.strip() else ""
    if text.startswith(CONTENT_POLICY_PREFIX):
        return text
    return "Upstream generation failed."


def _refusal(response: Answer) -> UpstreamRejected:
    """A 4xx answer: our words for the client, the upstream's message as the detail for the log."""
    message = ""
    try:
        data = response.json()
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            message = str(data["error"].get("message") or "")
    except ValueError:
        pass
    status = response.status_code
    detail = f"HTTP {status}: {short_text(message)}" if message else f"HTTP {status}"
    if status in (401, 403):
        return UpstreamRejected(f"Upstream refused the relay's credentials (HTTP {status}).", status, detail)
    return UpstreamRejected(f"Upstream refused the request (HTTP {status}).", status, detail)
