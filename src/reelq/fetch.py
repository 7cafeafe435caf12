"""Bounded, SSRF-safe download of client-supplied URLs (SPEC §2).

The rules, and why:
- The host is resolved here, once, and every address it resolves to must be public (`address_problem`);
  the connection then goes to exactly the address that was checked (the URL's host is replaced by the IP,
  the Host header and TLS SNI/certificate name stay the original host), so a DNS answer that changes
  between the check and the connect (rebinding) cannot steer the request inside.
- Redirects are followed by hand, and each hop is checked the same way (scheme, syntax, addresses).
- Sizes and times are bounded: Content-Length is checked up front and the streamed body is cut off as
  soon as it passes `max_bytes`; every network operation has `timeout`, and the whole download, redirects
  included, has `total_deadline`. The deadline is checked between reads, so a slow-drip server is cut off
  at it; one that goes silent is cut off by the read timeout (at most `timeout` past the deadline).
- No proxy from the environment is used (it would defeat the address pinning), and no cookies are kept
  between hops.
- Logs name the host only: paths and query strings often carry signatures or tokens.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections.abc import Sequence

import certifi
import httpx

from reelq.images import MAX_IMAGE_BYTES, url_syntax_problem

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_USER_AGENT = "reelq-fetch/1"

# First match wins, so the specific ranges (metadata) come before the ranges containing them.
_V4_BLOCKED: list[tuple[ipaddress.IPv4Network, str]] = [
    (ipaddress.IPv4Network(net), why)
    for net, why in [
        ("169.254.169.254/32", "cloud metadata"),
        ("100.100.100.200/32", "cloud metadata"),
        ("0.0.0.0/8", "unspecified"),
        ("127.0.0.0/8", "loopback"),
        ("10.0.0.0/8", "private"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("169.254.0.0/16", "link-local"),
        ("100.64.0.0/10", "shared address space (CGNAT)"),
        ("192.0.0.0/24", "reserved (IETF protocol assignments)"),
        ("192.0.2.0/24", "documentation"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("198.18.0.0/15", "benchmarking"),
        ("192.88.99.0/24", "reserved (6to4 relay anycast)"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
    ]
]
_V6_BLOCKED: list[tuple[ipaddress.IPv6Network, str]] = [
    (ipaddress.IPv6Network(net), why)
    for net, why in [
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::/96", "IPv4-compatible (deprecated)"),
        ("fd00:ec2::254/128", "cloud metadata"),
        ("fc00::/7", "private (unique local)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local (deprecated)"),
        ("ff00::/8", "multicast"),
        ("64:ff9b:1::/48", "private (local-use NAT64)"),
        ("100::/64", "discard-only"),
        ("2001:db8::/32", "documentation"),
        ("3fff::/20", "documentation"),
        ("2001::/23", "reserved (IETF protocol assignments, Teredo)"),
        ("5f00::/16", "reserved (SRv6)"),
    ]
]
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class FetchError(Exception):
    """A download failed or was refused; the message names the field and the reason, for the client."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field} could not be fetched: {reason}")
        self.field = field
        self.reason = reason


# --- address policy --------------------------------------------------------------------------------------


