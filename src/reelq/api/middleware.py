"""Pure ASGI middleware: the optional root path, and the request body limit."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reelq.service.errors import error_body

MAX_BODY_BYTES = 50 * 1024 * 1024


class RootPathMiddleware:
    """Serve every route both under `root_path` and without it (SPEC §1).

    uvicorn's --root-path assumes a proxy already stripped the prefix; gateways differ,
    so both spellings must work. A prefixed request gets `root_path` in its scope, which
    Starlette strips for routing and keeps for the URLs it builds (video_url included).
    """

    def __init__(self, app: ASGIApp, root_path: str) -> None:
        self.app = app
        self.root_path = root_path.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.root_path and scope["type"] == "http" and scope["path"] == self.root_path:
            # The root path alone is the web page's address without its slash (its links are relative):
            # sent on with a relative Location, never one built from the client's Host header.
            location = (self.root_path + "/").encode()
            headers = [(b"location", location), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 307, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        if self.root_path and scope["type"] in ("http", "websocket"):
            root, _ = under_root(scope["path"], self.root_path)
            scope = dict(scope)
            scope["root_path"] = root
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuse bodies over the limit with 413 before they are buffered (SPEC §4)."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                if declared_too_large(value, self.max_bytes):
                    await self._reject(send)
                    return
                break  # the first one counts, as everywhere else
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not response_started:
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body = too_large_body(self.max_bytes)
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


def under_root(path: str, root: str) -> tuple[str, str]:
    """(root, the path below it) for a request path under the root path, else ("", path).

    Both spellings of every route are served (SPEC §1): the routed app (RootPathMiddleware) and
    the fast path (api/fastpath.py) tell them apart here.
    """
    if root and (path == root or path.startswith(root + "/")):
        return root, path[len(root) :]
    return "", path


def declared_too_large(content_length: bytes | str | None, max_bytes: int = MAX_BODY_BYTES) -> bool:
    """True when a Content-Length header value announces more than the limit: refused before reading."""
    if content_length is None:
        return False
    try:
        return int(content_length) > max_bytes
    except ValueError:
        return False  # not a number: the server (h11) refuses it; the body is still counted as it comes


def too_large_body(max_bytes: int = MAX_BODY_BYTES) -> bytes:
    return error_body(
        "payload_too_large", f"The request body is larger than {max_bytes // (1024 * 1024)} MB."
    )
