"""SSRF-safe fetching against real HTTP servers on loopback addresses, counting what they receive."""

from __future__ import annotations

import contextlib
import ipaddress
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from reelq import fetch
from reelq.fetch import FetchError, address_problem, fetch_bytes, is_public_address

Handler = Callable[[BaseHTTPRequestHandler], None]
BODY = b"\x89PNG\r\n\x1a\n" + b"x" * 1000


@dataclass
class Server:
    """A real HTTP server on one loopback address; `routes` maps a path to a handler."""

    host: str
    routes: dict[str, Handler] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    httpd: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self.httpd is not None
        return self.httpd.server_address[1]

    def url(self, path: str = "/img", host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    def start(self, port: int = 0, tls: ssl.SSLContext | None = None) -> Server:
        server = self

        class RequestHandler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append((self.path, dict(self.headers.items())))
                route = server.routes.get(self.path.split("?")[0], send_body(BODY))
                # The client may hang up on purpose (too large, too slow).
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    route(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer((self.host, port), RequestHandler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()


def send_body(body: bytes, status: int = 200, length: bool = True) -> Handler:
    def handler(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "image/png")
        if length:
            h.send_header("Content-Length", str(len(body)))
        else:
            h.send_header("Connection", "close")  # no length: the body ends when the connection does
        h.end_headers()
        h.wfile.write(body)

    return handler


def redirect(location: str, status: int = 302) -> Handler:
    def handler(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()

    return handler


@pytest.fixture
def serve() -> Iterator[Callable[[str], Server]]:
    servers: list[Server] = []

    def factory(host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None) -> Server:
        server = Server(host).start(port, tls)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture
def public_127_0_0_2(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let 127.0.0.2 pass as a "public" address, so a test server can play the internet."""
    real = address_problem

    def policy(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
        return None if ip == ipaddress.ip_address("127.0.0.2") else real(ip)

    monkeypatch.setattr(fetch, "address_problem", policy)


# --- the address policy ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.255.254",
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "169.254.169.254",
        "169.254.1.1",
        "100.64.0.1",
        "100.100.100.200",
        "0.0.0.0",
        "0.1.2.3",
        "224.0.0.1",
        "239.255.255.250",
        "255.255.255.255",
        "240.0.0.1",
        "192.0.2.1",
        "198.51.100.1",
        "203.0.113.1",
        "198.18.0.1",
        "192.0.0.8",
        "::",
        "::1",
        "fe80::1",
        "fc00::1",
        "fd00::2",
        "fd00:ec2::254",
        "ff02::1",
        "2001:db8::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "::127.0.0.1",
        "::7f00:1",
        "64:ff9b::7f00:1",
        "64:ff9b::a00:1",
        "2002:7f00:1::",
        "2002:a9fe:a9fe::1",
        "2001::1",
        "64:ff9b:1::1",
        "100::1",
        "fec0::1",
        # The rest of the IANA special-purpose registries, and the reserved IPv6 space around them.
        "::ffff:0:7f00:1",  # IPv4-translated (SIIT) 127.0.0.1
        "::ffff:0:a00:1",  # IPv4-translated 10.0.0.1
        "::ffff:0:808:808",  # IPv4-translated, public inside: still not global unicast space
        "192.0.0.170",
        "192.0.0.1",
        "192.88.99.1",
        "100:0:0:1::1",
        "2001:2::1",
        "2001:10::1",
        "3fff::1",
        "5f00::1",
        "2001:0:808:808::f5ff:fffe",  # Teredo: public relay, client 10.0.0.1
        "2001:0:a00:1::f7f7:f7f7",  # Teredo: relay 10.0.0.1
        "1::1",  # reserved by the IETF (outside 2000::/3)
        "4000::1",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.216.34",
        "2606:4700:4700::1111",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
        # Globally reachable blocks inside special-purpose ones (the registries' inner entries decide).
        "192.0.0.9",
        "192.0.0.10",
        "192.31.196.1",
        "192.175.48.1",
        "2001:1::1",
        "2001:4:112::1",
        "2001:20::1",
        "2620:4f:8000::1",
        "2001:0:808:808::f7f7:f7f7",  # Teredo: relay 8.8.8.8, client 8.8.8.8
    ],
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


def test_refusal_names_the_kind_of_address() -> None:
    assert address_problem(ipaddress.ip_address("127.0.0.1")) == "loopback"
    assert address_problem(ipaddress.ip_address("10.0.0.1")) == "private"
    assert address_problem(ipaddress.ip_address("169.254.169.254")) == "cloud metadata"
    assert address_problem(ipaddress.ip_address("::ffff:127.0.0.1")) == "embeds 127.0.0.1: loopback"


# --- refusals before any request -------------------------------------------------------------------------


def test_private_address_is_refused_and_never_contacted(serve: Callable[..., Server]) -> None:
    server = serve()
    with pytest.raises(FetchError) as excinfo:
        fetch_bytes(server.url(), field="first_image")
    assert str(excinfo.value) == (
        "first_image could not be fetched: address 127.0.0.1 is not allowed (loopback)"
    )
    assert excinfo.value.field == "first_image"
    assert server.requests == []


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        # The resolver reads these numeric forms as 127.0.0.1 (inet_aton rules), and so are they judged.
        ("2130706433", "address 127.0.0.1 is not allowed (loopback)"),
        ("0x7f000001", "address 127.0.0.1 is not allowed (loopback)"),
        ("127.1", "address 127.0.0.1 is not allowed (loopback)"),
        ("0x7f.0.0.1", "address 127.0.0.1 is not allowed (loopback)"),
        ("0", "address 0.0.0.0 is not allowed (unspecified)"),
        ("0.0.0.0", "address 0.0.0.0 is not allowed (unspecified)"),
        ("[::1]", "address ::1 is not allowed (loopback)"),
        ("[::ffff:127.0.0.1]", "address ::ffff:127.0.0.1 is not allowed (embeds 127.0.0.1: loopback)"),
        ("[::ffff:7f00:1]", "address ::ffff:127.0.0.1 is not allowed (embeds 127.0.0.1: loopback)"),
        ("[::127.0.0.1]", "address ::127.0.0.1 is not allowed (IPv4-compatible (deprecated))"),
        ("localhost", "address 127.0.0.1 is not allowed (loopback)"),
        # httpx refuses a leading-zero (octal) dotted quad outright.
        ("0177.0.0.1", "the URL is not a valid URL"),
    ],
)
def test_numeric_and_local_forms_are_refused_without_a_request(
    serve: Callable[..., Server], host: str, reason: str
) -> None:
    server = serve()
    with pytest.raises(FetchError) as excinfo:
        fetch_bytes(server.url(host=host), field="last_image")
    assert str(excinfo.value) == f"last_image could not be fetched: {reason}"
    assert server.requests == []


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every TCP connect the HTTP client makes (the real connect still happens): for targets where no
    test server can listen, such as an IPv4-translated IPv6 address."""
    attempts: list[tuple[str, int]] = []
    real = socket.create_connection

    def recording(address: tuple[str, int], *args: object, **kwargs: object) -> socket.socket:
        attempts.append(address)
        return real(address, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "create_connection", recording)
    return attempts


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("[::ffff:0:7f00:1]", "address ::ffff:0:7f00:1 is not allowed (embeds 127.0.0.1: loopback)"),
        ("[::ffff:0:127.0.0.1]", "address ::ffff:0:7f00:1 is not allowed (embeds 127.0.0.1: loopback)"),
        ("[::ffff:0:a00:1]", "address ::ffff:0:a00:1 is not allowed (embeds 10.0.0.1: private)"),
        ("[::ffff:0:808:808]", "address ::ffff:0:808:808 is not allowed (IPv4-translated)"),
        ("[64:ff9b::127.0.0.1]", "address 64:ff9b::7f00:1 is not allowed (embeds 127.0.0.1: loopback)"),
        ("[2002:7f00:1::1]", "address 2002:7f00:1::1 is not allowed (embeds 127.0.0.1: loopback)"),
        ("[2001:0:808:808::80ff:fffe]", "(embeds 127.0.0.1: loopback)"),  # Teredo client 127.0.0.1
        ("[100:0:0:1::1]", "address 100:0:0:1::1 is not allowed (dummy prefix)"),
        ("[3fff::1]", "address 3fff::1 is not allowed (documentation)"),
        ("[5f00::1]", "address 5f00::1 is not allowed (reserved (SRv6 SIDs))"),
        ("192.0.0.171", "address 192.0.0.171 is not allowed (NAT64/DNS64 discovery)"),
    ],
)
def test_special_purpose_spellings_are_refused_without_a_connect(
    serve: Callable[..., Server], connects: list[tuple[str, int]], host: str, reason: str
) -> None:
    server = serve()  # 127.0.0.1: where the embedded loopback spellings would lead
    with pytest.raises(FetchError) as excinfo:
        fetch_bytes(server.url(host=host), field="first_image", timeout=1.0, total_deadline=2.0)
    assert reason in str(excinfo.value)
    assert excinfo.value.field == "first_image"
    assert connects == []
    assert server.requests == []


@pytest.mark.parametrize("host", ["LOCALHOST.", "127.0.0.1.", "127.000.000.001", "0x7F.1"])
def test_odd_spellings_are_refused_without_a_request(serve: Callable[..., Server], host: str) -> None:
    # Whether these resolve depends on the resolver (and /etc/hosts); refused they must be, either way.
    server = serve()
    with pytest.raises(FetchError, match=r"is not allowed|could not resolve|not a valid URL"):
        fetch_bytes(server.url(host=host), field="last_image")
    assert server.requests == []


def test_hostname_resolving_to_a_private_address_is_refused(serve: Callable[..., Server]) -> None:
    server = serve()
    with pytest.raises(FetchError, match=r"address 127\.0\.0\.1 is not allowed \(loopback\)"):
        fetch_bytes(server.url(host="localhost"), field="first_image")
    assert server.requests == []


def test_any_private_address_among_several_refuses_the_host(
    monkeypatch: pytest.MonkeyPatch, serve: Callable[..., Server], public_127_0_0_2: None
) -> None:
    server = serve("127.0.0.2")

    def fake_getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list[tuple]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in ("127.0.0.2", "10.0.0.1")]

    monkeypatch.setattr(fetch.socket, "getaddrinfo", fake_getaddrinfo)
    with pytest.raises(FetchError, match=r"address 10\.0\.0\.1 is not allowed \(private\)"):
        fetch_bytes(server.url(host="mixed.example"), field="first_image")
    assert server.requests == []


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/a.png", "must be an http(s) URL"),
        ("file:///etc/passwd", "must be an http(s) URL"),
        ("http://user:pw@example.com/a.png", "must not contain user credentials"),
        ("http://exa mple.com/", "whitespace or control characters"),
    ],
)
def test_bad_urls_are_refused(url: str, reason: str) -> None:
    with pytest.raises(FetchError, match=r"^first_image could not be fetched: the URL ") as excinfo:
        fetch_bytes(url, field="first_image")
    assert reason in str(excinfo.value)


