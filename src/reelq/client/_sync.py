"""The blocking client: runs the shared flows with httpx.Client and time.sleep."""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import httpx

from reelq.client._base import BaseClient
from reelq.client._flows import Flow, Notify, Save, Send, Sleep, atomic_file
from reelq.client._task import Task
from reelq.client._webhooks import Delivery

T = TypeVar("T")


class Client(BaseClient[Task, Path, httpx.Client]):
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
                return stop.value  # type: ignore[no-any-return]
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
