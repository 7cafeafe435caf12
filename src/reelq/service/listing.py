"""The list of a key's tasks (`GET /v1/vidu/videos`): its query parameters and its opaque cursor.

A page is the key's tasks newest first; the cursor is the position of the page's last task
(its creation time and id), base64url-encoded JSON, so the next page starts right after it
whatever was created or deleted meanwhile. Clients must treat it as opaque. Anything that does
not decode to such a position is a 400 naming `cursor`, never a 5xx.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass

import orjson

from reelq.domain import Status, is_task_id, parse_ascii_int
from reelq.service.errors import InvalidRequest

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_CURSOR_CHARS = 200
STATUSES = tuple(s.value for s in Status)


@dataclass(frozen=True, slots=True)
class ListQuery:
    limit: int
    before: tuple[float, str] | None
    status: str | None


def parse_list_query(limit: str | None, cursor: str | None, status: str | None) -> ListQuery:
    """The list's parameters from their raw query-string values; InvalidRequest naming the bad one."""
    return ListQuery(_limit(limit), decode_cursor(cursor) if cursor else None, _status(status))


def _limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    limit = parse_ascii_int(value) or 0  # ASCII digits only, as on every surface
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be an integer from 1 to {MAX_LIMIT}.", param="limit")
    return limit


def _status(value: str | None) -> str | None:
    if value is None:
        return None
    if value not in STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}.", param="status")
    return value


def encode_cursor(created_at: float, task_id: str) -> str:
    raw = orjson.dumps([created_at, task_id])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The position a cursor names; InvalidRequest for anything this server did not make."""
    try:
        if len(cursor) > MAX_CURSOR_CHARS or not cursor.isascii():
            raise ValueError
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, task_id = orjson.loads(raw)
        if isinstance(created, bool) or not isinstance(created, int | float) or not math.isfinite(created):
            raise ValueError
        if not isinstance(task_id, str) or not is_task_id(task_id):
            raise ValueError
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise InvalidRequest(
            "cursor is not a cursor this server returned (use `next_cursor` as it is).",
            param="cursor",
            code="invalid_cursor",
        ) from None
    return float(created), task_id