def test_unresolvable_host() -> None:
    with pytest.raises(FetchError, match=r"could not resolve host nothing-here\.invalid"):
        fetch_bytes("http://nothing-here.invalid/a.png", field="first_image")


def test_hanging_resolver_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def slow_getaddrinfo(*args: object, **kwargs: object) -> list[tuple]:
        release.wait(60)
        return []

    monkeypatch.setattr(fetch.socket, "getaddrinfo", slow_getaddrinfo)
    started = time.monotonic()
    try:
        with pytest.raises(FetchError, match=r"timed out resolving host slow\.example"):
            fetch_bytes("http://slow.example/a.png", field="first_image", timeout=0.3)
    finally:
        release.set()
    # Given up at the 0.3 s timeout (the message says so: the resolver never answered), not after the
    # resolver's 60 s; the bound is far from both, so a slow machine cannot fail it.
    assert time.monotonic() - started < 30


# --- successful fetches ----------------------------------------------------------------------------------


def test_allow_private_fetches(serve: Callable[..., Server]) -> None:
    server = serve()
    assert fetch_bytes(server.url("/img?sig=secret"), field="first_image", allow_private=True) == BODY
    path, headers = server.requests[0]
    assert path == "/img?sig=secret"
    assert headers["Host"] == f"127.0.0.1:{server.port}"
    assert headers["Accept-Encoding"] == "identity"


