"""The Vidu platform as the upstream (platform.vidu.com/docs).

Create by image count: none -> `POST /ent/v2/text2video`, one -> `/ent/v2/img2video`, two ->
`/ent/v2/start-end2video` (our first_image/last_image become `images`), with `Authorization: Token`.
Status: `GET /ent/v2/tasks/{id}/creations`; cancel: `POST /ent/v2/tasks/{id}/cancel`.
States `created`/`queueing` -> queued, `processing` -> processing, `success` -> completed with
`creations[0].url`, `failed` -> failed with `err_code` as a clear message.

The platform has no idempotency key: see `RelayOptions.ambiguous_create` and docs/relay.md
for the one window left (a crash between its answer and our write of the task id).
"""

from __future__ import annotations

from typing import Any

import httpx

from reelq.domain import CANCELLED_ERROR, CONTENT_POLICY_PREFIX
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

_STATES = {
    "created": QUEUED,
    "queueing": QUEUED,
    "processing": PROCESSING,
    "success": COMPLETED,
    "failed": FAILED,
}

# err_code (platform.vidu.com/docs/error-code) -> what our client reads. Content-policy refusals begin
# with CONTENT_POLICY_PREFIX, exactly like our own, so clients recognise them whoever refused.
_POLICY = {
    "AuditSubmitIllegal": "the input did not pass the upstream's safety review",
    "TaskPromptPolicyViolation": "the prompt was refused by the upstream's content policy",
    "CreationPolicyViolation": "the generated video was refused by the upstream's content policy",
}
_REASONS = {
    "ImageDownloadFailure": "the upstream could not download an input image",
    "ImageFormatInvalid": "the upstream refused an input image's format",
    "PageSizeOutOfRange": "the upstream refused an input image's size or aspect ratio",
    "ImageCheckBodyJointsFailed": "the upstream found no person in the input image",
    "ImageCheckFaceFailed": "the upstream found no face in the input image",
    "ImageObjectsUndetected": "the person or face in the input image is too occluded for the upstream",
    "CreditInsufficient": "the upstream account has insufficient credits",
    "ModelUnavailable": "the upstream model is unavailable",
    "FieldInvalid": "the upstream refused a parameter",
    "FieldLacking": "the upstream found a required parameter missing",
    "BadRequest": "the upstream refused the request",
    "InternalServiceFailure": "the upstream failed internally",
}


def failure_message(err_code: str | None) -> str:
    """A failed task's error from the platform's err_code."""
    code = (err_code or "").strip()
    if code == "UserCancelled":
        return CANCELLED_ERROR
    if code in _POLICY:
        return f"{CONTENT_POLICY_PREFIX} {_POLICY[code]} ({code})."
    if code in _REASONS:
        return f"Upstream generation failed: {_REASONS[code]} ({code})."
    if code:
        return f"Upstream generation failed ({short_text(code, 80)})."
    return "Upstream generation failed (no reason given)."


