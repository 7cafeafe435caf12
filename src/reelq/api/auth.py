"""Bearer API-key authentication (SPEC §1) for routed handlers; the rules are the task service's."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request


async def _key_dependency(request: Request) -> str:
    # async on purpose: FastAPI runs a plain `def` dependency in the thread pool, per request.
    return await request.app.state.services.tasks.authenticate(request.headers.get("authorization"))


KeyDep = Annotated[str, Depends(_key_dependency)]
