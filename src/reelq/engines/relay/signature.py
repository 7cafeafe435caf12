"""The Vidu platform's callback signature (platform.vidu.com/docs/callback-signature), both ways.

The platform signs each state-change callback with HMAC-SHA256 keyed by the API key the task was
created with, over:

    METHOD \\n path \\n query \\n "vidu" \\n Date \\n signed-headers

where path and query are those of the callback URL, and signed-headers is `Name:value\\n` for each
header named (in order) by `X-HMAC-SIGNED-HEADERS` (`Date;x-request-nonce`). The signature is sent
base64-encoded in `X-HMAC-SIGNATURE`, with `X-HMAC-ALGORITHM: hmac-sha256` and
`X-HMAC-ACCESS-KEY: vidu`. The body is not signed; so a verified callback is taken as a hint to read
the task's status from the platform now, never as the status itself.

Pure functions: the API's callback route verifies with them, the tests' fake platform signs.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
from collections.abc import Mapping

ACCESS_KEY = "vidu"
ALGORITHM = "hmac-sha256"
SIGNED_HEADERS = ("Date", "x-request-nonce")
# A callback whose Date is further than this from our clock is refused (a replayed old callback).
MAX_CLOCK_SKEW = 300.0
_MAX_SIGNED_HEADERS = 16


def signing_string(method: str, path: str, query: str, date: str, headers: list[tuple[str, str]]) -> str:
    signed = "".join(f"{name}:{value}\n" for name, value in headers)
    return f"{method.upper()}\n{path or '/'}\n{query}\n{ACCESS_KEY}\n{date}\n{signed}"


def sign(secret: str, method: str, path: str, query: str, date: str, headers: list[tuple[str, str]]) -> str:
    message = signing_string(method, path, query, date, headers).encode("utf-8")
    return base64.b64encode(hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()).decode()


def signed_callback_headers(secret: str, path: str, query: str, date: str, nonce: str) -> dict[str, str]:
    """The headers the platform sends with a POST callback to `path?query` (used by test doubles)."""
    headers = [("Date", date), ("x-request-nonce", nonce)]
    return {
        "Date": date,
        "x-request-nonce": nonce,
        "X-HMAC-SIGNED-HEADERS": ";".join(name for name, _ in headers),
        "X-HMAC-ALGORITHM": ALGORITHM,
        "X-HMAC-ACCESS-KEY": ACCESS_KEY,
        "X-HMAC-SIGNATURE": sign(secret, "POST", path, query, date, headers),
    }


def verify(
    secret: str, method: str, path: str, query: str, headers: Mapping[str, str], now: float
) -> str | None:
    """Why a callback is refused, or None when its signature verifies (header names in any case)."""
    refusal, _sent_at = check(secret, method, path, query, headers, now)
    return refusal


def check(
    secret: str, method: str, path: str, query: str, headers: Mapping[str, str], now: float
) -> tuple[str | None, float]:
    """`verify`, also returning the callback's Date as a timestamp (0.0 when refused before it was read):
    a verified signature is remembered until its Date leaves the clock window (replays)."""
    headers = {name.lower(): value for name, value in headers.items()}
    if headers.get("x-hmac-algorithm", ALGORITHM).lower() != ALGORITHM:
        return "unsupported signature algorithm", 0.0
    if headers.get("x-hmac-access-key", ACCESS_KEY) != ACCESS_KEY:
        return "unknown access key", 0.0
    signature = headers.get("x-hmac-signature")
    date = headers.get("date")
    names_header = headers.get("x-hmac-signed-headers")
    if not signature or not date or not names_header:
        return "missing signature headers", 0.0
    names = [n.strip() for n in names_header.split(";") if n.strip()]
    # Date is always signed (as its own line); the nonce must be too, or a callback could be replayed
    # with a fresh nonce within the clock window.
    lowered = {n.lower() for n in names}
    if len(names) > _MAX_SIGNED_HEADERS or not {"date", "x-request-nonce"} <= lowered:
        return "the signed headers must include Date and x-request-nonce", 0.0
    signed: list[tuple[str, str]] = []
    for name in names:
        value = headers.get(name.lower())
        if value is None:
            return f"signed header {name} is missing", 0.0
        signed.append((name, value))
    try:
        sent_at = email.utils.parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):  # a year past datetime's range overflows
        return "the Date header is not an HTTP date", 0.0
    if abs(now - sent_at) > MAX_CLOCK_SKEW:
        return "the Date header is too far from the current time", sent_at
    expected = sign(secret, method, path, query, date, signed).encode("ascii")
    if not hmac.compare_digest(expected, signature.strip().encode("utf-8", "replace")):
        return "signature mismatch", sent_at
    return None, sent_at
