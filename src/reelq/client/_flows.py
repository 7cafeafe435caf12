"""The SDK's logic, written once for both clients as generators that do no I/O themselves.

A flow yields actions (send this request, sleep this long, call this callback, save this body) and
receives their outcomes; `Client` runs flows with blocking calls, `AsyncClient` with awaits. So the
retry, polling and parsing rules exist in one place, whichever client runs them.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx

from reelq.client._errors import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    RateLimitError,
    ReelqError,
    WaitTimeout,
    connection_error,
    status_error,
)
from reelq.client._retry import backoff_delay
from reelq.client._task import Task, TaskList
from reelq.client._webhooks import Delivery, parse_deliveries

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Send:
    """Send `request`; the outcome is the httpx.Response (body read unless 2xx and `stream`) or the
    httpx.HTTPError it raised."""

    request: httpx.Request
    stream: bool = False


@dataclass(frozen=True, slots=True)
class Sleep:
    """Pause for `seconds`."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Notify:
    """Call `callback(task)` (and, in the async client, await it if it returns an awaitable)."""

    callback: Callable[[Task], Any]
    task: Task


@dataclass(frozen=True, slots=True)
class Save:
    """Stream the body of the open `response` into `path` atomically and close it; outcome: the Path."""

    response: httpx.Response
    path: Path


Action = Send | Sleep | Notify | Save
Flow = Generator[Action, Any, T]

# Each poll that brings no news waits this much longer than the last, up to max_interval: quick answers
# for short renders, few requests for long ones.
POLL_GROWTH = 1.5
# A poll near the deadline still gets this long to answer, so the last look is not a certain timeout.
MIN_POLL_TIMEOUT = 1.0
# The polling hint of non-terminal answers (SPEC §3; service/pollhint.py on the server).
POLL_AFTER_HEADER = "x-poll-after-ms"
# A long-poll answered this close to the time asked for was held by the server (it long-polls).
LONG_POLL_SLACK = 0.5


def new_idempotency_key() -> str:
    """A fresh key for one logical create; every retry of that create sends the same one."""
    return f"reelq-{uuid.uuid4()}"


def request_flow(
    request: httpx.Request,
    *,
    max_retries: int,
    stream: bool = False,
    rng: Callable[[], float] = random.random,
) -> Flow[httpx.Response]:
    """Send `request`, retrying transient failures up to `max_retries` times; return the 2xx response.

    The very same request is sent again, so a POST keeps its Idempotency-Key and the server
    returns the task the first attempt may already have created. Raises the typed error otherwise.
    """
    attempt = 0
    while True:
        outcome = yield Send(request, stream)
        if isinstance(outcome, httpx.Response) and outcome.is_success:
            return outcome
        error = status_error(outcome) if isinstance(outcome, httpx.Response) else connection_error(outcome)
        if attempt >= max_retries or not error.retryable:
            raise error
        yield Sleep(retry_delay(error, attempt, rng))
        attempt += 1


def retry_delay(error: ReelqError, attempt: int, rng: Callable[[], float] = random.random) -> float:
    """The server's Retry-After when it gave one, else exponential backoff with jitter."""
    asked = error.retry_after if isinstance(error, APIError) else None
    return asked if asked is not None else backoff_delay(attempt, rng)


def task_flow(request: httpx.Request, *, max_retries: int) -> Flow[Task]:
    """Send a request whose answer is a task object."""
    response = yield from request_flow(request, max_retries=max_retries)
    return parse_task(response)


def parse_task(response: httpx.Response) -> Task:
    """The Task in a 2xx response; APIResponseValidationError when the body is not a task object."""
    try:
        return Task.from_dict(response.json())
    except ValueError as exc:
        raise APIResponseValidationError(
            f"The response is not a task object: {exc}.",
            status_code=response.status_code,
            code="invalid_response",
            headers=response.headers,
        ) from exc


