"""Every HTTP request the relay worker sends to an upstream, bounded in time and in size, here once.

httpx's timeouts are per phase and per read: an upstream that trickles a byte every few seconds
never trips them, and `response.json()` reads an answer whole, whatever its size. So every
upstream client (the reelq and Vidu upstreams, any other) and the re-host download go through
these two calls instead of `client.request` / `client.send`:

    answer = await bounded.request(client, "GET", url, timeout=30, headers=...)   # JSON APIs
    async with bounded.stream(client, request, timeout=300) as response:          # downloads
        async for chunk in response.aiter_bytes(): ...

- `timeout` is the TOTAL time for the request, its answer's headers and its whole body (a
  `DeadlineExceeded`, an `httpx.TimeoutException`, when it passes);
- `request` reads the answer against `max_bytes` (default 1 MiB, `AnswerTooLarge` beyond it)
  as it streams in, so a huge answer costs at most that much memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

MAX_ANSWER_BYTES = 1024 * 1024  # an upstream's JSON answer: status reads are a few hundred bytes


class DeadlineExceeded(httpx.TimeoutException):
    """The request's total time ran out (headers, body or a trickle of both)."""


class AnswerTooLarge(httpx.HTTPError):
    """The answer's body passed `max_bytes`; nothing more of it was read."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole, bounded answer: what the upstream clients read of an `httpx.Response`."""

    status_code: int
    headers: httpx.Headers
    content: bytes

    def json(self) -> Any:
        """The body as JSON; ValueError (orjson's JSONDecodeError) when it is not."""
        return orjson.loads(self.content)


async def request(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    timeout: float,
    max_bytes: int = MAX_ANSWER_BYTES,
    headers: dict[str, str] | None = None,
    json: Any = None,
    data: Any = None,
    files: Any = None,
) -> Answer:
    """Send one request and read its whole answer within `timeout` seconds in all and `max_bytes`.

    Raises httpx's errors as `client.request` does, plus DeadlineExceeded and AnswerTooLarge.
    """
    # Compressed answers are not asked for; one sent anyway is capped on its decoded size.
    sent = {"Accept-Encoding": "identity", **(headers or {})}
    built = client.build_request(
        method, url, headers=sent, json=json, data=data, files=files, timeout=timeout
    )
    async with stream(client, built, timeout=timeout) as response:
        declared = response.headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > max_bytes:
            raise AnswerTooLarge(f"the answer is larger than {max_bytes} bytes")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > max_bytes:
                raise AnswerTooLarge(f"the answer is larger than {max_bytes} bytes")
        return Answer(response.status_code, response.headers, bytes(body))


@asynccontextmanager
async def stream(
    client: httpx.AsyncClient, request: httpx.Request, *, timeout: float
) -> AsyncIterator[httpx.Response]:
    """Send `request` and yield its streamed response; the block must finish within `timeout` seconds
    of the send (DeadlineExceeded). The response is closed on the way out."""
    try:
        async with asyncio.timeout(max(0.0, timeout)):
            response = await client.send(request, stream=True, follow_redirects=False)
            try:
                yield response
            finally:
                await response.aclose()
    except TimeoutError:
        raise DeadlineExceeded(f"no whole answer within {timeout:g} s", request=request) from None
