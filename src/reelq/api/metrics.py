"""`GET /metrics` and the routed app's request timing (the fast path times its own: api/fastpath.py).

The routed app's requests are recorded in the same plain-int `HttpStats` as the fast path's, by
route template (`/v1/result/{task_id}`, never the raw path: one series per route, not per task).
Requests no route matched are recorded as `unmatched`.

Labels are bounded whatever clients send, since `/metrics` is open to anyone who can reach it and
every label value is a series kept for the process's life: a method is its own label only where the
route answers it (or, for `unmatched`, one of the standard methods); any other method is `other`.
Long-polls (`?wait=N`, N > 0) are held for up to a minute by design, so they are recorded under
their route with LONG_POLL appended: the latency of the route itself stays the latency of a read.
"""

from __future__ import annotations

from time import perf_counter
from urllib.parse import parse_qsl

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reelq.api.deps import ServicesDep
from reelq.metrics import CONTENT_TYPE, HttpStats, render_metrics

router = APIRouter()
UNMATCHED = "unmatched"
OTHER_METHOD = "other"
LONG_POLL = " (long-poll)"
STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str, route: object) -> str:
    """The request's method where it is one the route answers (HEAD with GET), else `other`."""
    if route is None:
        return method if method in STANDARD_METHODS else OTHER_METHOD
    methods = getattr(route, "methods", None) or ()
    if method in methods or (method == "HEAD" and "GET" in methods):
        return method
    return OTHER_METHOD


def is_long_poll(query_string: bytes) -> bool:
    """Whether the request asks to be held (`wait` set to anything but zero)."""
    if b"wait=" not in query_string:
        return False
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name == "wait":
            try:
                return float(value) > 0
            except ValueError:
                return False  # refused with a 400 at once: not held
    return False


@router.get(
    "/metrics",
    summary="Prometheus metrics of this node (text exposition format)",
    response_class=Response,
    responses={200: {"description": "Metrics", "content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}},
)
async def metrics(services: ServicesDep) -> Response:
    # Reads the worker processes' files and counts the live tasks: off the event loop.
    body = await run_in_threadpool(render_metrics, services.metrics)
    return Response(body, media_type=CONTENT_TYPE)


class RoutedMetrics:
    """Times every request of the routed app, labelled by the route that answered it.

    Added innermost of the app's middleware: the root-path middleware copies the scope, and the
    router records the matched route (`scope["route"]`) in the copy it is given.
    """

    def __init__(self, app: ASGIApp, stats: HttpStats) -> None:
        self.app = app
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED
            method = method_label(scope["method"], route)
            if method == OTHER_METHOD and route is not None:
                template = UNMATCHED  # a method the route does not answer: one series for all of them
            elif is_long_poll(scope.get("query_string", b"")):
                template += LONG_POLL
            self.stats.observe(method, template, status, perf_counter() - started)
