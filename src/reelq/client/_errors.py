"""One exception class per meaning, and the mapping from an HTTP answer to the right one."""

from __future__ import annotations

from typing import Any

import httpx

from reelq.client._retry import RETRY_STATUSES, parse_retry_after
from reelq.client._task import Task

# Bodies that are not the §4 envelope (a proxy's HTML page) still make a readable message, not a wall.
_MAX_TEXT_MESSAGE = 300


class ReelqError(Exception):
    """Base class of every error the SDK raises."""

    #: Whether trying the same request again may succeed.
    retryable = False


class APIError(ReelqError):
    """The server answered with an error status; fields come from the `{"error": {...}}` envelope."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        code: str | None = None,
        param: str | None = None,
        headers: httpx.Headers | None = None,
        body: Any = None,
    ) -> None:
        self.message = message
        self.status_code = status_code
        self.code = code
        self.param = param
        self.headers = headers if headers is not None else httpx.Headers()
        self.body = body
        super().__init__(self._summary())

    def _summary(self) -> str:
        head = f"{self.status_code} {self.code}" if self.code else str(self.status_code)
        tail = f" (param: {self.param})" if self.param else ""
        return f"{head}: {self.message}{tail}"

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return self.status_code in RETRY_STATUSES

    @property
    def retry_after(self) -> float | None:
        """Seconds the server asked to wait (`Retry-After` / `retry-after-ms`), capped; None if absent."""
        return parse_retry_after(self.headers)


class BadRequestError(APIError):
    """400: the request is invalid; `param` names the field."""


class AuthenticationError(APIError):
    """401: missing, unknown or revoked API key."""


class PermissionDeniedError(APIError):
    """403: e.g. a forged or altered video link."""


class NotFoundError(APIError):
    """404: no such task for this key (another key's task reads the same)."""


class ConflictError(APIError):
    """409: the Idempotency-Key was already used with a different body."""


class GoneError(APIError):
    """410: the video link has expired."""


class PayloadTooLargeError(APIError):
    """413: the request body is too large."""


class RateLimitError(APIError):
    """429: too many requests or too many active tasks; see `retry_after`."""


class InternalServerError(APIError):
    """5xx: the server failed."""


class ServiceUnavailableError(InternalServerError):
    """503: the server is overloaded (queue full); see `retry_after`."""


class APIResponseValidationError(APIError):
    """The server answered 2xx with a body that is not what the contract promises."""


class APIConnectionError(ReelqError):
    """No HTTP answer: the connection failed, broke, or the protocol was violated."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class APITimeoutError(APIConnectionError):
    """No HTTP answer in time."""


class WaitTimeout(ReelqError):
    """`wait` reached its overall deadline before the task finished; `task` is the last state seen."""

    def __init__(self, task_id: str, timeout: float, task: Task | None = None) -> None:
        last = f" (last status: {task.status})" if task is not None else ""
        super().__init__(f"Task {task_id} did not finish within {timeout:g} s{last}.")
        self.task_id = task_id
        self.timeout = timeout
        self.task = task


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    410: GoneError,
    413: PayloadTooLargeError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}

# Failures where the request may not have reached the server, or its answer may come next time.
# An unsupported scheme or a malformed URL never will, so they are not here.
_TRANSIENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


def error_class(status_code: int) -> type[APIError]:
    """The exception class for an HTTP error status."""
    if status_code in _BY_STATUS:
        return _BY_STATUS[status_code]
    return InternalServerError if status_code >= 500 else APIError


def status_error(response: httpx.Response) -> APIError:
    """The typed error for a (read) error response, from its §4 envelope when it has one."""
    try:
        body: Any = response.json()
    except ValueError:  # not JSON (json.JSONDecodeError and UnicodeDecodeError are both ValueErrors)
        body = None
    envelope = body.get("error") if isinstance(body, dict) else None
    code = param = None
    if isinstance(envelope, dict):
        code, param = _text(envelope.get("code")), _text(envelope.get("param"))
        message = _text(envelope.get("message"))
    elif isinstance(envelope, str):  # `{"error": "..."}`, as some gateways answer
        message = envelope
    elif isinstance(body, dict) and "detail" in body:  # a framework default that slipped through
        message = str(body["detail"])
    else:
        message = response.text.strip()[:_MAX_TEXT_MESSAGE]
    cls = error_class(response.status_code)
    return cls(
        message or response.reason_phrase or "HTTP error",
        status_code=response.status_code,
        code=code,
        param=param,
        headers=response.headers,
        body=body,
    )


def connection_error(exc: httpx.HTTPError) -> APIConnectionError:
    """The SDK error for an httpx failure that produced no response; the httpx error is its cause."""
    cls = APITimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
    url = _request_url(exc)
    error = cls(
        f"{type(exc).__name__}{url}: {exc}" if str(exc) else f"{type(exc).__name__}{url}",
        retryable=isinstance(exc, _TRANSIENT),
    )
    error.__cause__ = exc
    return error


def _request_url(exc: httpx.HTTPError) -> str:
    try:
        return f" ({exc.request.method} {exc.request.url.copy_with(query=None)})"
    except RuntimeError:  # an error raised before a request existed
        return ""


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
