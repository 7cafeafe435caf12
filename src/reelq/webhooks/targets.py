"""Where a callback may go (SPEC §2: never to loopback, private, link-local or metadata addresses unless
the operator allows it).

Checked twice, because DNS can change between the two: at create, a host written as an address (in any
numeric spelling) or a `localhost` name is refused at once, so a client learns of the mistake with a 400
instead of a silent failure later; at every delivery attempt, the host is resolved and every address
it resolves to must pass the same policy as image URLs (fetch.py), and the request goes to exactly the
address that was checked. Redirects are not followed: a receiver that answers 3xx has not accepted the
event, and following it would be a second destination nobody vetted.
"""

from __future__ import annotations

import ipaddress
import socket

import httpx

from reelq.fetch import FetchError, address_problem, resolve_addresses

FIELD = "callback_url"


def literal_problem(url: str, allow_private: bool) -> str | None:
    """Why `url` (syntax already checked) may never be called back, judged without DNS; None when its
    host is a name (judged at delivery) or an allowed address."""
    if allow_private:
        return None
    host = httpx.URL(url).host.rstrip(".").lower()
    # An IPv6 zone id (`[::1%25lo]`, RFC 6874) names an interface of this machine, never part of the
    # address: judge the address alone, so every spelling of loopback or link-local is refused.
    host = host.split("%", 1)[0]
    if host == "localhost" or host.endswith(".localhost"):
        return f"host {host} is not allowed (loopback)"
    try:
        # AI_NUMERICHOST: only parses, never asks DNS; it reads 127.1, 0x7f000001 and 2130706433 as the
        # address they mean, as the resolver at delivery would.
        infos = socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError):
        return None  # a name
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        problem = address_problem(address)
        if problem is not None:
            return f"address {address} is not allowed ({problem})"
    return None


def resolve(url: httpx.URL, allow_private: bool, timeout: float) -> list[str]:
    """The addresses to send to (every one checked); FetchError with the reason when there are none."""
    port = url.port or (443 if url.scheme == "https" else 80)
    return resolve_addresses(
        url.raw_host.decode("ascii"), port, field=FIELD, allow_private=allow_private, timeout=timeout
    )


__all__ = ["FIELD", "FetchError", "literal_problem", "resolve"]
