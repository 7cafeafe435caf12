"""Typed API errors and the SPEC §4 envelope they are sent in.

Plain data, no HTTP framework: the task service (reelq/service) raises these, and each
transport sends them (the FastAPI handlers in api/handlers.py, the fast path in
api/fastpath.py).
"""

from __future__ import annotations

import orjson


def error_body(code: str, message: str, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message, "param": param}})


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

    def body(self) -> bytes:
        return error_body(self.code, self.message, self.param)


class InvalidRequest(ApiError):
    status, code = 400, "invalid_request"


class Unauthorized(ApiError):
    status, code = 401, "invalid_api_key"

    def __init__(self, message: str, scheme: str = "Bearer") -> None:
        super().__init__(message, headers={"WWW-Authenticate": scheme})


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
