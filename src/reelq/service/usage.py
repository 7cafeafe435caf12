"""`GET /v1/usage`'s answer (SPEC §1 "Tokens"): what a key has been charged, per UTC day and model."""

from __future__ import annotations

import datetime as dt
from typing import Any

from reelq.database.keys import KeyRecord
from reelq.database.usage import UsageRow
from reelq.domain import wire_number
from reelq.service.admin import budget_object
from reelq.service.errors import InvalidRequest


def parse_date(value: str | None, name: str) -> str | None:
    """A `since`/`until` query value as an ISO date (None when absent); InvalidRequest naming it otherwise."""
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise InvalidRequest(f"'{name}' must be a date like 2026-01-31.", param=name) from None


def usage_object(
    key_id: str, start: str | None, end: str | None, rows: list[UsageRow], record: KeyRecord | None
) -> dict[str, Any]:
    """The usage of `key_id` within [start, end] (ISO dates, None: open): totals, per model, per day,
    and the key's budget as it stands (`record`, read fresh: balances move)."""
    by_model: dict[str, dict[str, Any]] = {}
    for row in rows:
        total = by_model.setdefault(row.model, {"videos": 0, "seconds": 0.0, "totalTokens": 0})
        total["videos"] += row.videos
        total["seconds"] += row.seconds
        total["totalTokens"] += row.tokens
    return {
        "object": "usage",
        "key_id": key_id,
        "since": start,
        "until": end,
        "videos": sum(r.videos for r in rows),
        "seconds": wire_number(round(sum(r.seconds for r in rows), 3)),
        "totalTokens": sum(r.tokens for r in rows),
        "budget": budget_object(record),
        "by_model": {m: {**t, "seconds": wire_number(round(t["seconds"], 3))} for m, t in by_model.items()},
        "data": [
            {
                "date": r.day,
                "model": r.model,
                "videos": r.videos,
                "seconds": wire_number(round(r.seconds, 3)),
                "totalTokens": r.tokens,
            }
            for r in rows
        ],
    }
