"""`GET /metrics` and the routed app's request timing (the fast path times its own: api/fastpath.py).

The routed app's requests are recorded in the same plain-int `HttpStats` as the fast path's, by
route template (`/v1/result/{task_id}`, never the raw path: one series per route, not per task).
Requests no route matched are recorded as `unmatched`.
"""

from __future__ import annotations

from time import perf_counter

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reelq.api.services import ServicesDep
from reelq.metrics import CONTENT_TYPE, HttpStats, render_metrics

router = APIRouter()
UNMATCHED = "unmatched"


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
            self.stats.observe(scope["method"], template, status, perf_counter() - started)
