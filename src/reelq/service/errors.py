"""Typed API errors and the SPEC §4 envelope they are sent in.

Plain data, no HTTP framework: the task service (reelq/service) raises these, and each
transport sends them (the FastAPI handlers in api/errors.py, the fast path in
api/fastpath.py).
"""

from __future__ import annotations

from collections.abc import Callable

import orjson


def error_body(code: str, message: str, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message, "param": param}})


class ApiError(Exception):
    """An error with its HTTP status, snake_case code, human message and the offending field.

    `named`, where the message names the field, builds the same message around another name for it:
    a surface that spells the field otherwise (OpenAI's `seconds` is our `duration`) asks
    `message_for(its_name)` instead of rewriting the text, which would also rewrite any value that
    happens to contain our name (`'video_abc'` is not a field).
    """

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
        named: Callable[[str], str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers
        self.named = named
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def body(self) -> bytes:
        return error_body(self.code, self.message, self.param)

    def message_for(self, param: str | None) -> str:
        """The message naming the field as `param` (a surface's own name for `self.param`)."""
        if param is None or param == self.param or self.named is None:
            return self.message
        return self.named(param)


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


class PaymentRequired(ApiError):
    """SPEC §6: the key's budget cannot hold the task's price; nothing was stored."""

    status, code = 402, "insufficient_budget"


class NotAllowed(ApiError):
    """SPEC §6: the key may not do this (an admin route, a model outside its `models`)."""

    status, code = 403, "forbidden"


class Gone(ApiError):
    status, code = 410, "expired"