def test_allow_private_accepts_hostnames(serve: Callable[..., Server]) -> None:
    server = serve()
    assert fetch_bytes(server.url(host="localhost"), field="first_image", allow_private=True) == BODY
    assert server.requests[0][1]["Host"] == f"localhost:{server.port}"


def test_connection_goes_to_the_checked_address_with_the_original_host_header(
    monkeypatch: pytest.MonkeyPatch, serve: Callable[..., Server], public_127_0_0_2: None
) -> None:
    # DNS rebinding: the first answer (checked) is public, any later one is private. Only one lookup may
    # happen, and the connection must go to the address that was checked.
    public = serve("127.0.0.2")
    private = serve("127.0.0.1", port=public.port)  # same port: only the address tells them apart
    answers = iter(["127.0.0.2", "127.0.0.1", "127.0.0.1"])
    lookups: list[str] = []

    real_getaddrinfo = socket.getaddrinfo

    def rebinding_getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list[tuple]:
        if host != "images.example":  # the connect's own lookup of the pinned IP literal
            return real_getaddrinfo(host, port, *args, **kwargs)
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    monkeypatch.setattr(fetch.socket, "getaddrinfo", rebinding_getaddrinfo)
    url = f"http://images.example:{public.port}/img"
    assert fetch_bytes(url, field="first_image") == BODY
    assert lookups == ["images.example"]
    assert public.requests[0][1]["Host"] == f"images.example:{public.port}"
    assert private.requests == []


