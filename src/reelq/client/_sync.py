"""The blocking client: runs the shared flows with httpx.Client and time.sleep."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from reelq.client._base import BaseClient
from reelq.client._errors import APIConnectionError, ReelqError, connection_error, status_error
from reelq.client._events import EventParser
from reelq.client._flows import Flow, Notify, Save, Send, Sleep, atomic_file, retry_delay
from reelq.client._task import Task, TaskList
from reelq.client._webhooks import Delivery

T = TypeVar("T")


class Client(BaseClient[Task, Path, TaskList, None, httpx.Client]):
    """Blocking reelq client: `create`, `get`, `wait`, `download`, `create_and_wait`, `deliveries`.

    Use it as a context manager, or call `close()`, to release its connections.
    """

    _http_class = httpx.Client

    def close(self) -> None:
        """Close the connection pool (unless the httpx client was passed in)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def events(self, task_id: str, *, last_event_id: str | None = None) -> Iterator[Task]:
        """Follow the task's server-sent events: yields the task at each status or progress change, the
        last one terminal. A dropped stream is reopened with `Last-Event-ID`, so the terminal event is
        never missed (up to `max_retries` failed reopenings in a row, with backoff). Raises the typed
        APIError the server answers (NotFoundError also where a server has no events route: fall back
        to `wait`)."""
        parser = EventParser(last_event_id)
        failures = 0
        while True:
            try:
                response = self._http.send(self._events_request(task_id, parser.last_event_id), stream=True)
            except httpx.HTTPError as exc:
                error: ReelqError = connection_error(exc)
            else:
                try:
                    if response.status_code == 204:
                        return  # the terminal event was already seen
                    if not response.is_success:
                        response.read()
                        error = status_error(response)
                        if not error.retryable:
                            raise error
                    else:
                        for line in response.iter_lines():
                            task = parser.feed(line)
                            if task is not None:
                                failures = 0
                                yield task
                                if task.done:
                                    return
                        error = APIConnectionError("The event stream ended early.", retryable=True)
                except httpx.HTTPError as exc:
                    error = connection_error(exc)
                finally:
                    response.close()
            failures += 1
            if failures > self.max_retries or not error.retryable:
                raise error
            self._sleep(retry_delay(error, failures - 1))

    def models(self) -> list[dict[str, Any]]:
        """The models the key may use, in the server's order, with what each accepts (GET /v1/models)."""
        result: list[dict[str, Any]] = self._run(self._models_flow())
        return result

    def deliveries(self, task_id: str) -> list[Delivery]:
        """Every webhook delivery attempt of the task, oldest first (GET /v1/vidu/videos/{id}/deliveries)."""
        result: list[Delivery] = self._run(self._deliveries_flow(task_id))
        return result

    @staticmethod
    def _sleep(seconds: float) -> None:
        time.sleep(seconds)

    def _run(self, flow: Flow[T]) -> T:
        outcome: object = None
        while True:
            try:
                action = flow.send(outcome)
            except StopIteration as stop:
                return stop.value
            outcome = None
            if isinstance(action, Send):
                outcome = self._send(action)
            elif isinstance(action, Sleep):
                self._sleep(action.seconds)
            elif isinstance(action, Notify):
                action.callback(action.task)
            elif isinstance(action, Save):
                outcome = self._save(action.response, action.path)

    def _send(self, action: Send) -> httpx.Response | httpx.HTTPError:
        try:
            response = self._http.send(action.request, stream=action.stream, follow_redirects=action.stream)
            if action.stream and not response.is_success:
                # Error bodies are small and the flow reads them; the stream is not needed past that.
                try:
                    response.read()
                finally:
                    response.close()
        except httpx.HTTPError as exc:  # the flow decides whether it is worth another try
            return exc
        return response

    @staticmethod
    def _save(response: httpx.Response, path: Path) -> Path:
        try:
            with atomic_file(path) as file:
                for chunk in response.iter_bytes():
                    file.write(chunk)
        finally:
            response.close()
        return path
