"""The public API, defined once: configuration, request building and the flows behind each method."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from reelq import __version__
from reelq.client._errors import ReelqError
from reelq.client._flows import (
    Flow,
    download_flow,
    new_idempotency_key,
    task_flow,
    wait_flow,
)
from reelq.client._task import Task

# What each public method returns: plain values for Client, coroutines of them for AsyncClient.
TaskResult = TypeVar("TaskResult")
PathResult = TypeVar("PathResult")

DEFAULT_MODEL = "viduq3-turbo"
_USER_AGENT = f"reelq-python/{__version__}"


def _resolve(value: str | None, env: str, what: str) -> str:
    value = value if value is not None else os.environ.get(env)
    if not value:
        raise ReelqError(f"No {what}: pass it to the client or set {env}.")
    return value


class BaseClient(Generic[TaskResult, PathResult]):
    """Shared by Client and AsyncClient; subclasses supply `_run` (how a flow's actions are performed)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
    ) -> None:
        base_url = _resolve(base_url, "REELQ_BASE_URL", "base URL").rstrip("/")
        try:
            url = httpx.URL(base_url)
        except httpx.InvalidURL as exc:
            raise ReelqError(f"Invalid base URL {base_url!r}: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ReelqError(f"Invalid base URL {base_url!r}: expected http(s)://host[:port][/root-path].")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        #: The server's address, with the root path if it has one (e.g. http://host/kyyReactApiServer).
        self.base_url = base_url
        self.api_key = _resolve(api_key, "REELQ_API_KEY", "API key")
        self.timeout = timeout
        self.max_retries = max_retries

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    # The public API. Each method only builds a flow; `_run` performs it.

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

        Fields left as None are not sent (the server applies its defaults); `extra` adds other body
        fields. One Idempotency-Key (given or generated) covers this call and all its retries, so a
        retried create never makes a second task.
        """
        fields = {
            "model": model,
            "prompt": prompt,
            "duration": duration,
            "aspect_ratio": aspect_ratio,
            "resolution": resolution,
            "first_image": first_image,
            "last_image": last_image,
            "seed": seed,
            "callback_url": callback_url,
            **extra,
        }
        body = {key: value for key, value in fields.items() if value is not None}
        request = self._api_request(
            "POST", "/v1/vidu/videos", json=body,
            headers={"Idempotency-Key": idempotency_key or new_idempotency_key()},
        )
        return self._run(task_flow(request, max_retries=self.max_retries))

    def get(self, task_id: str) -> TaskResult:
        """The task's current state (GET /v1/result/{id})."""
        return self._run(task_flow(self._result_request(task_id), max_retries=self.max_retries))

    def wait(
        self,
        task_id: str,
        *,
        timeout: float = 600,
        poll_interval: float = 1.0,
        max_interval: float = 10.0,
        on_update: Callable[[Task], Any] | None = None,
    ) -> TaskResult:
        """Poll until the task is `completed` or `failed` and return it (a failed task is returned, not
        raised: look at `task.ok` and `task.error`).

        Polls start `poll_interval` apart and spread out to `max_interval`; `on_update` is called with
        every state read (AsyncClient also awaits it when it returns an awaitable). A 429 pauses for its
        Retry-After; up to `max_retries` consecutive other transient failures are ridden out.
        Raises WaitTimeout when `timeout` seconds have passed overall.
        """
        self._result_request(task_id)  # reject a bad id now rather than on the first poll

        def poll(request_timeout: float) -> httpx.Request:
            return self._result_request(task_id, timeout=min(self.timeout, request_timeout))

        flow = wait_flow(
            task_id, poll, timeout=timeout, poll_interval=poll_interval, max_interval=max_interval,
            max_retries=self.max_retries, on_update=on_update,
        )
        return self._run(flow)

    def create_and_wait(
        self,
        *,
        prompt: str,
        timeout: float = 600,
        poll_interval: float = 1.0,
        max_interval: float = 10.0,
        on_update: Callable[[Task], Any] | None = None,
        **params: Any,
    ) -> TaskResult:
        """`create(prompt=..., **params)` then `wait` on it; returns the terminal Task.

        `timeout` covers the waiting, not the create."""
        return self._run(self._create_and_wait_flow(
            prompt, params, timeout=timeout, poll_interval=poll_interval, max_interval=max_interval,
            on_update=on_update,
        ))

    def download(self, task_or_url: Task | str, path: str | os.PathLike[str]) -> PathResult:
        """Save the task's video (or the video at this URL) to `path` and return it as a Path.

        The file appears only complete (temp file beside it, then rename). No Authorization header is
        sent: video URLs are signed and may point at other hosts (S3). Raises ReelqError if the task has
        no video_url (not completed), GoneError (410) once the link has expired.
        """
        if isinstance(task_or_url, Task):
            if not task_or_url.video_url:
                raise ReelqError(f"Task {task_or_url.id} has no video_url (status: {task_or_url.status}).")
            url = task_or_url.video_url
        else:
            url = task_or_url
        # A relative URL is taken as the server's own; absolute ones (S3) are used as they are.
        absolute = httpx.URL(self.base_url + "/").join(url)
        request = self._http_request("GET", absolute, timeout=self.timeout)
        # A header set on a caller-supplied httpx client must not leak the key to a file host either.
        request.headers.pop("Authorization", None)
        return self._run(download_flow(request, Path(path), max_retries=self.max_retries))

    # Plumbing.

    def _run(self, flow: Flow[Any]) -> Any:
        raise NotImplementedError

    def _http_request(self, method: str, url: httpx.URL | str, **kwargs: Any) -> httpx.Request:
        raise NotImplementedError

    def _create_and_wait_flow(
        self, prompt: str, params: dict[str, Any], **wait: Any
    ) -> Flow[Task]:
        created: Task = yield from self._create_flow_of(prompt, params)
        done: Task = yield from self._wait_flow_of(created.id, wait)
        return done

    def _create_flow_of(self, prompt: str, params: dict[str, Any]) -> Flow[Task]:
        raise NotImplementedError

    def _wait_flow_of(self, task_id: str, wait: dict[str, Any]) -> Flow[Task]:
        raise NotImplementedError

    def _result_request(self, task_id: str, timeout: float | None = None) -> httpx.Request:
        if not isinstance(task_id, str) or not task_id.strip(". "):
            raise ValueError(f"invalid task id {task_id!r}")
        # Quoted, so an id can never climb out of /v1/result/.
        return self._api_request("GET", f"/v1/result/{quote(task_id, safe='')}", timeout=timeout)

    def _api_request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Request:
        return self._http_request(
            method,
            self.base_url + path,
            json=json,
            headers={
                "Authorization": f"Bearer {self.api_key}",
                "Accept": "application/json",
                "User-Agent": _USER_AGENT,
                **(headers or {}),
            },
            timeout=self.timeout if timeout is None else timeout,
        )
