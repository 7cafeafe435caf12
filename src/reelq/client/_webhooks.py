"""Webhooks on the client side: verify what the server POSTs, and read its record of deliveries."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError as _LibraryError

from reelq.client._errors import APIResponseValidationError, ReelqError


class WebhookVerificationError(ReelqError):
    """The request is not a genuine, fresh webhook from the server (bad or missing signature headers,
    a signature made with another secret, a changed body, or a timestamp more than 5 minutes off)."""


def verify_webhook(
    payload: bytes | str, headers: Mapping[str, str] | httpx.Headers, secret: str
) -> dict[str, Any]:
    """Check a webhook request per the Standard Webhooks spec and return its task object (a dict).

    `payload` is the raw request body (not re-serialised JSON), `headers` its headers (any case),
    `secret` the key's `whsec_…` secret (`reelq keys secret`). Raises WebhookVerificationError.
    Receivers should also deduplicate on the `webhook-id` header: delivery is at least once.
    """
    try:
        data = Webhook(secret).verify(payload, {k: v for k, v in headers.items()})
    except _LibraryError as exc:
        raise WebhookVerificationError(f"Webhook verification failed: {exc}.") from None
    except (ValueError, TypeError) as exc:  # malformed signature header or body the library trips on
        raise WebhookVerificationError(f"Webhook verification failed: malformed request ({exc}).") from None
    if not isinstance(data, dict):
        raise WebhookVerificationError("Webhook verification failed: the body is not a JSON object.")
    return data


@dataclass(frozen=True, slots=True)
class Delivery:
    """One attempt to deliver a webhook, as the server recorded it."""

    webhook_id: str
    event: str
    attempt: int
    created: int
    timestamp: float
    duration_ms: float | None
    status_code: int | None
    error: str | None
    outcome: str  # delivered, retrying or given_up

    @property
    def ok(self) -> bool:
        return self.outcome == "delivered"


def parse_deliveries(response: httpx.Response) -> list[Delivery]:
    try:
        body = response.json()
        return [
            Delivery(
                webhook_id=str(item["webhook_id"]),
                event=str(item["event"]),
                attempt=int(item["attempt"]),
                created=int(item["created"]),
                timestamp=float(item["timestamp"]),
                duration_ms=item.get("duration_ms"),
                status_code=item.get("status_code"),
                error=item.get("error"),
                outcome=str(item["outcome"]),
            )
            for item in body["data"]
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise APIResponseValidationError(
            f"The response is not a list of deliveries: {exc}.",
            status_code=response.status_code,
            code="invalid_response",
            headers=response.headers,
        ) from exc