class ViduUpstream:
    def __init__(self, options: RelayOptions, model: str, client: httpx.AsyncClient) -> None:
        self.options = options
        self.model = model
        self._client = client
        self._root = options.root

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.options.api_key()}", "Accept": "application/json"}

    async def create(self, request: RelayRequest) -> Created:
        task = request.task
        images = [i for i in (request.first_image, request.last_image) if i is not None]
        route = {0: "text2video", 1: "img2video", 2: "start-end2video"}[len(images)]
        body: dict[str, Any] = {
            "model": self.options.model_name(self.model),
            "prompt": task.prompt,
            "duration": task.duration,
            "aspect_ratio": task.aspect_ratio,
            "resolution": task.resolution,
            # Passed through untouched by the platform: lets an operator match its tasks to ours.
            "payload": task.id,
        }
        if images:
            body["images"] = images
        if task.seed is not None:
            body["seed"] = task.seed
        if task.off_peak:  # the platform's own off-peak mode (SPEC §6): cheaper upstream too
            body["off_peak"] = True
        if request.callback_url is not None:
            body["callback_url"] = request.callback_url
        response = await send(
            self._client,
            "POST",
            f"{self._root}/ent/v2/{route}",
            headers=self._headers(),
            json=body,
            timeout=self.options.request_timeout,
            what="the create",
        )
        if response.status_code != 200:
            raise _refusal(response)
        data = json_object(response, "the create")
        upstream_id = data.get("task_id")
        if isinstance(upstream_id, int) and not isinstance(upstream_id, bool):
            upstream_id = str(upstream_id)
        if not isinstance(upstream_id, str) or not upstream_id:
            raise UpstreamUnavailable("the upstream's answer to the create has no task_id")
        return Created(upstream_id=upstream_id, credits=as_int(data.get("credits")))

    async def query(self, upstream_id: str) -> UpstreamStatus:
        response = await send(
            self._client,
            "GET",
            f"{self._root}/ent/v2/tasks/{upstream_id}/creations",
            headers=self._headers(),
            timeout=self.options.request_timeout,
            what="a status read",
        )
        if response.status_code == 404:
            raise UpstreamLost("the upstream no longer knows the task (HTTP 404)")
        if response.status_code != 200:
            raise _refusal(response)
        return parse_status(json_object(response, "a status read"))

    async def cancel(self, upstream_id: str) -> None:
        response = await send(
            self._client,
            "POST",
            f"{self._root}/ent/v2/tasks/{upstream_id}/cancel",
            headers=self._headers(),
            json={"id": upstream_id},
            timeout=self.options.request_timeout,
            what="the cancel",
        )
        if response.status_code == 404:
            raise UpstreamLost("the upstream no longer knows the task (HTTP 404)")
        if response.status_code >= 400:
            raise _refusal(response)


def parse_status(data: dict[str, Any]) -> UpstreamStatus:
    """A `creations` answer (or a callback body, which has the same shape) as our status."""
    status = _STATES.get(str(data.get("state")))
    if status is None:
        raise UpstreamUnavailable("the upstream answered a status read with an unknown state")
    credits = as_int(data.get("credits"))
    if status == COMPLETED:
        creations = data.get("creations")
        first = creations[0] if isinstance(creations, list) and creations else None
        url = first.get("url") if isinstance(first, dict) else None
        if not isinstance(url, str) or not url:
            raise UpstreamUnavailable("the upstream's successful task has no creations[0].url")
        return UpstreamStatus(COMPLETED, video_url=url, credits=credits)
    if status == FAILED:
        code = data.get("err_code")
        return UpstreamStatus(FAILED, error=failure_message(code if isinstance(code, str) else None))
    return UpstreamStatus(status, credits=credits)


# A 400 that means "busy, retry later" (platform.vidu.com/docs/error-code): wait, never fail the task.
_RETRY_LATER = frozenset({"OperationInProcess"})


def _refusal(response: Answer) -> UpstreamRejected | UpstreamUnavailable:
    """A 4xx answer as one clear line of our words, naming the platform's documented error code; its
    message (free text) goes to the log as the detail, never to the client."""
    code = reason = ""
    try:
        data = response.json()
        if isinstance(data, dict):
            code = str(data.get("err_code") or data.get("reason") or data.get("code") or "")
            reason = str(data.get("message") or "")
    except ValueError:
        pass
    status = response.status_code
    log_detail = f"HTTP {status} {code}: {short_text(reason)}" if reason else f"HTTP {status} {code}"
    if code in _RETRY_LATER:
        return UpstreamUnavailable(f"the upstream is busy ({code})", busy=True)
    if code in _POLICY:
        return UpstreamRejected(f"{CONTENT_POLICY_PREFIX} {_POLICY[code]} ({code}).", status, log_detail)
    named = f" {short_text(code, 80)}" if code.isidentifier() else ""
    if status in (401, 403):
        words = f"Upstream refused the relay's credentials (HTTP {status}{named})."
        return UpstreamRejected(words, status, log_detail)
    return UpstreamRejected(f"Upstream refused the request (HTTP {status}{named}).", status, log_detail)
