"""Bearer API-key authentication (SPEC §1): 401 with WWW-Authenticate for anything but an active key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from reelq.api.errors import Unauthorized
from reelq.api.services import Services

INVALID_KEY = "Invalid or revoked API key."


def parse_bearer(header: str | None) -> str:
    """The token of an `Authorization: Bearer <key>` header, or Unauthorized."""
    if not header:
        raise Unauthorized("Missing API key: send 'Authorization: Bearer <key>'.")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise Unauthorized("Malformed Authorization header: expected 'Bearer <key>'.")
    return token


def authenticate_token(header: str | None, lookup: Callable[[str], str | None]) -> str:
    """The key id for an `Authorization` header value (sync lookup: the inline SQLite path)."""
    key_id = lookup(parse_bearer(header))
    if key_id is None:
        raise Unauthorized(INVALID_KEY)
    return key_id


async def authenticate(request: Request, services: Services) -> str:
    """The key id of the request's bearer key."""
    key_id = await services.key_id_for(parse_bearer(request.headers.get("authorization")))
    if key_id is None:
        raise Unauthorized(INVALID_KEY)
    return key_id


async def _key_dependency(request: Request) -> str:
    return await authenticate(request, request.app.state.services)


KeyDep = Annotated[str, Depends(_key_dependency)]