def test_relative_redirect_is_followed(serve: Callable[..., Server], public_127_0_0_2: None) -> None:
    server = serve("127.0.0.2")
    server.routes["/start"] = redirect("/middle")
    server.routes["/middle"] = redirect("../img?x=1", status=307)
    assert fetch_bytes(server.url("/start"), field="first_image") == BODY
    assert [path for path, _ in server.requests] == ["/start", "/middle", "/img?x=1"]


def test_https_request_is_pinned_with_sni_of_the_original_host() -> None:
    with httpx.Client() as client:
        request = fetch.build_pinned_request(
            client, httpx.URL("https://images.example/a.png?s=1"), "93.184.216.34", 5.0
        )
    assert request.url == httpx.URL("https://93.184.216.34/a.png?s=1")
    assert request.headers["Host"] == "images.example"
    assert request.extensions["sni_hostname"] == "images.example"


def test_ipv6_address_is_pinned_with_brackets() -> None:
    with httpx.Client() as client:
        request = fetch.build_pinned_request(
            client, httpx.URL("http://v6.example:8080/a.png"), "2606:4700::1", 5.0
        )
    assert str(request.url) == "http://[2606:4700::1]:8080/a.png"
    assert request.headers["Host"] == "v6.example:8080"
    assert "sni_hostname" not in request.extensions


# --- redirects -------------------------------------------------------------------------------------------


def test_redirect_to_a_private_address_is_refused(
    serve: Callable[..., Server], public_127_0_0_2: None
) -> None:
    public, private = serve("127.0.0.2"), serve("127.0.0.1")
    public.routes["/img"] = redirect(private.url("/secret"))
    with pytest.raises(FetchError, match=r"address 127\.0\.0\.1 is not allowed \(loopback\)"):
        fetch_bytes(public.url("/img"), field="first_image")
    assert len(public.requests) == 1
    assert private.requests == []


@pytest.mark.parametrize(
    "target",
    [
        "http://localhost:{port}/x",
        "http://2130706433:{port}/x",
        "http://[::1]:{port}/x",
        "http://169.254.169.254/latest/meta-data/",
    ],
)
def test_redirect_to_local_forms_is_refused(
    serve: Callable[..., Server], public_127_0_0_2: None, target: str
) -> None:
    public, private = serve("127.0.0.2"), serve("127.0.0.1")
    public.routes["/img"] = redirect(target.format(port=private.port), status=301)
    with pytest.raises(FetchError, match="is not allowed"):
        fetch_bytes(public.url("/img"), field="first_image")
    assert private.requests == []


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("file:///etc/passwd", "the redirect target must be an http(s) URL"),
        ("gopher://127.0.0.2:70/x", "the redirect target must be an http(s) URL"),
        ("http://a:b@127.0.0.2/", "the redirect target must not contain user credentials"),
    ],
)
def test_redirect_to_other_schemes_is_refused(
    serve: Callable[..., Server], public_127_0_0_2: None, target: str, reason: str
) -> None:
    server = serve("127.0.0.2")
    server.routes["/img"] = redirect(target)
    with pytest.raises(FetchError, match=re.escape(reason)):
        fetch_bytes(server.url("/img"), field="first_image")


