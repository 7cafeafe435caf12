"""Standard Webhooks signatures (https://www.standardwebhooks.com), made with the reference library.

`webhook-signature: v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">`, keyed with the
bytes of the API key's secret `whsec_<base64>`. The id stays the same across retries of one event (a
receiver deduplicates on it); the timestamp is the attempt's, so receivers can refuse stale replays.
"""

from __future__ import annotations

from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

USER_AGENT = "reelq-webhooks/1"


def signed_headers(secret: str, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one delivery attempt of `body`."""
    signature = Webhook(secret).sign(webhook_id, datetime.fromtimestamp(timestamp, tz=UTC), body.decode())
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }
