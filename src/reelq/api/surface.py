"""What the other API surfaces' transports share: answering errors in the surface's own envelope.

The routed app answers every ApiError in the SPEC §4 envelope (api/errors.py). A client of the
OpenAI surface or of the Vidu platform's shape parses its own provider's errors instead, so their
routers use a route class made here: it catches the service's ApiError (and FastAPI's validation
errors) raised anywhere in the route, its dependencies included, and sends it through the
surface's renderer (service/shapes/openai.py, service/shapes/vidu_platform.py). The status and
headers (Retry-After, WWW-Authenticate) stay the service's.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from reelq.api.errors import _validation_message
from reelq.service.errors import ApiError, InvalidRequest

Renderer = Callable[[ApiError], bytes]


def error_route(render: Renderer) -> type[APIRoute]:
    """An APIRoute class whose errors are answered by `render` (the surface's error body)."""

    class SurfaceRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def run(request: Request) -> Response:
                try:
                    return await handler(request)
                except ApiError as exc:
                    return surface_error(render, exc)
                except RequestValidationError as exc:
                    param, message = _validation_message(exc.errors()[0]) if exc.errors() else (None, "")
                    text = f"Invalid value for '{param}': {message}." if param else "Invalid request."
                    named = (lambda name: f"Invalid value for '{name}': {message}.") if param else None
                    return surface_error(render, InvalidRequest(text, param=param, named=named))

            return run

    return SurfaceRoute


def surface_error(render: Renderer, exc: ApiError) -> Response:
    return Response(render(exc), exc.status, headers=exc.headers, media_type="application/json")