@pytest.mark.parametrize(
    "location",
    [
        "http:127.0.0.1:8080/x",  # a scheme and no "//": a path that must begin with "/"
        "https:127.0.0.1",
        "http://[::1",
        "//[::1",
        "http://[::1]x/",
        "http://[v1.x]/",
        "http://0x7f.1:abc/",
        "http://xn--/",  # an IDNA label with nothing in it
        "http://[::1]:99999/",
    ],
)
def test_malformed_redirect_location_fails_naming_the_image(
    serve: Callable[..., Server], public_127_0_0_2: None, location: str
) -> None:
    server = serve("127.0.0.2")
    server.routes["/img"] = redirect(location)
    with pytest.raises(FetchError) as excinfo:
        fetch_bytes(server.url("/img"), field="last_image")
    assert excinfo.value.field == "last_image"
    assert str(excinfo.value).startswith("last_image could not be fetched: ")
    assert len(server.requests) == 1


def test_redirect_loop_is_bounded(serve: Callable[..., Server], public_127_0_0_2: None) -> None:
    server = serve("127.0.0.2")
    server.routes["/img"] = redirect("/img")
    with pytest.raises(FetchError, match=r"too many redirects \(more than 3\)"):
        fetch_bytes(server.url("/img"), field="first_image", max_redirects=3)
    assert len(server.requests) == 4


def test_redirect_without_location(serve: Callable[..., Server]) -> None:
    server = serve()

    def no_location(h: BaseHTTPRequestHandler) -> None:
        h.send_response(302)
        h.send_header("Content-Length", "0")
        h.end_headers()

    server.routes["/img"] = no_location
    with pytest.raises(FetchError, match="HTTP 302 redirect without a Location"):
        fetch_bytes(server.url(), field="first_image", allow_private=True)


# --- answers, sizes and times ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [404, 403, 500, 304])
def test_non_2xx_is_an_error(serve: Callable[..., Server], status: int) -> None:
    server = serve()
    server.routes["/img"] = send_body(b"", status=status)
    with pytest.raises(FetchError, match=rf"^first_image could not be fetched: HTTP {status}$"):
        fetch_bytes(server.url(), field="first_image", allow_private=True)


def test_empty_2xx_body_is_returned_for_the_decoder_to_judge(serve: Callable[..., Server]) -> None:
    server = serve()
    server.routes["/img"] = send_body(b"")
    assert fetch_bytes(server.url(), field="first_image", allow_private=True) == b""


def test_declared_oversized_body_is_refused(serve: Callable[..., Server]) -> None:
    server = serve()
    server.routes["/img"] = send_body(b"x" * 5000)
    with pytest.raises(FetchError, match=r"^first_image could not be fetched: larger than 4096 bytes$"):
        fetch_bytes(server.url(), field="first_image", allow_private=True, max_bytes=4096)


