"""Request bodies: read only once admitted, into one buffer, within a process-wide byte budget.

A create's body may be 50 MB, and validating it costs about twice that again (the JSON's strings,
the decoded images). Read before any check, a flood of near-limit bodies held gigabytes. So every
transport that reads a create's body (the fast path and the routed surfaces) does it here, after
the caller authenticated the key and charged its create rate limit (`TaskService.admit_create`):

- the body goes into ONE buffer, sized by Content-Length when declared (no list of chunks joined
  into a second copy); over the limit it is refused (413) without buffering more;
- the bytes of bodies being read and handled at once are bounded per API process by
  `REELQ_BODY_BUDGET_MB`: a body that does not fit waits up to `BUDGET_WAIT` seconds for room, then
  is answered 503 with `Retry-After` (unread). The reservation is held until the request's
  handling ends, since the body's decoded forms live that long. A body alone always fits, whatever
  the budget, so a small budget serialises large creates but never refuses one for good.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive

from reelq.api.middleware import MAX_BODY_BYTES
from reelq.service.errors import ApiError, Overloaded

BUDGET_WAIT = 2.0  # seconds a body waits for room in the budget before 503
_WAIT_STEP = 0.02
BUSY_RETRY_AFTER = "1"


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"


class ClientGone(ClientDisconnect):
    """The client disconnected before its body arrived: there is nobody to answer (Starlette's own
    exception for it, so the routed app treats it as it treats `request.body()`'s)."""


class BodyBudget:
    """Bytes of request bodies held at once in this API process (one event loop: no lock needed)."""

    def __init__(self, limit_bytes: int, wait: float = BUDGET_WAIT) -> None:
        self.limit = limit_bytes
        self.wait = wait
        self.held = 0
        self.peak = 0  # the most ever held (tests, benchmarks)

    def try_take(self, n: int) -> bool:
        if self.held and self.held + n > self.limit:
            return False  # an empty budget admits any one body: a single 50 MB create always fits
        self.held += n
        self.peak = max(self.peak, self.held)
        return True

    async def take(self, n: int) -> None:
        """Reserve `n` bytes, waiting up to `wait` seconds for room; Overloaded (503) after that."""
        if self.try_take(n):
            return
        deadline = time.monotonic() + self.wait
        while time.monotonic() < deadline:
            await asyncio.sleep(_WAIT_STEP)
            if self.try_take(n):
                return
        raise Overloaded(
            "The server is reading too many large request bodies at once; try again shortly.",
            BUSY_RETRY_AFTER,
        )

    def give(self, n: int) -> None:
        self.held = max(0, self.held - n)


def too_large(max_bytes: int = MAX_BODY_BYTES) -> PayloadTooLarge:
    """The 413, worded as BodyLimitMiddleware's (middleware.too_large_body) for the same limit."""
    if max_bytes >= 1024 * 1024:
        return PayloadTooLarge(f"The request body is larger than {max_bytes // (1024 * 1024)} MB.")
    return PayloadTooLarge(f"The request body is larger than {max_bytes // 1024} KiB.")


def declared_length(value: str | bytes | None) -> int | None:
    """Content-Length as an int, None when absent or not a number (the server refuses those)."""
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        return None
    return length if length >= 0 else None


@asynccontextmanager
async def admitted_body(
    receive: Receive,
    content_length: str | bytes | None,
    budget: BodyBudget,
    max_bytes: int = MAX_BODY_BYTES,
) -> AsyncIterator[bytearray]:
    """The whole body in one buffer, its bytes reserved in `budget` until the block ends.

    Raises PayloadTooLarge (413: declared or sent beyond `max_bytes`, not buffered further),
    Overloaded (503: no room in the budget; nothing read) or ClientGone.
    """
    declared = declared_length(content_length)
    if declared is not None and declared > max_bytes:
        raise too_large(max_bytes)
    held = 0
    try:
        if declared is not None:
            await budget.take(declared)
            held = declared
            buffer = bytearray(declared)  # filled in place: one copy of the body, never two
        else:
            buffer = bytearray()
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            end = size + len(chunk)
            if end > max_bytes:
                raise too_large(max_bytes)
            if declared is not None:
                if end > declared:  # more than announced: the server stops this; never grow past it
                    raise too_large(max_bytes)
                buffer[size:end] = chunk
            else:
                if not budget.try_take(len(chunk)):
                    raise Overloaded(
                        "The server is reading too many large request bodies at once; try again shortly.",
                        BUSY_RETRY_AFTER,
                    )
                held += len(chunk)
                buffer += chunk
            size = end
        if size < len(buffer):
            del buffer[size:]
        yield buffer
    finally:
        budget.give(held)


def request_body(
    request: Request, budget: BodyBudget, max_bytes: int = MAX_BODY_BYTES
) -> AbstractAsyncContextManager[bytearray]:
    """`admitted_body` for a routed (Starlette) request; call it instead of `request.body()`."""
    return admitted_body(request.receive, request.headers.get("content-length"), budget, max_bytes)
