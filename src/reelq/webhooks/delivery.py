"""The delivery loop: sends the webhook outbox (database/webhooks.py) signed, at least once, in order.

It runs in the `reelq serve` process on a thread of its own with its own event loop, so neither the
API's event loop nor any render waits for a receiver; database calls go to worker threads. It wakes
when the shared change counter moves (every status change bumps it: database/changes.py), when one of
its attempts ends, or when a retry falls due; an idle outbox costs one indexed read per wake-up and no
write. Without a counter (PostgreSQL) it looks every POLL_WITHOUT_COUNTER seconds.

Each attempt: hold the event (a lease, so that other `reelq serve` processes skip it), render the task
object as it was at the event (the same dict `GET /v1/result` answers), sign it with the key's secret,
resolve the callback's host and refuse private addresses (webhooks/targets.py), POST to the checked
address without following redirects, and record the attempt. A 2xx delivers; anything else (another
status, a timeout, a refused address, a connection error) is retried with exponential backoff and
jitter until REELQ_WEBHOOK_RETRY_FOR has passed since the event, then given up.

Fair across API keys: the lease takes due events round-robin over the keys, and one key's events hold
at most REELQ_WEBHOOK_CONCURRENCY_PER_KEY of the REELQ_WEBHOOK_CONCURRENCY slots at once, so a key
whose receiver hangs (or that queued hundreds of events) delays only its own deliveries. A process that dies
mid-attempt leaves a lease that lapses; the next sender tries again with the same `webhook-id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import certifi
import httpx
import orjson

from reelq.config import Settings
from reelq.database import TaskStore
from reelq.database.views import TaskView
from reelq.database.webhooks import OUTCOME_GIVEN_UP, WebhookEvent
from reelq.webhooks import targets
from reelq.webhooks.signing import signed_headers

log = logging.getLogger("reelq.webhooks")

COUNTER_TICK = 0.01  # how often the change counter is looked at (a load from shared memory)
POLL_WITHOUT_COUNTER = 0.1
MAX_IDLE = 1.0  # look at the outbox at least this often (events held by another process's lease)
LEASE_MARGIN = 5.0  # an attempt holds its event for the attempt's timeout plus this (to record it)
STOP_GRACE = 3.0  # attempts still running this long after a stop are abandoned (their leases handed back)
PURGE_INTERVAL = 60.0
MAX_CLIENTS = 64  # connection pools kept, one per (scheme, host, port) of a receiver
MAX_RESPONSE_BYTES = 65536  # read this much of an answer (so its connection can be reused), no more

Render = Callable[[TaskView, str], dict[str, Any]]


def backoff_delay(settings: Settings, attempt: int, rng: Callable[[], float] = random.random) -> float:
    """Seconds before retrying after the `attempt`-th failure: exponential, capped, jittered to [d/2, d]."""
    full = min(settings.webhook_backoff_max, settings.webhook_backoff_base * 2.0 ** min(attempt - 1, 60))
    return full / 2 + rng() * full / 2


def view_of(event: WebhookEvent) -> TaskView:
    """The task as it was when the event happened (where its video is stored included: an S3 link is
    presigned for the object), in the shape the service renders."""
    return TaskView(
        id=event.task_id,
        key_id=event.key_id,
        model=event.model,
        status=event.status,
        started_at=event.started_at,
        progress=event.progress,
        created_at=event.task_created_at,
        finished_at=event.finished_at,
        video_deleted=False,
        video_key=event.video_key,
        actual_duration=event.actual_duration,
        total_tokens=event.total_tokens,
        error=event.error,
    )


class WebhookDeliverer:
    """Delivers the outbox from a thread of its own until `stop()`."""

    def __init__(self, settings: Settings, store: TaskStore, render: Render, base_url: str) -> None:
        self.settings = settings
        self.store = store
        self.render = render  # TaskService.render: the task object exactly as GET /v1/result answers it
        self.base_url = base_url  # where video links in payloads point
        self.owner = f"{socket.gethostname()}:{os.getpid()}:webhooks"
        self.concurrency = settings.webhook_concurrency
        # A fair share: no key's sends hold more than this many of the process's slots.
        self.per_key = min(settings.webhook_concurrency_per_key, max(self.concurrency, 1))
        self.lease_seconds = settings.webhook_timeout + LEASE_MARGIN
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._started = threading.Event()
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        self._clients: OrderedDict[tuple[str, str, int | None], httpx.AsyncClient] = OrderedDict()
        self._tls = ssl.create_default_context(cafile=certifi.where())

    # --- life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        if self.concurrency <= 0:
            log.info("webhook delivery is off in this process (REELQ_WEBHOOK_CONCURRENCY=0)")
            return
        self._thread = threading.Thread(target=self._run, name="reelq-webhooks", daemon=True)
        self._thread.start()
        self._started.wait(5)

    def stop(self) -> None:
        """Stop claiming; give running attempts a moment, then hand their events back."""
        if self._thread is None:
            return
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)
        self._thread.join(STOP_GRACE + 5)
        self._thread = None

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:
            log.exception("the webhook delivery loop stopped unexpectedly")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop, self._wake = asyncio.Event(), asyncio.Event()
        self._started.set()
        try:
            await self._serve()
        finally:
            await self._wind_down()

    async def _wind_down(self) -> None:
        if self._in_flight:
            await asyncio.wait(list(self._in_flight.values()), timeout=STOP_GRACE)
        abandoned = list(self._in_flight)
        for task in self._in_flight.values():
            task.cancel()
        if abandoned:
            # Sent or not, these were not recorded: another sender (or this one after a restart) sends
            # them again, with the same webhook-id, without waiting for the lease to lapse.
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.store.release_webhooks, abandoned, self.owner)
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                await client.aclose()

    # --- the loop -------------------------------------------------------------------------------

    async def _serve(self) -> None:
        assert self._stop is not None
        counter = self.store.changes
        next_purge = time.monotonic()
        while not self._stop.is_set():
            # Before reading (see database/changes.py); progress commits queue no event: not a reason to look.
            seen = counter.transitions() if counter is not None else 0
            free = self.concurrency - len(self._in_flight)
            due: float | None = None
            try:
                if free > 0:
                    for event in await asyncio.to_thread(
                        self.store.claim_webhooks, self.owner, free, self.lease_seconds, self.per_key
                    ):
                        self._in_flight[event.id] = asyncio.create_task(self._attempt(event))
                due = await asyncio.to_thread(self.store.next_webhook_due)
                if time.monotonic() >= next_purge:
                    next_purge = time.monotonic() + PURGE_INTERVAL
                    await asyncio.to_thread(self.store.purge_webhooks, self.settings.task_retention)
            except Exception:
                log.exception("reading the webhook outbox failed; trying again shortly")
            now = time.time()
            # A due time in the past is an event held elsewhere or waiting its turn: the change that
            # frees it moves the counter (or ends one of our attempts), so no need to look sooner.
            until = now + MAX_IDLE if due is None or due <= now else min(due, now + MAX_IDLE)
            await self._idle(until, seen)

    async def _idle(self, until: float, seen: int) -> None:
        """Wait until `until`, a stop, one of our attempts ending, or the change counter moving."""
        assert self._stop is not None and self._wake is not None
        counter = self.store.changes
        tick = COUNTER_TICK if counter is not None else POLL_WITHOUT_COUNTER
        while not self._stop.is_set():
            if self._wake.is_set():
                self._wake.clear()
                return
            if counter is not None and counter.transitions() != seen:
                return
            left = until - time.time()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(tick, left))

    # --- one attempt ----------------------------------------------------------------------------

    async def _attempt(self, event: WebhookEvent) -> None:
        at = time.time()
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(self.settings.webhook_timeout):
                status = await self._send(event)
        except targets.FetchError as exc:
            error = exc.reason
        except TimeoutError:
            error = f"timed out after {self.settings.webhook_timeout:g} s"
        except httpx.HTTPError as exc:
            error = _short(exc)
        except Exception as exc:
            log.exception("webhook %s: the attempt failed unexpectedly", event.webhook_id)
            error = f"internal error ({type(exc).__name__})"
        duration_ms = (time.monotonic() - started) * 1000
        delivered = status is not None and 200 <= status < 300
        next_at = None
        if not delivered:
            next_at = time.time() + backoff_delay(self.settings, event.attempts + 1)
            if next_at > event.created_at + self.settings.webhook_retry_for:
                next_at = None
        try:
            outcome = await asyncio.to_thread(
                self.store.settle_webhook,
                event,
                self.owner,
                at=at,
                duration_ms=round(duration_ms, 3),
                status_code=status,
                error=error,
                next_attempt_at=next_at,
            )
            if outcome == OUTCOME_GIVEN_UP:
                log.warning(
                    "webhook %s for task %s given up after %d attempts (last: %s)",
                    event.webhook_id,
                    event.task_id,
                    event.attempts + 1,
                    error or f"HTTP {status}",
                )
        except Exception:
            log.exception("webhook %s: recording the attempt failed; its lease will lapse", event.webhook_id)
        finally:
            self._in_flight.pop(event.id, None)
            if self._wake is not None:
                self._wake.set()  # a slot is free, and the task's next event may go now

    async def _send(self, event: WebhookEvent) -> int:
        """POST the event once; its HTTP status. Raises FetchError (refused or unresolvable), HTTPError."""
        found = await asyncio.to_thread(self.store.webhook_secret, event.key_id)
        if found is None:
            raise targets.FetchError(targets.FIELD, "the task's API key no longer exists")
        body = orjson.dumps(self.render(view_of(event), self.base_url))
        headers = signed_headers(found[1], event.webhook_id, int(time.time()), body)
        url = httpx.URL(event.url)
        addresses = await asyncio.to_thread(
            targets.resolve, url, self.settings.allow_private_urls, self.settings.webhook_timeout
        )
        client = self._client_for(url)
        headers["host"] = url.netloc.decode("ascii")
        extensions = {"sni_hostname": url.raw_host.decode("ascii")} if url.scheme == "https" else {}
        last: Exception | None = None
        for address in addresses:  # a dual-stack host may lack a route on one family
            request = client.build_request(
                "POST", url.copy_with(host=address), content=body, headers=headers, extensions=extensions
            )
            try:
                response = await client.send(request, stream=True)
            except httpx.ConnectError as exc:
                last = exc
                continue
            try:
                read = 0
                async for chunk in response.aiter_raw():
                    read += len(chunk)
                    if read > MAX_RESPONSE_BYTES:
                        break
            except httpx.HTTPError:
                pass  # the status line is what counts
            finally:
                await response.aclose()
            return response.status_code
        assert last is not None
        raise last

    def _client_for(self, url: httpx.URL) -> httpx.AsyncClient:
        """A pool per receiver origin: a connection made (and TLS-verified) for one host name is never
        reused for another that happens to share its address."""
        origin = (url.scheme, url.host, url.port)
        client = self._clients.get(origin)
        if client is not None:
            self._clients.move_to_end(origin)
            return client
        client = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,  # no proxy from the environment: it would defeat the address pinning
            verify=self._tls,
            timeout=httpx.Timeout(self.settings.webhook_timeout),
        )
        self._clients[origin] = client
        while len(self._clients) > MAX_CLIENTS:
            _, old = self._clients.popitem(last=False)
            asyncio.get_running_loop().create_task(old.aclose())
        return client


def _short(exc: Exception) -> str:
    text = str(exc).strip()
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:200]
