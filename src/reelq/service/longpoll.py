"""Held `?wait=` long-polls, woken when the database changes instead of each re-reading on a timer.

A long-poll waits for its task to finish. Workers finish tasks in other processes, so there
is nothing in-process to subscribe to; but every commit that changes a task moves the
shared change counter (database/changes.py), and looking at it is a memory read. One
coroutine per API process watches it every TICK while any long-poll is held and wakes the
long-polls whose counter value is out of date, which then re-read their row. An idle
long-poll costs nothing between changes, and a finished task is answered within a tick of
its commit instead of after a backed-off re-read interval. A shutdown wakes them all.

On PostgreSQL the counter is moved by the database's change notices (database/pgnotify.py), so
the same watcher serves every API replica. Without any counter the watcher wakes every held
long-poll each FALLBACK_TICK instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable

TICK = 0.02
FALLBACK_TICK = 0.5


class LongPollHub:
    def __init__(self, changes: Callable[[], int] | None, draining: threading.Event) -> None:
        self._changes = changes
        self._draining = draining
        self._waiters: dict[asyncio.Future[None], int | None] = {}  # waiter -> counter value it saw
        self._watcher: asyncio.Task[None] | None = None

    def version(self) -> int | None:
        """Take this *before* reading the row, and pass it to `wait`."""
        return self._changes() if self._changes else None

    async def wait(self, timeout: float, seen: int | None, gone: asyncio.Future[None] | None = None) -> None:
        """Return once the database changed since `seen`, a shutdown began, `gone` completed
        (the client hung up), or `timeout` passed."""
        if self._draining.is_set() or (seen is not None and self.version() != seen):
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake(_: object) -> None:
            if not waiter.done():
                waiter.set_result(None)

        if gone is not None:
            gone.add_done_callback(wake)
        self._waiters[waiter] = seen
        self._ensure_watcher()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, timeout)
        finally:
            self._waiters.pop(waiter, None)
            if gone is not None:
                gone.remove_done_callback(wake)

    def _ensure_watcher(self) -> None:
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="reelq-long-polls")

    async def _watch(self) -> None:
        # A waiter is registered only while the counter still shows the value it saw (`wait`
        # checks), so between two ticks with the same value there is nobody to wake: a tick
        # is one memory read. `last` starts unknown, so the first tick looks at everyone.
        last: int | None = None
        while self._waiters:
            await asyncio.sleep(TICK if self._changes else FALLBACK_TICK)
            now = self.version()
            draining = self._draining.is_set()
            if now is not None and now == last and not draining:
                continue
            last = now
            everyone = draining or now is None
            for waiter, seen in list(self._waiters.items()):
                if (everyone or seen != now) and not waiter.done():
                    waiter.set_result(None)
