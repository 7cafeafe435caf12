"""Re-hosting: download the upstream's finished video into our storage, bounded and SSRF-guarded.

Upstream links expire (the Vidu platform's within hours); ours are the ones clients get. The video
is streamed to a temporary file (never held in memory: a relay worker holds many tasks), within the
model's size and time bounds, then probed: only a playable MP4 with frames is kept.

The address policy is fetch.py's: a link on the configured upstream's own host (at any port: an
upstream behind a proxy or load balancer serves its videos on another port), or on one of the
channel's `download_hosts`, is trusted like the upstream itself (an operator may relay to a private
address); any other host - a CDN, a redirect target - must resolve to public addresses only (unless
REELQ_ALLOW_PRIVATE_URLS), checked on every hop, and the connection goes to the checked address.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import httpx

from reelq.engines.relay import bounded
from reelq.fetch import FetchError, resolve_addresses
from reelq.images import url_syntax_problem

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
FIELD = "the upstream video"
MALFORMED_REDIRECT = "Could not download the upstream video: it redirected to a malformed URL."


class RehostError(Exception):
    """The finished video could not be brought home; the message is fit for the task's error.

    `final`: trying again cannot help (too large, an address the policy refuses, a malformed
    redirect), so the relay fails the task at once instead of retrying the download.
    """

    def __init__(self, message: str, *, final: bool = False) -> None:
        super().__init__(message)
        self.final = final


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
    trusted_hosts: list[str] | tuple[str, ...] = (),
    headers: dict[str, str] | None = None,
) -> int:
    """Stream `url` to `dest`; returns the byte count. Raises RehostError (and removes `dest`).

    `headers` (the upstream's credentials) go only to the upstream's own origin, never elsewhere."""
    deadline = time.monotonic() + timeout
    root = httpx.URL(upstream_root)
    trusted = frozenset({root.host.lower(), *trusted_hosts})
    try:
        current = _parse(url)
        for _hop in range(MAX_REDIRECTS + 1):
            extra = headers if headers and _origin(current) == _origin(root) else None
            nxt = await _hop_once(
                client, current, dest, trusted, allow_private, max_bytes, deadline, read_timeout, extra
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
    try:
        return httpx.URL(url)
    except (httpx.InvalidURL, ValueError, UnicodeError):  # IDNAError is a UnicodeError
        raise RehostError("Could not download the upstream video: its URL is not a valid URL.") from None


def _redirect(url: httpx.URL, location: str) -> httpx.URL:
    """Where a redirect points, or RehostError: a malformed Location (a bad port or IPv6 address, a
    control character, an invalid IDNA label) is the upstream host's fault, told as such."""
    try:
        target = str(url.join(location))
    except (httpx.InvalidURL, ValueError, UnicodeError):
        raise RehostError(MALFORMED_REDIRECT, final=True) from None
    return _parse(target)


async def _hop_once(
    client: httpx.AsyncClient,
    url: httpx.URL,
    dest: Path,
    trusted: frozenset[str],
    allow_private: bool,
    max_bytes: int,
    deadline: float,
    read_timeout: float,
    extra_headers: dict[str, str] | None = None,
) -> int | httpx.URL:
    left = deadline - time.monotonic()
    if left <= 0:
        raise RehostError("Could not download the upstream video: timed out.")
    headers = {**(extra_headers or {}), "Accept-Encoding": "identity", "User-Agent": "reelq-relay/1"}
    request_url = url
    extensions: dict[str, object] = {}
    if url.host.lower().rstrip(".") not in trusted:
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
            reason = f"Could not download the upstream video: {exc.reason}."
            raise RehostError(reason, final=exc.refused) from None
        # Pinned to the checked address (Host and TLS name stay the URL's), so a DNS answer that changes
        # between the check and the connect cannot steer the download inside.
        headers["Host"] = url.netloc.decode("ascii")
        if url.scheme == "https":
            extensions["sni_hostname"] = host
        address = addresses[0]
        try:
            request_url = url.copy_with(host=address)
        except (httpx.InvalidURL, ValueError):
            raise RehostError("Could not download the upstream video: its host is not usable.") from None
    request = client.build_request(
        "GET",
        request_url,
        headers=headers,
        extensions=extensions,
        timeout=httpx.Timeout(min(read_timeout, left)),
    )
    try:
        # The whole hop (headers and body) within what is left of the download's total time: a host
        # that trickles bytes cannot hold the task past `download_timeout` (engines/relay/bounded.py).
        async with bounded.stream(client, request, timeout=left) as response:
            return await _take(response, url, dest, max_bytes)
    except httpx.TimeoutException:
        raise RehostError("Could not download the upstream video: timed out.") from None
    except (httpx.InvalidURL, UnicodeError):
        # Raised by httpx's own reading of a redirect's Location (the only URL an answer carries):
        # an invalid IDNA label, a scheme without a path... the host's fault, said plainly.
        raise RehostError(MALFORMED_REDIRECT, final=True) from None
    except httpx.RemoteProtocolError as exc:
        if "location header" in str(exc).lower():  # httpx itself could not parse the redirect
            raise RehostError(MALFORMED_REDIRECT, final=True) from None
        raise RehostError(f"Could not download the upstream video: {type(exc).__name__}.") from None
    except httpx.HTTPError as exc:
        raise RehostError(f"Could not download the upstream video: {type(exc).__name__}.") from None


async def _take(response: httpx.Response, url: httpx.URL, dest: Path, max_bytes: int) -> int | httpx.URL:
    """One hop's answer: a redirect's target, or the video streamed to `dest` (its size)."""
    status = response.status_code
    if status in _REDIRECTS:
        location = response.headers.get("location")
        if not location:
            raise RehostError(f"Could not download the upstream video: HTTP {status} without a Location.")
        return _redirect(url, location)
    if status != 200:
        raise RehostError(f"Could not download the upstream video: HTTP {status}.")
    declared = response.headers.get("content-length", "").strip()
    too_large = f"Could not download the upstream video: larger than {max_bytes // (1024 * 1024)} MB."
    if declared.isdigit() and int(declared) > max_bytes:
        raise RehostError(too_large, final=True)
    size = 0
    with open(dest, "wb") as out:
        async for chunk in response.aiter_bytes(1 << 16):
            size += len(chunk)
            if size > max_bytes:
                raise RehostError(too_large, final=True)
            out.write(chunk)
    return size
