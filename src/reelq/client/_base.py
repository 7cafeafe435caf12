"""The public API, defined once for both clients: configuration, requests, and the flow behind each
method. `Client` and `AsyncClient` only say how a flow's actions are performed (`_run`)."""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar, cast
from urllib.parse import quote

import httpx

from reelq import __version__
from reelq.client._errors import ReelqError
from reelq.client._events import EVENTS_READ_TIMEOUT
from reelq.client._flows import (
    MIN_POLL_TIMEOUT,
    Flow,
    delete_flow,
    deliveries_flow,
    download_flow,
    list_flow,
    models_flow,
    new_idempotency_key,
    task_flow,
    wait_flow,
)
from reelq.client._task import Task

# What the public methods return (plain values for Client, coroutines of them for AsyncClient), and
# the httpx client class underneath.
TaskResult = TypeVar("TaskResult")
PathResult = TypeVar("PathResult")
ListResult = TypeVar("ListResult")
DeleteResult = TypeVar("DeleteResult")
Http = TypeVar("Http", httpx.Client, httpx.AsyncClient)

DEFAULT_MODEL = "viduq3-turbo"
_USER_AGENT = f"reelq-python/{__version__}"


# How long `wait` asks the server to hold each read (`?wait=`): below common proxy idle timeouts; with
# an `on_update` callback, short, so that progress is reported every few seconds.
LONG_POLL_SECONDS = 30.0
LONG_POLL_WITH_UPDATES = 2.0