def address_problem(ip: IPAddress) -> str | None:
    """Why a connection to `ip` is not allowed (e.g. "loopback"), or None when it is a public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            problem = address_problem(embedded)
            return None if problem is None else f"embeds {embedded}: {problem}"
    table: Sequence[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]]
    table = _V6_BLOCKED if isinstance(ip, ipaddress.IPv6Address) else _V4_BLOCKED
    for network, why in table:
        if ip in network:
            return why
    # The standard library's registry view catches whatever the tables above miss.
    if not ip.is_global or ip.is_multicast:
        return "not a public address"
    return None


def is_public_address(ip: IPAddress) -> bool:
    return address_problem(ip) is None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address that traffic to `ip` really reaches: IPv4-mapped, NAT64 or 6to4."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


# --- the download ----------------------------------------------------------------------------------------


def fetch_bytes(
    url: str,
    *,
    field: str,
    allow_private: bool = False,
    max_bytes: int = MAX_IMAGE_BYTES,
    timeout: float = 10.0,
    total_deadline: float = 30.0,
    max_redirects: int = 5,
) -> bytes:
    """GET `url` and return its body, following up to `max_redirects` redirects.

    Raises FetchError (naming `field`) for a refused address or URL, a network error, a non-2xx answer,
    a body over `max_bytes`, or a download that outlasts `total_deadline` seconds. `allow_private`
    (the operator's REELQ_ALLOW_PRIVATE_URLS) skips the address check, nothing else.
    """
    deadline = time.monotonic() + total_deadline
    current = _parse(url, field, redirected=False)
    for _hop in range(max_redirects + 1):
        result = _fetch_hop(current, field, allow_private, max_bytes, timeout, deadline)
        if isinstance(result, bytes):
            return result
        current = result
    raise FetchError(field, f"too many redirects (more than {max_redirects})")


def _parse(url: str, field: str, *, redirected: bool) -> httpx.URL:
    problem = url_syntax_problem(url)
    if problem is not None:
        where = "the redirect target" if redirected else "the URL"
        raise FetchError(field, f"{where} {problem}")
    return httpx.URL(url)


def _remaining(deadline: float, field: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchError(field, "timed out")
    return left


def _fetch_hop(
    url: httpx.URL, field: str, allow_private: bool, max_bytes: int, timeout: float, deadline: float
) -> bytes | httpx.URL:
    """One request: the body of a 2xx answer, or the next URL of a redirect."""
    host = url.raw_host.decode("ascii")
    port = url.port or (443 if url.scheme == "https" else 80)
    addresses = resolve_addresses(
        host,
        port,
        field=field,
        allow_private=allow_private,
        timeout=min(timeout, _remaining(deadline, field)),
    )
    log.debug("fetching %s for %s (%d address(es))", host, field, len(addresses))
    # A fresh client per hop: no cookies or pooled connections carried from one host to the next, and
    # trust_env=False so no HTTP(S)_PROXY from the environment reroutes the pinned connection.
    with httpx.Client(follow_redirects=False, trust_env=False, verify=_tls_context()) as client:
        response = _connect_any(client, url, addresses, field, timeout, deadline)
        try:
            return _handle_response(response, url, field, max_bytes, deadline)
        except httpx.TimeoutException:
            raise FetchError(field, "timed out") from None
        except httpx.HTTPError as exc:
            raise FetchError(field, f"the connection failed while reading ({_short(exc)})") from None
        finally:
            response.close()


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # Loading the CA bundle takes ~30 ms; one context (thread-safe for wrapping) serves every hop.
    return ssl.create_default_context(cafile=certifi.where())


def resolve_addresses(
    host: str, port: int, *, field: str, allow_private: bool = False, timeout: float = 10.0
) -> list[str]:
    """The addresses `host` resolves to, refusing them all if any is not public (unless allowed).

    Numeric forms (2130706433, 0x7f000001, 0177.0.0.1, 127.1, [::ffff:127.0.0.1]) come back from the
    resolver as the address they really mean, so they are judged by that.
    """
    infos = _getaddrinfo(host, port, field, timeout)
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise FetchError(field, f"could not resolve host {host}")
    if not allow_private:
        for address in addresses:
            problem = address_problem(ipaddress.ip_address(address))
            if problem is not None:
                raise FetchError(field, f"address {address} is not allowed ({problem})")
    return addresses


def _getaddrinfo(host: str, port: int, field: str, timeout: float) -> list[tuple]:
    # getaddrinfo has no timeout of its own; a resolver that hangs must not hang the worker, so it runs
    # on a daemon thread that is abandoned when it outlasts the timeout.
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except (OSError, UnicodeError) as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, name="reelq-resolve", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        raise FetchError(field, f"timed out resolving host {host}")
    result = outcome[0]
    if isinstance(result, BaseException):
        raise FetchError(field, f"could not resolve host {host}")
    return result  # type: ignore[return-value]


def build_pinned_request(client: httpx.Client, url: httpx.URL, address: str, timeout: float) -> httpx.Request:
    """A GET of `url` sent to `address`: Host header and TLS name (SNI + certificate) stay the URL's host."""
    extensions: dict[str, object] = {}
    if url.scheme == "https":
        extensions["sni_hostname"] = url.raw_host.decode("ascii")
    headers = {
        "Host": url.netloc.decode("ascii"),
        "User-Agent": _USER_AGENT,
        "Accept": "image/png,image/jpeg,image/webp,*/*;q=0.5",
        # Images gain nothing from gzip, and an uncompressed body is bounded by its byte count alone (a
        # server that compresses anyway is still bounded: the limit applies to the decoded bytes).
        "Accept-Encoding": "identity",
    }
    return client.build_request(
        "GET",
        url.copy_with(host=address),
        headers=headers,
        extensions=extensions,
        timeout=httpx.Timeout(timeout),
    )


def _connect_any(
    client: httpx.Client, url: httpx.URL, addresses: list[str], field: str, timeout: float, deadline: float
) -> httpx.Response:
    """Send to the checked addresses in turn until one connects (a dual-stack host may lack a route)."""
    last: Exception | None = None
    for address in addresses:
        remaining = min(timeout, _remaining(deadline, field))
        try:
            request = build_pinned_request(client, url, address, remaining)
        except httpx.InvalidURL:  # e.g. a scoped link-local address, reachable only with allow_private
            raise FetchError(field, f"address {address} cannot be used in a URL") from None
        try:
            return client.send(request, stream=True)
        except httpx.ConnectError as exc:
            last = exc
        except httpx.TimeoutException:
            raise FetchError(field, "timed out") from None
        except httpx.HTTPError as exc:
            raise FetchError(field, f"the request failed ({_short(exc)})") from None
    raise FetchError(field, f"could not connect ({_short(last)})")


def _handle_response(
    response: httpx.Response, url: httpx.URL, field: str, max_bytes: int, deadline: float
) -> bytes | httpx.URL:
    status = response.status_code
    if status in _REDIRECTS:
        location = response.headers.get("location")
        if not location:
            raise FetchError(field, f"HTTP {status} redirect without a Location")
        try:
            target = str(url.join(location))
        except (httpx.InvalidURL, ValueError):
            raise FetchError(field, "the redirect target is not a valid URL") from None
        return _parse(target, field, redirected=True)
    if not 200 <= status < 300:
        raise FetchError(field, f"HTTP {status}")
    return _read_body(response, field, max_bytes, deadline)


def _read_body(response: httpx.Response, field: str, max_bytes: int, deadline: float) -> bytes:
    too_large = f"larger than {_megabytes(max_bytes)}"
    declared = response.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > max_bytes:
        raise FetchError(field, too_large)
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise FetchError(field, too_large)
        if time.monotonic() > deadline:
            raise FetchError(field, "timed out")
    return bytes(body)


def _megabytes(n: int) -> str:
    mb = n / (1024 * 1024)
    return f"{mb:g} MB" if mb >= 1 else f"{n} bytes"


def _short(exc: Exception | None) -> str:
    text = str(exc).strip() if exc is not None else ""
    return (text or type(exc).__name__)[:200]
