"""The admin API's rules (SPEC §6): who may call it, what a key setting may be, the key object.

The transport (api/admin.py) parses HTTP and calls these; the CLI (`reelq keys create|update|credit|
show`) validates its flags with the same `KeySettings`, so a setting means the same everywhere.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from reelq.database.keys import KeyRecord
from reelq.service.errors import InvalidRequest, NotAllowed

MAX_TOKENS = 2**53  # beyond this a JSON number loses integers
MAX_KEY_PAGE = 100


class KeySettings(BaseModel):
    """A key's settable fields. On create, absent means default; on PATCH, absent means unchanged and
    `null` lifts the limit (`weight` back to 1)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    name: str | None = Field(None, max_length=200)
    budget: int | None = Field(None, ge=0, le=MAX_TOKENS, description="tokens; null: unlimited")
    max_active: int | None = Field(None, ge=1, le=1_000_000)
    max_processing: int | None = Field(None, ge=1, le=1_000_000)
    weight: float | None = Field(None, gt=0, le=1000, description="fair share weight [1]")
    models: list[str] | None = Field(None, max_length=1000, description="allowed models; null: all")
    create_rate: float | None = Field(None, gt=0, le=1e6, description="creates per minute")
    poll_rate: float | None = Field(None, gt=0, le=1e6, description="status reads per second per task")
    expires_at: int | float | str | None = Field(
        None, description="Unix seconds or an ISO 8601 time; after it the key answers 401"
    )

    @field_validator("weight", "create_rate", "poll_rate", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)  # strict mode refuses 3 for a float field; 3 is a fine weight
        return value

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not name or len(name) > 100 for name in value):
            raise ValueError("model names are 1..100 characters")
        return value

    @field_validator("expires_at")
    @classmethod
    def _expires(cls, value: int | float | str | None) -> float | None:
        if value is None:
            return None
        if isinstance(value, str):
            try:
                when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError("expected Unix seconds or an ISO 8601 time") from None
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            return when.timestamp()
        if isinstance(value, bool) or not math.isfinite(value) or not 0 <= value < 1e11:
            raise ValueError("expected Unix seconds")
        return float(value)


def parse_settings(data: Any, *, partial: bool) -> dict[str, Any]:
    """The settings a body sets: every given field (`partial`, a PATCH) or the non-null ones (create)."""
    if not isinstance(data, dict):
        raise InvalidRequest("The body must be a JSON object.")
    try:
        parsed = KeySettings.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = str(err["loc"][0]) if err["loc"] else None
        raise InvalidRequest(f"Invalid value for '{param}': {err['msg']}.", param=param) from None
    given = parsed.model_fields_set
    if not partial:
        given = {name for name in given if getattr(parsed, name) is not None}
    return {name: getattr(parsed, name) for name in given}


def require_admin(record: KeyRecord | None) -> None:
    if record is None or not record.is_admin:
        raise NotAllowed("This route needs an admin key (`reelq keys create --admin`).")


def key_object(record: KeyRecord) -> dict[str, Any]:
    """SPEC §6 "The key object" (plus `admin`); never the key or its hash."""
    return {
        "id": record.id,
        "object": "api_key",
        "name": record.name,
        "created": int(record.created_at),
        "revoked": record.revoked_at is not None,
        "expires_at": None if record.expires_at is None else int(record.expires_at),
        "budget": record.budget,
        "spent": record.spent,
        "reserved": record.reserved,
        "available": record.available,
        "max_active": record.max_active,
        "max_processing": record.max_processing,
        "weight": record.weight,
        "models": None if record.models is None else list(record.models),
        "create_rate": record.create_rate,
        "poll_rate": record.poll_rate,
        "admin": record.is_admin,
    }


def budget_object(record: KeyRecord | None) -> dict[str, Any]:
    """`GET /v1/usage`'s `budget` (SPEC §6): `limit` and `available` null when unlimited."""
    if record is None:
        return {"limit": None, "spent": 0, "reserved": 0, "available": None}
    return {
        "limit": record.budget,
        "spent": record.spent,
        "reserved": record.reserved,
        "available": record.available,
    }