class BaseClient(Generic[TaskResult, PathResult, ListResult, DeleteResult, Http]):
    """What Client and AsyncClient share; not used directly."""

    _http_class: ClassVar[type[httpx.Client] | type[httpx.AsyncClient]]

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        http_client: Http | None = None,
    ) -> None:
        """`base_url` (default: $REELQ_BASE_URL) may carry a root path, e.g. `http://host/kyyReactApiServer`;
        `api_key` defaults to $REELQ_API_KEY. `timeout` applies to each HTTP request, `max_retries` to
        transient failures (connection errors, 408, 429, 500, 502, 503, 504). A given `http_client` is
        used as is and left open by `close()`."""
        #: The server's address, root path included, without a trailing slash.
        if base_url is None or api_key is None:
            # Imported here: only a client that relies on the environment pays for pydantic-settings.
            from reelq.client._settings import ClientSettings

            env = ClientSettings()
            base_url = env.base_url if base_url is None else base_url
            api_key = env.api_key if api_key is None else api_key
        self.base_url = _base_url(base_url)
        self.api_key = api_key or ""
        if not self.api_key:
            raise ReelqError("No API key: pass api_key= or set REELQ_API_KEY.")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if http_client is not None and not isinstance(http_client, self._http_class):
            raise TypeError(
                f"http_client must be an {self._http_class.__module__}.{self._http_class.__name__}"
            )
        self.timeout = timeout
        self.max_retries = max_retries
        # Created last, so that a configuration error leaves no open connection pool behind.
        self._owns_http = http_client is None
        self._http: Http = cast(
            Http, self._http_class(timeout=timeout) if http_client is None else http_client
        )

    def __repr__(self) -> str:  # never shows the key
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def create(
        self,
        *,
        prompt: str,
        model: str = DEFAULT_MODEL,
        duration: int | None = None,
        aspect_ratio: str | None = None,
        resolution: str | None = None,
        first_image: str | None = None,
        last_image: str | None = None,
        seed: int | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
        **extra: Any,
    ) -> TaskResult:
        """Create a task (POST /v1/vidu/videos) and return it, `queued`.

        Fields left None are not sent (the server applies its defaults); `extra` adds body fields.
        One Idempotency-Key (given, or generated per call) covers all retries of this call, so a
        retried create never makes a second task.
        """
        body = _body(
            prompt=prompt,
            model=model,
            duration=duration,
            aspect_ratio=aspect_ratio,
            resolution=resolution,
            first_image=first_image,
            last_image=last_image,
            seed=seed,
            callback_url=callback_url,
            **extra,
        )
        return self._task(self._create_flow(body, idempotency_key))

    def get(self, task_id: str) -> TaskResult:
        """The task's current state (GET /v1/result/{id})."""
        return self._task(task_flow(self._result_request(task_id), max_retries=self.max_retries))

    def wait(
        self,
        task_id: str,
        *,
        timeout: float = 600,
        poll_interval: float = 1.0,
        max_interval: float = 10.0,
        on_update: Callable[[Task], Any] | None = None,
        long_poll: float | None = None,
    ) -> TaskResult:
        """Wait until the task is `completed` or `failed` and return it. A failed task is a result, not
        an exception: check `task.ok` and `task.error`.

        Each read is a long-poll (`?wait=`, `long_poll` seconds: 30, or 2 with `on_update`; 0 turns
        it off): the server answers the moment the task ends. Where the server does not hold reads,
        this falls back to polling, as often as the server's `x-poll-after-ms` hint says, else starting
        `poll_interval` apart and spreading out to `max_interval` (never longer). `on_update` gets every
        state read (AsyncClient awaits it if it returns an awaitable). A 429 pauses for its Retry-After
        without counting as a failure; more than `max_retries` consecutive other transient failures
        raise. Raises WaitTimeout once `timeout` seconds have passed in all.
        """
        return self._task(
            self._wait_flow(
                task_id,
                timeout=timeout,
                poll_interval=poll_interval,
                max_interval=max_interval,
                on_update=on_update,
                long_poll=long_poll,
            )
        )

    def list(
        self, *, limit: int | None = None, cursor: str | None = None, status: str | None = None
    ) -> ListResult:
        """One page of this key's tasks, newest first (GET /v1/vidu/videos): a TaskList whose
        `next_cursor`, passed back as `cursor`, gives the next page (None on the last)."""
        params = {"limit": limit, "cursor": cursor, "status": status}
        request = self._api_request(
            "GET", "/v1/vidu/videos", params={k: v for k, v in params.items() if v is not None}
        )
        return cast(ListResult, self._run(list_flow(request, max_retries=self.max_retries)))

    def cancel(self, task_id: str) -> TaskResult:
        """Cancel a task (POST /v1/vidu/videos/{id}/cancel); returns it, `failed` "Cancelled by user.".

        A queued task is cancelled at once, a rendering one stops within seconds; it is never charged.
        Cancelling a cancelled task again returns it; one that had already completed or failed raises
        ConflictError (left unchanged)."""
        request = self._api_request("POST", f"/v1/vidu/videos/{_quoted_id(task_id)}/cancel")
        return self._task(task_flow(request, max_retries=self.max_retries))

    def delete(self, task_id: str) -> DeleteResult:
        """Delete a task and its video (DELETE /v1/vidu/videos/{id}), cancelling it first if it runs.
        Its id then raises NotFoundError and its video link stops working."""
        request = self._api_request("DELETE", f"/v1/vidu/videos/{_quoted_id(task_id)}")
        return cast(DeleteResult, self._run(delete_flow(request, max_retries=self.max_retries)))

    def create_and_wait(
        self,
        *,
        prompt: str,
        timeout: float = 600,
        poll_interval: float = 1.0,
        max_interval: float = 10.0,
        on_update: Callable[[Task], Any] | None = None,
        idempotency_key: str | None = None,
        **params: Any,
    ) -> TaskResult:
        """`create(prompt=prompt, **params)`, then `wait` for it (`timeout` covers the waiting)."""
        body = _body(prompt=prompt, **params)
        return self._task(
            self._create_and_wait_flow(
                body,
                idempotency_key,
                timeout=timeout,
                poll_interval=poll_interval,
                max_interval=max_interval,
                on_update=on_update,
            )
        )

    def download(self, task_or_url: Task | str, path: str | os.PathLike[str]) -> PathResult:
        """Save the task's video (or the video at this URL) to `path`; returns it as a Path.

        The file appears only when complete (written beside it, then renamed). No Authorization header
        is sent: video URLs are signed and may be on another host (S3). Raises ReelqError if the task
        has no video_url (not completed), GoneError (410) once the link has expired.
        """
        if isinstance(task_or_url, Task):
            if not task_or_url.video_url:
                raise ReelqError(f"Task {task_or_url.id} has no video_url (status: {task_or_url.status}).")
            url = task_or_url.video_url
        else:
            url = task_or_url
        # A relative URL is the server's own; an absolute one (S3) is used as it is.
        request = self._http.build_request(
            "GET",
            httpx.URL(self.base_url + "/").join(url),
            headers={"User-Agent": _USER_AGENT},
            timeout=self.timeout,
        )
        # Default headers of a caller's httpx client must not hand the key to a file host either.
        request.headers.pop("Authorization", None)
        return self._path(download_flow(request, Path(path), max_retries=self.max_retries))

    def _deliveries_flow(self, task_id: str) -> Flow[Any]:
        """The flow behind `deliveries` (Client and AsyncClient type the method)."""
        self._result_request(task_id)  # the same check of the id
        path = f"/v1/vidu/videos/{quote(task_id, safe='')}/deliveries"
        return deliveries_flow(self._api_request("GET", path), max_retries=self.max_retries)

    def _models_flow(self) -> Flow[builtins.list[dict[str, Any]]]:  # `list` here is the method
        """The flow behind `models` (Client and AsyncClient type the method)."""
        return models_flow(self._api_request("GET", "/v1/models"), max_retries=self.max_retries)

    def _run(self, flow: Flow[Any]) -> Any:
        """Perform the flow's actions and return its result (AsyncClient: a coroutine of it)."""
        raise NotImplementedError

    def _task(self, flow: Flow[Task]) -> TaskResult:
        return cast(TaskResult, self._run(flow))

    def _path(self, flow: Flow[Path]) -> PathResult:
        return cast(PathResult, self._run(flow))

    def _create_flow(self, body: dict[str, Any], idempotency_key: str | None) -> Flow[Task]:
        headers = {"Idempotency-Key": idempotency_key or new_idempotency_key()}
        request = self._api_request("POST", "/v1/vidu/videos", json=body, headers=headers)
        return task_flow(request, max_retries=self.max_retries)

    def _wait_flow(
        self,
        task_id: str,
        *,
        timeout: float,
        poll_interval: float,
        max_interval: float,
        on_update: Callable[[Task], Any] | None,
        long_poll: float | None = None,
    ) -> Flow[Task]:
        self._result_request(task_id)  # a bad id fails here, not on the first poll
        if long_poll is None:
            long_poll = LONG_POLL_SECONDS if on_update is None else LONG_POLL_WITH_UPDATES

        def poll(wait: int, request_timeout: float) -> httpx.Request:
            # A held read gets its holding time on top of the usual timeout.
            timeout = min(self.timeout, max(request_timeout - wait, MIN_POLL_TIMEOUT)) + wait
            return self._result_request(task_id, timeout=timeout, wait=wait)

        return wait_flow(
            task_id,
            poll,
            timeout=timeout,
            poll_interval=poll_interval,
            max_interval=max_interval,
            max_retries=self.max_retries,
            on_update=on_update,
            long_poll=long_poll,
        )

    def _create_and_wait_flow(
        self, body: dict[str, Any], idempotency_key: str | None, **wait: Any
    ) -> Flow[Task]:
        created = yield from self._create_flow(body, idempotency_key)
        done = yield from self._wait_flow(created.id, **wait)
        return done

    def _result_request(self, task_id: str, timeout: float | None = None, wait: int = 0) -> httpx.Request:
        params = {"wait": str(wait)} if wait >= 1 else None
        return self._api_request("GET", f"/v1/result/{_quoted_id(task_id)}", timeout=timeout, params=params)

    def _events_request(self, task_id: str, last_event_id: str | None) -> httpx.Request:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        request = self._api_request("GET", f"/v1/result/{_quoted_id(task_id)}/events", headers=headers)
        request.extensions["timeout"] = httpx.Timeout(
            self.timeout, read=max(self.timeout, EVENTS_READ_TIMEOUT)
        ).as_dict()
        return request

    def _api_request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        params: dict[str, Any] | None = None,
    ) -> httpx.Request:
        return self._http.build_request(
            method,
            self.base_url + path,
            json=json,
            params=params,
            headers={
                "Authorization": f"Bearer {self.api_key}",
                "Accept": "application/json",
                "User-Agent": _USER_AGENT,
                **(headers or {}),
            },
            timeout=self.timeout if timeout is None else timeout,
        )


def _quoted_id(task_id: str) -> str:
    """A task id as a path segment: quoted, so no id can climb out of its route."""
    if not isinstance(task_id, str) or not task_id.strip(". "):
        raise ValueError(f"invalid task id {task_id!r}")
    return quote(task_id, safe="")


def _base_url(value: str | None) -> str:
    if not value:
        raise ReelqError("No base URL: pass base_url= or set REELQ_BASE_URL.")
    value = value.rstrip("/")
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise ReelqError(f"Invalid base URL {value!r}: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host or url.query or url.fragment:
        raise ReelqError(f"Invalid base URL {value!r}: expected http(s)://host[:port][/root-path].")
    return value


def _body(*, prompt: str, model: str = DEFAULT_MODEL, **fields: Any) -> dict[str, Any]:
    """The create body: None means "not sent", so the server's defaults apply."""
    return {
        key: value for key, value in {"model": model, "prompt": prompt, **fields}.items() if value is not None
    }
