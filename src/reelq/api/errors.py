"""Typed API errors and the one place that turns every failure into the SPEC §4 envelope."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

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


def error_body(code: str, message: str, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message, "param": param}})


def error_response(
    status: int, code: str, message: str, param: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    return Response(error_body(code, message, param), status, headers=headers, media_type="application/json")


class ApiError(Exception):
    """An error with its HTTP status, snake_case code, human message and the offending field."""

    status = 400
    code = "invalid_request"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def response(self) -> Response:
        return error_response(self.status, self.code, self.message, self.param, self.headers)


class InvalidRequest(ApiError):
    status, code = 400, "invalid_request"


class Unauthorized(ApiError):
    status, code = 401, "invalid_api_key"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class RateLimited(ApiError):
    status, code = 429, "rate_limit_exceeded"

    def __init__(self, message: str, retry_after: str, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"Retry-After": retry_after})


class Overloaded(ApiError):
    status, code = 503, "overloaded"

    def __init__(self, message: str, retry_after: str) -> None:
        super().__init__(message, headers={"Retry-After": retry_after})


class InsufficientStorage(ApiError):
    """The server's disk is full: the request was fine and nothing was stored; retry later."""

    status, code = 503, "storage_full"

    def __init__(self, message: str, retry_after: str) -> None:
        super().__init__(message, headers={"Retry-After": retry_after})


class Forbidden(ApiError):
    status, code = 403, "invalid_signature"


class Gone(ApiError):
    status, code = 410, "expired"


def _validation_message(error: dict[str, Any]) -> tuple[str | None, str]:
    loc = [part for part in error.get("loc", ()) if part not in ("body", "query", "path", "header")]
    param = ".".join(str(p) for p in loc) or None
    return param, str(error.get("msg", "invalid value"))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> Response:
        return exc.response()

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
        elif exc.status_code == 405:
            message = "Method not allowed on this route."
        return error_response(exc.status_code, code, message, None, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal_error", "The server hit an unexpected error.")
