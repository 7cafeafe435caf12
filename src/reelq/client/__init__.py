"""Python SDK for reelq (and any Vidu-compatible API): create a video task, wait for it, download it.

    from reelq.client import Client

    with Client("http://127.0.0.1:8000", "rq_...") as client:
        task = client.create_and_wait(prompt="a red fox in the snow", duration=5)
        if task.ok:
            client.download(task, "fox.mp4")

`AsyncClient` has the same methods as coroutines. Transient failures are retried (the server's
Retry-After first, else exponential backoff with jitter); errors are typed by meaning.

Webhooks: `verify_webhook(body, headers, secret)` checks a request the server POSTed to a task's
callback_url (Standard Webhooks, through the `standardwebhooks` library) and returns its task object;
`client.deliveries(task_id)` lists the server's delivery attempts.
"""

from __future__ import annotations

from reelq.client._async import AsyncClient
from reelq.client._errors import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    GoneError,
    InternalServerError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ReelqError,
    ServiceUnavailableError,
    WaitTimeout,
)
from reelq.client._sync import Client
from reelq.client._task import Task, TaskList
from reelq.client._webhooks import Delivery, WebhookVerificationError, verify_webhook

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APITimeoutError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConflictError",
    "Delivery",
    "GoneError",
    "InternalServerError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "ReelqError",
    "ServiceUnavailableError",
    "Task",
    "TaskList",
    "WaitTimeout",
    "WebhookVerificationError",
    "verify_webhook",
]

# Shown as reelq.client.X in tracebacks and docs rather than the private module they live in.
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
