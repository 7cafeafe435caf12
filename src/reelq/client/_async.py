"""The asyncio client: runs the shared flows with httpx.AsyncClient and asyncio.sleep."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Coroutine
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


class AsyncClient(
    BaseClient[
        Coroutine[Any, Any, Task],
        Coroutine[Any, Any, Path],
        Coroutine[Any, Any, TaskList],
        Coroutine[Any, Any, None],
        httpx.AsyncClient,
    ]
):
    """Asyncio reelq client: the same methods as Client, each returning a coroutine to await.

    Use it as an async context manager, or `await close()`, to release its connections.
    """

    _http_class = httpx.AsyncClient

    async def close(self) -> None:
        """Close the connection pool (unless the httpx client was passed in)."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def events(self, task_id: str, *, last_event_id: str | None = None) -> AsyncIterator[Task]:
        """Follow the task's server-sent events: yields the task at each status or progress change, the
        last one terminal. A dropped stream is reopened with `Last-Event-ID`, so the terminal event is
        never missed (up to `max_retries` failed reopenings in a row, with backoff). Raises the typed
        APIError the server answers (NotFoundError also where a server has no events route: fall back
        to `wait`)."""
        parser = EventParser(last_event_id)
        failures = 0
        while True:
            try:
                response = await self._http.send(
                    self._events_request(task_id, parser.last_event_id), stream=True
                )
            except httpx.HTTPError as exc:
                error: ReelqError = connection_error(exc)
            else:
                try:
                    if response.status_code == 204:
                        return  # the terminal event was already seen
                    if not response.is_success:
                        await response.aread()
                        error = status_error(response)
                        if not error.retryable:
                            raise error
                    else:
                        async for line in response.aiter_lines():
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
                    await response.aclose()
            failures += 1
            if failures > self.max_retries or not error.retryable:
                raise error
            await self._sleep(retry_delay(error, failures - 1))

    async def models(self) -> list[dict[str, Any]]:
        """The models the key may use, in the server's order, with what each accepts (GET /v1/models)."""
        result: list[dict[str, Any]] = await self._run(self._models_flow())
        return result

    async def deliveries(self, task_id: str) -> list[Delivery]:
        """Every webhook delivery attempt of the task, oldest first (GET /v1/vidu/videos/{id}/deliveries)."""
        result: list[Delivery] = await self._run(self._deliveries_flow(task_id))
        return result

    @staticmethod
    async def _sleep(seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def _run(self, flow: Flow[T]) -> T:
        outcome: object = None
        while True:
            try:
                action = flow.send(outcome)
            except StopIteration as stop:
                return stop.value
            outcome = None
            if isinstance(action, Send):
                outcome = await self._send(action)
            elif isinstance(action, Sleep):
                await self._sleep(action.seconds)
            elif isinstance(action, Notify):
                result = action.callback(action.task)
                if inspect.isawaitable(result):
                    await result
            elif isinstance(action, Save):
                outcome = await self._save(action.response, action.path)

    async def _send(self, action: Send) -> httpx.Response | httpx.HTTPError:
        try:
            response = await self._http.send(
                action.request, stream=action.stream, follow_redirects=action.stream
            )
            if action.stream and not response.is_success:
                # Error bodies are small and the flow reads them; the stream is not needed past that.
                try:
                    await response.aread()
                finally:
                    await response.aclose()
        except httpx.HTTPError as exc:  # the flow decides whether it is worth another try
            return exc
        return response

    @staticmethod
    async def _save(response: httpx.Response, path: Path) -> Path:
        # Plain file writes: chunks are small and local disks fast, not worth a thread hop per chunk.
        try:
            with atomic_file(path) as file:
                async for chunk in response.aiter_bytes():
                    file.write(chunk)
        finally:
            await response.aclose()
        return path