def wait_flow(
    task_id: str,
    poll: Callable[[int, float], httpx.Request],
    *,
    timeout: float,
    poll_interval: float,
    max_interval: float,
    max_retries: int,
    on_update: Callable[[Task], Any] | None,
    long_poll: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
    rng: Callable[[], float] = random.random,
) -> Flow[Task]:
    """Wait until the task is terminal and return it (failed is a result, not an error).

    `poll(wait, request_timeout)` builds one status request, a long-poll (`?wait=N`) when `wait` >= 1.
    With `long_poll` > 0 each read asks the server to hold it up to that many seconds (less near the
    deadline): a server that long-polls answers the moment the task ends, and the next read goes out
    at once. An answer that came back sooner, not finished (a server without long-polls ignores
    `?wait=`), is followed by a pause: the server's polling hint (`x-poll-after-ms`) when it sent one,
    else `poll_interval` growing to `max_interval`; never more than `max_interval`.

    The deadline covers everything, retries and Retry-After pauses included. A 429 is the server pacing
    us: its pause is honoured and never counts against `max_retries`, which bounds only consecutive
    other transient failures (connection, 5xx).
    """
    if timeout < 0 or poll_interval <= 0:
        raise ValueError("wait needs timeout >= 0 and poll_interval > 0")
    max_interval = max(max_interval, poll_interval)
    deadline = clock() + timeout
    interval = poll_interval
    failures = 0
    last: Task | None = None
    while True:
        error: ReelqError | None = None
        remaining = deadline - clock()
        hold = int(min(long_poll, remaining)) if long_poll > 0 else 0
        request_timeout = max(remaining, MIN_POLL_TIMEOUT)
        sent = clock()
        try:
            response = yield from request_flow(poll(hold, request_timeout), max_retries=0)
            task = parse_task(response)
        except (APIError, APIConnectionError) as exc:
            if not exc.retryable:
                raise
            if not isinstance(exc, RateLimitError):
                failures += 1
                if failures > max_retries:
                    raise
            error, delay = exc, max(retry_delay(exc, max(failures - 1, 0), rng), interval)
        else:
            failures, last = 0, task
            if on_update is not None:
                yield Notify(on_update, task)
            if task.done:
                return task
            hint = poll_hint(response)
            if hold >= 1 and clock() - sent >= hold - LONG_POLL_SLACK:
                delay = 0.0  # the server held the read for the time asked: ask again at once
            elif hint is not None:
                delay = min(hint, max_interval)
            else:
                delay = interval
                interval = min(interval * POLL_GROWTH, max_interval)
        remaining = deadline - clock()
        if remaining <= 0:
            raise WaitTimeout(task_id, timeout, last) from error
        if delay > 0:
            yield Sleep(min(delay, remaining))


def poll_hint(response: httpx.Response) -> float | None:
    """The server's polling hint (`x-poll-after-ms`) in seconds, or None when absent or unreadable."""
    value = response.headers.get(POLL_AFTER_HEADER)
    if value is None or not value.strip().isdigit():
        return None
    return int(value) / 1000


def list_flow(request: httpx.Request, *, max_retries: int) -> Flow[TaskList]:
    """Send a list request; the page as a TaskList."""
    response = yield from request_flow(request, max_retries=max_retries)
    try:
        return TaskList.from_dict(response.json())
    except ValueError as exc:
        raise APIResponseValidationError(
            f"The response is not a task list: {exc}.",
            status_code=response.status_code,
            code="invalid_response",
            headers=response.headers,
        ) from exc


def delete_flow(request: httpx.Request, *, max_retries: int) -> Flow[None]:
    """Send a delete request (retried like any: a repeat after a lost answer is a 404, raised)."""
    yield from request_flow(request, max_retries=max_retries)
    return None


def deliveries_flow(request: httpx.Request, *, max_retries: int) -> Flow[list[Delivery]]:
    """Read a task's webhook delivery attempts."""
    response = yield from request_flow(request, max_retries=max_retries)
    return parse_deliveries(response)


def models_flow(request: httpx.Request, *, max_retries: int) -> Flow[list[dict[str, Any]]]:
    """Read the served models (GET /v1/models): each a dict of the server's fields (SPEC §7)."""
    response = yield from request_flow(request, max_retries=max_retries)
    data = response.json().get("data")
    return [m for m in data if isinstance(m, dict)] if isinstance(data, list) else []


def download_flow(request: httpx.Request, path: Path, *, max_retries: int) -> Flow[Path]:
    """Fetch a video URL (streamed, retried like any request) and save it to `path`."""
    response = yield from request_flow(request, max_retries=max_retries, stream=True)
    saved: Path = yield Save(response, path)
    return saved


@contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A file that appears at `path` only complete: written beside it under a temporary name, synced,
    then renamed over it. On any error the partial file is removed and `path` is left untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory, so the rename is atomic; "x" mode, so the file gets the usual umask permissions.
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.part")
    try:
        with open(temp, "xb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
