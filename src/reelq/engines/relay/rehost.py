"""Re-hosting: download the upstream's finished video into our storage, bounded and SSRF-guarded.

Upstream links expire (the Vidu platform's within hours); ours are the ones clients get. The video
is streamed to a temporary file (never held in memory: a relay worker holds many tasks), within the
model's size and time bounds, then probed: only a playable MP4 with frames is kept.

The address policy is fetch.py's: a link on the configured upstream's own host (scheme, host and
port) is trusted like the upstream itself (an operator may relay to a private address); any other
host - a CDN, a redirect target - must resolve to public addresses only (unless
REELQ_ALLOW_PRIVATE_URLS), checked on every hop, and the connection goes to the checked address.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import httpx

from reelq.fetch import FetchError, resolve_addresses
from reelq.images import url_syntax_problem

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
FIELD = "the upstream video"


class RehostError(Exception):
    """The finished video could not be brought home; the message is fit for the task's error."""


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    port = url.port or (443 if url.scheme == "https" else 80)
    return (url.scheme, url.host.lower(), port)


async def download(
    client: httpx.AsyncClient,
    url: str,
    dest: Path,
    *,
    upstream_root: str,
    allow_private: bool,
    max_bytes: int,
    timeout: float,
    read_timeout: float,
) -> int:
    """Stream `url` to `dest`; returns the byte count. Raises RehostError (and removes `dest`)."""
    deadline = time.monotonic() + timeout
    trusted = _origin(httpx.URL(upstream_root))
    try:
        current = _parse(url)
        for _hop in range(MAX_REDIRECTS + 1):
            nxt = await _hop_once(
                client, current, dest, trusted, allow_private, max_bytes, deadline, read_timeout
            )
            if isinstance(nxt, int):
                return nxt
            current = nxt
        raise RehostError(f"Could not download the upstream video: more than {MAX_REDIRECTS} redirects.")
    except BaseException:
        with contextlib.suppress(OSError):
            dest.unlink()
        raise


def _parse(url: str) -> httpx.URL:
    problem = url_syntax_problem(url)
    if problem is not None:
        raise RehostError(f"Could not download the upstream video: its URL {problem}.")
    return httpx.URL(url)


async def _hop_once(
    client: httpx.AsyncClient,
    url: httpx.URL,
    dest: Path,
    trusted: tuple[str, str, int],
    allow_private: bool,
    max_bytes: int,
    deadline: float,
    read_timeout: float,
) -> int | httpx.URL:
    left = deadline - time.monotonic()
    if left <= 0:
        raise RehostError("Could not download the upstream video: timed out.")
    headers = {"Accept-Encoding": "identity", "User-Agent": "reelq-relay/1"}
    request_url = url
    extensions: dict[str, object] = {}
    if _origin(url) != trusted:
        host = url.raw_host.decode("ascii")
        port = _origin(url)[2]
        try:
            addresses = await asyncio.to_thread(
                resolve_addresses,
                host,
                port,
                field=FIELD,
                allow_private=allow_private,
                timeout=min(10.0, left),
            )
        except FetchError as exc:
            raise RehostError(f"Could not download the upstream video: {exc.reason}.") from None
        # Pinned to the checked address (Host and TLS name stay the URL's), so a DNS answer that changes
        # between the check and the connect cannot steer the download inside.
        headers["Host"] = url.netloc.decode("ascii")
        if url.scheme == "https":
            extensions["sni_hostname"] = host
        address = addresses[0]
        request_url = url.copy_with(host=address)
    request = client.build_request(
        "GET",
        request_url,
        headers=headers,
        extensions=extensions,
        timeout=httpx.Timeout(min(read_timeout, left)),
    )
    try:
        response = await client.send(request, stream=True, follow_redirects=False)
    except httpx.TimeoutException:
        raise RehostError("Could not download the upstream video: timed out.") from None
    except httpx.HTTPError as exc:
        raise RehostError(f"Could not download the upstream video: {type(exc).__name__}.") from None
    try:
        status = response.status_code
        if status in _REDIRECTS:
            location = response.headers.get("location")
            if not location:
                raise RehostError(f"Could not download the upstream video: HTTP {status} without a Location.")
            return _parse(str(url.join(location)))
        if status != 200:
            raise RehostError(f"Could not download the upstream video: HTTP {status}.")
        declared = response.headers.get("content-length", "").strip()
        too_large = f"Could not download the upstream video: larger than {max_bytes // (1024 * 1024)} MB."
        if declared.isdigit() and int(declared) > max_bytes:
            raise RehostError(too_large)
        size = 0
        with open(dest, "wb") as out:
            async for chunk in response.aiter_bytes(1 << 16):
                size += len(chunk)
                if size > max_bytes:
                    raise RehostError(too_large)
                if time.monotonic() > deadline:
                    raise RehostError("Could not download the upstream video: timed out.")
                out.write(chunk)
        return size
    except httpx.TimeoutException:
        raise RehostError("Could not download the upstream video: timed out.") from None
    except httpx.HTTPError as exc:
        raise RehostError(f"Could not download the upstream video: {type(exc).__name__}.") from None
    finally:
        await response.aclose()
