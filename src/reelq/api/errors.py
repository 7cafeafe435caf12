"""The FastAPI side of errors: every failure of the routed app answered in the SPEC §4 envelope."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from reelq.service.errors import ApiError, error_body

log = logging.getLogger("reelq.api")

_STATUS_CODES = {
    400: "invalid_request",
    401: "invalid_api_key",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "expired",
    413: "payload_too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    429: "rate_limit_exceeded",
    500: "internal_error",
    503: "overloaded",
}


def error_response(
    status: int, code: str, message: str, param: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    return Response(error_body(code, message, param), status, headers=headers, media_type="application/json")


def _validation_message(error: dict[str, Any]) -> tuple[str | None, str]:
    loc = [part for part in error.get("loc", ()) if part not in ("body", "query", "path", "header")]
    param = ".".join(str(p) for p in loc) or None
    return param, str(error.get("msg", "invalid value"))


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path: Starlette's 405 names only the first route's, and
    one path may have several routes (`GET` list and `POST` create of /v1/vidu/videos)."""
    return ", ".join(sorted(_methods_at(request.app.router.routes, request.scope)))


def _methods_at(routes: Sequence[BaseRoute], scope: Scope) -> set[str]:
    # FastAPI keeps an included router as one entry (its `original_router` holds the routes) whose own
    # `methods` is None: looked into, or a 405 on any route of api/*.py would send an empty Allow.
    # Every router here is included without a prefix, so its routes match the same scope.
    methods: set[str] = set()
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            methods |= _methods_at(inner.routes, scope)
        elif route.matches(scope)[0] != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return methods


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> Response:
        param, message = _validation_message(exc.errors()[0]) if exc.errors() else (None, "invalid request")
        text = f"Invalid value for '{param}': {message}." if param else f"Invalid request: {message}."
        return error_response(400, "invalid_request", text, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> Response:
        code = _STATUS_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            message = "No such route."
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            message = "Method not allowed on this route."
            headers = {**(headers or {}), "Allow": _allowed_methods(_request)} if _request else headers
        return error_response(exc.status_code, code, message, None, headers)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, _exc: ClientDisconnect) -> Response:
        # The client left (or the connection guard cut a body that stopped arriving): nobody reads
        # this answer, and it is no server error worth a traceback.
        log.info("client went away during %s %s", request.method, request.url.path)
        return error_response(400, "client_disconnected", "The client left before the request body ended.")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal_error", "The server hit an unexpected error.")
