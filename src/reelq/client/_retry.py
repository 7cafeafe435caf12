"""When and how long to wait before trying a request again: pure functions, no I/O."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

# 409 is missing on purpose: here it means "this Idempotency-Key was used with another body", which no
# retry can fix (openai-python retries 409 because its 409s are lock contention).
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

# A server may ask for any pause; past a minute the caller is better served by an error it can act on
# (the overall deadline of `wait` bounds it anyway).
MAX_RETRY_AFTER = 60.0

BACKOFF_BASE = 0.5
BACKOFF_CAP = 8.0


def parse_retry_after(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds the server asked us to wait: `retry-after-ms`, else `Retry-After` in seconds or as an
    HTTP date; capped at MAX_RETRY_AFTER. None when absent or unreadable."""
    seconds: float | None = None
    if (ms := headers.get("retry-after-ms")) is not None:
        seconds = _number(ms, scale=1000)
    if seconds is None and (value := headers.get("retry-after")) is not None:
        seconds = _number(value) if value.strip().replace(".", "", 1).isdigit() else _http_date(value, now)
    return None if seconds is None else min(seconds, MAX_RETRY_AFTER)


def backoff_delay(attempt: int, rng: Callable[[], float] = random.random) -> float:
    """Exponential backoff for retry number `attempt` (0-based), with up to 25 % jitter taken off so
    that many clients failing together do not come back together."""
    base = min(BACKOFF_BASE * 2.0 ** min(attempt, 32), BACKOFF_CAP)
    return base * (1 - 0.25 * rng())


def _number(text: str, scale: float = 1.0) -> float | None:
    try:
        value = float(text) / scale
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _http_date(text: str, now: datetime | None) -> float | None:
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive one would not compare
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
