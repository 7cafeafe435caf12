"""The long-poll hub (service/longpoll.py) on a real event loop, with a change counter the test moves."""

from __future__ import annotations

import asyncio
import threading

from reelq.service.longpoll import TICK, LongPollHub

# Generous bounds: the hub answers within a tick (20 ms), but the test box may be loaded.
PROMPTLY = 5.0


class Counter:
    def __init__(self) -> None:
        self.value = 7

    def __call__(self) -> int:
        return self.value


async def _still_waiting(task: asyncio.Task[None], ticks: int = 5) -> bool:
    await asyncio.sleep(TICK * ticks)
    return not task.done()


def test_a_waiter_is_woken_when_the_version_moves_and_not_before() -> None:
    counter = Counter()
    hub = LongPollHub(counter, threading.Event())

    async def scenario() -> None:
        seen = hub.version()
        waiting = asyncio.create_task(hub.wait(60, seen))
        assert await _still_waiting(waiting)  # several ticks with the same version: nobody woken
        counter.value += 1
        await asyncio.wait_for(waiting, PROMPTLY)

    asyncio.run(scenario())


def test_a_version_that_moved_before_the_wait_returns_at_once() -> None:
    counter = Counter()
    hub = LongPollHub(counter, threading.Event())

    async def scenario() -> None:
        seen = hub.version()
        counter.value += 1  # a commit between reading the row and starting to wait
        await asyncio.wait_for(hub.wait(60, seen), PROMPTLY)

    asyncio.run(scenario())


def test_the_timeout_is_honoured_without_a_change() -> None:
    counter = Counter()
    hub = LongPollHub(counter, threading.Event())

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(hub.wait(0.2, hub.version()), PROMPTLY)
        return loop.time() - started

    assert asyncio.run(scenario()) >= 0.19


def test_a_shutdown_wakes_every_waiter_and_later_waits_do_not_block() -> None:
    draining = threading.Event()
    hub = LongPollHub(Counter(), draining)

    async def scenario() -> None:
        waiting = [asyncio.create_task(hub.wait(60, hub.version())) for _ in range(3)]
        assert await _still_waiting(waiting[0])
        draining.set()  # set from another thread in production: uvicorn's signal handler
        await asyncio.wait_for(asyncio.gather(*waiting), PROMPTLY)
        await asyncio.wait_for(hub.wait(60, hub.version()), PROMPTLY)

    asyncio.run(scenario())


def test_a_client_hanging_up_ends_its_wait_only() -> None:
    hub = LongPollHub(Counter(), threading.Event())

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        gone: asyncio.Future[None] = loop.create_future()
        hung_up = asyncio.create_task(hub.wait(60, hub.version(), gone))
        other = asyncio.create_task(hub.wait(60, hub.version()))
        assert await _still_waiting(hung_up)
        gone.set_result(None)
        await asyncio.wait_for(hung_up, PROMPTLY)
        assert await _still_waiting(other)
        other.cancel()

    asyncio.run(scenario())


def test_without_a_change_counter_waiters_are_woken_on_the_fallback_tick() -> None:
    hub = LongPollHub(None, threading.Event())  # PostgreSQL: no shared counter to watch

    async def scenario() -> None:
        assert hub.version() is None
        await asyncio.wait_for(hub.wait(60, None), PROMPTLY)  # woken by FALLBACK_TICK, not after 60 s

    asyncio.run(scenario())