def test_undeclared_oversized_body_is_cut_off(serve: Callable[..., Server]) -> None:
    server = serve()
    sent: list[int] = []

    def endless(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        chunk = b"x" * 8192
        for _ in range(10_000):  # 80 MB unless the client hangs up first
            h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent.append(len(chunk))
        h.wfile.write(b"0\r\n\r\n")

    server.routes["/img"] = endless
    with pytest.raises(FetchError, match="larger than 1 MB"):
        fetch_bytes(server.url(), field="first_image", allow_private=True, max_bytes=1024 * 1024)


def test_body_without_length_until_close_is_bounded(serve: Callable[..., Server]) -> None:
    server = serve()
    server.routes["/img"] = send_body(b"y" * 3000, length=False)
    with pytest.raises(FetchError, match="larger than 2000 bytes"):
        fetch_bytes(server.url(), field="first_image", allow_private=True, max_bytes=2000)
    server.routes["/ok"] = send_body(b"z" * 1500, length=False)
    assert (
        fetch_bytes(server.url("/ok"), field="first_image", allow_private=True, max_bytes=2000) == b"z" * 1500
    )


def test_body_at_exactly_the_limit_is_accepted(serve: Callable[..., Server]) -> None:
    server = serve()
    server.routes["/img"] = send_body(b"x" * 4096)
    assert len(fetch_bytes(server.url(), field="f", allow_private=True, max_bytes=4096)) == 4096


def test_slow_drip_is_cut_off_at_the_deadline(serve: Callable[..., Server]) -> None:
    server = serve()

    def drip(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "300")
        h.end_headers()
        for _ in range(300):  # one byte every 0.2 s: each read is quick, the whole (a minute) is not
            h.wfile.write(b"x")
            h.wfile.flush()
            time.sleep(0.2)

    server.routes["/img"] = drip
    started = time.monotonic()
    with pytest.raises(FetchError, match=r"^first_image could not be fetched: timed out$"):
        fetch_bytes(server.url(), field="first_image", allow_private=True, timeout=30.0, total_deadline=1.0)
    elapsed = time.monotonic() - started
    # At the 1 s deadline (the lower bound is safe on a slow machine), not the 30 s read timeout nor the
    # minute the drip takes: the upper bound is far from both.
    assert 0.9 < elapsed < 15


def test_silent_server_hits_the_read_timeout(serve: Callable[..., Server]) -> None:
    server = serve()
    release = threading.Event()
    server.routes["/img"] = lambda h: release.wait(60)  # silent for a minute
    started = time.monotonic()
    try:
        with pytest.raises(FetchError, match="timed out"):
            fetch_bytes(server.url(), field="first_image", allow_private=True, timeout=0.3)
    finally:
        release.set()
    # Cut by the 0.3 s read timeout, not after the server's minute of silence (a bound far from both).
    assert time.monotonic() - started < 30


def test_connection_refused(serve: Callable[..., Server]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(FetchError, match=r"^first_image could not be fetched: could not connect"):
        fetch_bytes(f"http://127.0.0.1:{port}/img", field="first_image", allow_private=True)


# --- TLS through the pinned address ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for images.example (made with the openssl command)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not available")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=images.example",
            "-addext",
            "subjectAltName=DNS:images.example",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def tls_server(
    certificate: tuple[Path, Path],
    serve: Callable[..., Server],
    monkeypatch: pytest.MonkeyPatch,
    public_127_0_0_2: None,
) -> tuple[Server, list[str | None]]:
    """An https server on "public" 127.0.0.2 that any *.example name resolves to; it records SNI names."""
    cert, key = certificate
    names: list[str | None] = []
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    server_context.sni_callback = lambda sock, name, ctx: names.append(name)
    server = serve("127.0.0.2", tls=server_context)
    monkeypatch.setattr(fetch, "_tls_context", lambda: ssl.create_default_context(cafile=str(cert)))
    real_getaddrinfo = socket.getaddrinfo

    def example_getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list[tuple]:
        if not host.endswith(".example"):
            return real_getaddrinfo(host, port, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", port))]

    monkeypatch.setattr(fetch.socket, "getaddrinfo", example_getaddrinfo)
    return server, names


def test_https_through_the_pinned_address_verifies_the_original_name(
    tls_server: tuple[Server, list[str | None]],
) -> None:
    server, names = tls_server
    url = f"https://images.example:{server.port}/img"
    assert fetch_bytes(url, field="first_image") == BODY
    assert names == ["images.example"]
    assert server.requests[0][1]["Host"] == f"images.example:{server.port}"


def test_https_certificate_for_another_name_is_refused(tls_server: tuple[Server, list[str | None]]) -> None:
    server, names = tls_server
    with pytest.raises(FetchError, match=r"could not connect \(.*certificate verify failed"):
        fetch_bytes(f"https://other.example:{server.port}/img", field="first_image")
    assert names == ["other.example"]
    assert server.requests == []
