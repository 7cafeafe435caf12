"""Bearer API-key authentication (SPEC §1): 401 with WWW-Authenticate for anything but an active key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from reelq.api.errors import Unauthorized
from reelq.api.services import Services, get_services


async def authenticate(request: Request, services: Services) -> str:
    """The key id of the request's bearer key."""
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized("Missing API key: send 'Authorization: Bearer <key>'.")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise Unauthorized("Malformed Authorization header: expected 'Bearer <key>'.")
    key_id = await services.key_id_for(token)
    if key_id is None:
        raise Unauthorized("Invalid or revoked API key.")
    return key_id


async def _key_dependency(request: Request) -> str:
    return await authenticate(request, get_services(request))


KeyDep = Annotated[str, Depends(_key_dependency)]
