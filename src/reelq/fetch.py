"""Bounded, SSRF-safe download of client-supplied URLs (SPEC §2).

The rules, and why:
- The host is resolved here, once, and every address it resolves to must be globally reachable by the IANA
  special-purpose address registries, encoded below as data, as must any IPv4 address an IPv6 one carries
  (`address_problem`);
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

import certifi
import httpx

from reelq.images import MAX_IMAGE_BYTES, url_syntax_problem

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_USER_AGENT = "reelq-fetch/1"

# --- the registries, as data ------------------------------------------------------------------------------
# Every block of the IANA special-purpose address registries, with its "Globally Reachable" column:
# True, False, or None where the registry says N/A. Transcribed from the registries as they stood in 2025:
#   IANA IPv4 Special-Purpose Address Registry (iana-ipv4-special-registry; newest entry RFC 8880, 2020),
#   IANA IPv6 Special-Purpose Address Registry (iana-ipv6-special-registry; newest entries RFC 9665 and
#   RFC 9780, 2025).
# RFC 6890 and RFC 8190 define the columns. The label is what a refusal says. When the registries change,
# edit these tables: nothing else encodes the address policy.
_IPV4_SPECIAL: tuple[tuple[str, str, bool | None], ...] = (
    ("0.0.0.0/8", "this network", False),  # "This network" [RFC791]
    ("0.0.0.0/32", "unspecified", False),  # "This host on this network" [RFC1122]
    ("10.0.0.0/8", "private", False),  # Private-Use [RFC1918]
    ("100.64.0.0/10", "shared address space (CGNAT)", False),  # [RFC6598]
    ("127.0.0.0/8", "loopback", False),  # [RFC1122]
    ("169.254.0.0/16", "link-local", False),  # [RFC3927]
    ("172.16.0.0/12", "private", False),  # Private-Use [RFC1918]
    ("192.0.0.0/24", "reserved (IETF protocol assignments)", False),  # [RFC6890]
    ("192.0.0.0/29", "IPv4 service continuity prefix", False),  # [RFC7335]
    ("192.0.0.8/32", "IPv4 dummy address", False),  # [RFC7600]
    ("192.0.0.9/32", "port control protocol anycast", True),  # [RFC7723]
    ("192.0.0.10/32", "TURN anycast", True),  # [RFC8155]
    ("192.0.0.170/32", "NAT64/DNS64 discovery", False),  # [RFC8880][RFC7050]
    ("192.0.0.171/32", "NAT64/DNS64 discovery", False),  # [RFC8880][RFC7050]
    ("192.0.2.0/24", "documentation", False),  # TEST-NET-1 [RFC5737]
    ("192.31.196.0/24", "AS112-v4", True),  # [RFC7535]
    ("192.52.193.0/24", "AMT", True),  # [RFC7450]
    ("192.88.99.0/24", "reserved (6to4 relay anycast)", None),  # Deprecated [RFC7526]
    ("192.88.99.2/32", "6a44 relay anycast", None),  # [RFC6751]
    ("192.168.0.0/16", "private", False),  # Private-Use [RFC1918]
    ("192.175.48.0/24", "AS112 direct delegation", True),  # [RFC7534]
    ("198.18.0.0/15", "benchmarking", False),  # [RFC2544]
    ("198.51.100.0/24", "documentation", False),  # TEST-NET-2 [RFC5737]
    ("203.0.113.0/24", "documentation", False),  # TEST-NET-3 [RFC5737]
    ("240.0.0.0/4", "reserved", False),  # [RFC1112]
    ("255.255.255.255/32", "limited broadcast", False),  # [RFC8190][RFC919]
)
_IPV6_SPECIAL: tuple[tuple[str, str, bool | None], ...] = (
    ("::1/128", "loopback", False),  # [RFC4291]
    ("::/128", "unspecified", False),  # [RFC4291]
    ("::ffff:0:0/96", "IPv4-mapped", False),  # [RFC4291]
    ("64:ff9b::/96", "NAT64 well-known prefix", True),  # IPv4-IPv6 Translat. [RFC6052]
    ("64:ff9b:1::/48", "private (local-use NAT64)", False),  # [RFC8215]
    ("100::/64", "discard-only", False),  # [RFC6666]
    ("100:0:0:1::/64", "dummy prefix", False),  # [RFC9780]
    ("2001::/23", "reserved (IETF protocol assignments)", False),  # [RFC2928]
    ("2001::/32", "Teredo", None),  # [RFC4380][RFC8190]
    ("2001:1::1/128", "port control protocol anycast", True),  # [RFC7723]
    ("2001:1::2/128", "TURN anycast", True),  # [RFC8155]
    ("2001:1::3/128", "DNS-SD SRP anycast", True),  # [RFC9665]
    ("2001:2::/48", "benchmarking", False),  # [RFC5180][RFC Errata 1752]
    ("2001:3::/32", "AMT", True),  # [RFC7450]
    ("2001:4:112::/48", "AS112-v6", True),  # [RFC7535]
    ("2001:10::/28", "reserved (deprecated ORCHID)", False),  # [RFC4843]
    ("2001:20::/28", "ORCHIDv2", True),  # [RFC7343]
    ("2001:30::/28", "drone remote ID entity tags", True),  # [RFC9374]
    ("2001:db8::/32", "documentation", False),  # [RFC3849]
    ("2002::/16", "6to4", None),  # [RFC3056]
    ("2620:4f:8000::/48", "AS112 direct delegation", True),  # [RFC7534]
    ("3fff::/20", "documentation", False),  # [RFC9637]
    ("5f00::/16", "reserved (SRv6 SIDs)", False),  # [RFC9602]
    ("fc00::/7", "private (unique local)", False),  # [RFC4193][RFC8190]
    ("fe80::/10", "link-local", False),  # [RFC4291]
)
# Outside the special-purpose blocks, the address-space registries decide. IPv4: everything is allocated
# unicast except 224.0.0.0/4 (IANA IPv4 Multicast Address Space). IPv6 (IANA Internet Protocol Version 6
# Address Space): only 2000::/3 is global unicast; the rest is reserved by the IETF, unique-local,
# link-local or multicast. Named here only for the refusal message.
_IPV4_MULTICAST = ipaddress.IPv4Network("224.0.0.0/4")
_IPV6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_IPV6_OTHER_SPACE: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(net), why)
    for net, why in (
        ("::/96", "IPv4-compatible (deprecated)"),  # [RFC4291] section 2.5.5.1
        ("::ffff:0:0:0/96", "IPv4-translated"),  # [RFC2765] SIIT, within ::/8 "Reserved by IETF"
        ("fec0::/10", "site-local (deprecated)"),  # [RFC3879]
        ("ff00::/8", "multicast"),  # [RFC4291]
    )
)
# Not blocks of their own: addresses inside refused blocks that deserve a clearer name in the refusal.
_METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "100.100.100.200", "fd00:ec2::254")
)
# IPv6 prefixes whose last 32 bits are the IPv4 address the traffic really reaches.
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # SIIT [RFC2765]
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # well-known prefix [RFC6052]


def _longest_match(
    ip: IPAddress, table: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str, bool | None], ...]
) -> tuple[str, bool | None] | None:
    """The (label, globally reachable) of the most specific registry block holding `ip`, if any.

    The registries list blocks inside blocks (192.0.0.9/32 inside 192.0.0.0/24); the inner one decides.
    """
    best: tuple[int, str, bool | None] | None = None
    for network, label, reachable in table:
        if ip in network and (best is None or network.prefixlen > best[0]):
            best = (network.prefixlen, label, reachable)
    return None if best is None else (best[1], best[2])


def _compile(
    rows: tuple[tuple[str, str, bool | None], ...],
) -> tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str, bool | None], ...]:
    return tuple((ipaddress.ip_network(net), label, reachable) for net, label, reachable in rows)


_V4_TABLE = _compile(_IPV4_SPECIAL)
_V6_TABLE = _compile(_IPV6_SPECIAL)


class FetchError(Exception):
    """A download failed or was refused; the message names the field and the reason, for the client."""

    def __init__(self, field: str, reason: str, *, refused: bool = False) -> None:
        super().__init__(f"{field} could not be fetched: {reason}")
        self.field = field
        self.reason = reason
        self.refused = refused  # by the address policy: the same request is refused again, whenever tried


# --- address policy --------------------------------------------------------------------------------------


def address_problem(ip: IPAddress) -> str | None:
    """Why a connection to `ip` is not allowed (e.g. "loopback"), or None when it is globally reachable.

    Allowed means: globally reachable by the registries above (a registry N/A counts as not, except
    where the address carries an IPv4 address, which then decides), and every IPv4 address it carries
    (IPv4-mapped, -translated, NAT64, 6to4, Teredo) allowed too.
    """
    if ip in _METADATA:
        return "cloud metadata"
    if isinstance(ip, ipaddress.IPv4Address):
        return _ipv4_problem(ip)
    mapped = ip.ipv4_mapped
    if mapped is not None:
        # A socket sends to ::ffff:a.b.c.d as IPv4 to a.b.c.d: that address is the whole story.
        problem = address_problem(mapped)
        return None if problem is None else f"embeds {mapped}: {problem}"
    embedded = _embedded_ipv4(ip)
    for v4 in embedded:
        problem = address_problem(v4)
        if problem is not None:
            return f"embeds {v4}: {problem}"
    special = _longest_match(ip, _V6_TABLE)
    if special is not None:
        label, reachable = special
        if reachable is True or (reachable is None and embedded):
            return None
        return label
    if ip in _IPV6_GLOBAL_UNICAST:
        return None
    for network, why in _IPV6_OTHER_SPACE:
        if ip in network:
            return why
    return "reserved (outside IPv6 global unicast space)"


def _ipv4_problem(ip: ipaddress.IPv4Address) -> str | None:
    special = _longest_match(ip, _V4_TABLE)
    if special is not None:
        label, reachable = special
        return None if reachable is True else label
    if ip in _IPV4_MULTICAST:
        return "multicast"
    return None


def is_public_address(ip: IPAddress) -> bool:
    return address_problem(ip) is None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses that traffic to `ip` reaches or passes: IPv4-translated, NAT64, 6to4, Teredo."""
    if ip in _IPV4_TRANSLATED or ip in _NAT64:
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        server, client = ip.teredo  # the relay server, and the client's public (NAT) address
        return [server, client]
    return []


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
        try:
            result = _fetch_hop(current, field, allow_private, max_bytes, timeout, deadline)
        except FetchError:
            raise
        except Exception as exc:
            # Everything here is steered by a remote server; whatever it provokes that the cases above
            # miss must still fail the task naming the image, not read as an engine crash.
            log.exception("fetching %s for %s failed unexpectedly", current.host, field)
            raise FetchError(field, f"the download failed ({type(exc).__name__})") from None
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
                raise FetchError(field, f"address {address} is not allowed ({problem})", refused=True)
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
        except (httpx.InvalidURL, UnicodeError):
            # httpx works out a redirect's next URL inside send(), before the answer reaches us, and a
            # Location it cannot parse (`http:127.0.0.1:…`, a bad IDNA label) raises outside HTTPError.
            raise FetchError(field, "the redirect target is not a valid URL") from None
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
