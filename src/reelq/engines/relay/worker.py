"""The relay worker: one asynchronous process that holds many relayed tasks at once.

Started by the supervisor (`python -m reelq.engines.relay.worker`) when any model is relayed, with
its settings on stdin like a render worker. Each claimed task is one coroutine:

    content policy -> create upstream once (id stored on the row at once) -> wait (poll with
    backoff; a verified callback pokes it) -> download, probe, commit (our URL) -> conditional finish

- **One generation.** A task whose row already holds an upstream id is resumed: the worker waits on
  that id and never creates again (and the claim spends no attempt). A reelq upstream gets
  `Idempotency-Key: <our task id>`, so even a create whose answer was lost is not made twice.
- **Waiting costs nothing.** Waits are timers on one event loop; leases of every held task are renewed
  by one UPDATE (`renew_all`); a task missing from its answer was lost and its coroutine stops.
- **Bounded.** Each task fails after its model's `max_wait` from the first claim, or when the upstream
  stays unreachable for `unreachable_timeout`.
- SIGTERM: no new claims; creates and downloads under way finish (within REELQ_DRAIN_SECONDS),
  waiting tasks are handed back with their upstream id, to be resumed by the next worker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import httpx

from reelq import metrics
from reelq.config import Settings
from reelq.database import TaskRow, TaskStore, ensure_schema, make_engine
from reelq.domain import CANCELLED_ERROR, CONTENT_POLICY_PREFIX, find_blocked_term, total_tokens
from reelq.engines import RELAY_ENGINE, relayed_models
from reelq.engines.relay.options import RelayOptions, parse_options
from reelq.engines.relay.pokes import POKE_PREFIX, relay_socket_path
from reelq.engines.relay.reelq_upstream import ReelqUpstream
from reelq.engines.relay.rehost import RehostError, download
from reelq.engines.relay.upstream import (
    COMPLETED,
    FAILED,
    RelayRequest,
    Upstream,
    UpstreamError,
    UpstreamRejected,
    UpstreamStatus,
    UpstreamUnavailable,
)
from reelq.engines.relay.vidu_upstream import ViduUpstream
from reelq.media import probe
from reelq.service.relay import callback_url as vidu_callback_url
from reelq.storage import build_storage
from reelq.worker.context import make_worker_id

log = logging.getLogger("reelq.relay")

T = TypeVar("T")

CLAIM_BATCH = 200  # tasks claimed per transaction when many are queued
IDLE_CLAIM_SECONDS = 1.0  # look for work this often without a doorbell ring
DOWNLOAD_TRIES = 3
RETRY_FLOOR = 0.5  # shortest wait between two tries of an unavailable upstream


def build_upstream(model: str, options: RelayOptions, client: httpx.AsyncClient) -> Upstream:
    """The upstream client of one relayed model (also what a cancel route would use: `.cancel(id)`)."""
    if options.upstream == "vidu":
        return ViduUpstream(options, model, client)
    return ReelqUpstream(options, model, client)


class TaskFailed(Exception):
    """Ends a relayed task as failed with this message (already fit for the client)."""


class Released(Exception):
    """Ends a coroutine without settling its task: it is handed back (drain)."""


@dataclass(eq=False)
class _Held:
    """A task this worker holds, and what it needs to know to hand it back or stop it."""

    row: TaskRow
    spent_attempt: bool  # this claim spent an attempt (no upstream id yet): a hand-back refunds it
    claimed_at: float  # monotonic
    poked: asyncio.Event = field(default_factory=asyncio.Event)
    coroutine: asyncio.Task[None] | None = None
    settling: bool = False  # its final write is under way: a lease check must not stop it now
    upstream_id: str | None = None  # once known: what an owner's cancel stops upstream


class RelayWorker:
    def __init__(self, settings: Settings, name: str = "relay") -> None:
        self.settings = settings
        engine = make_engine(settings.sqlalchemy_url)
        ensure_schema(engine)
        self.store = TaskStore(engine)
        self.storage = build_storage(settings)
        self.worker_id = make_worker_id(name)
        self.models = relayed_models(settings)
        self.options = {m: parse_options(settings.catalog[m].options) for m in self.models}
        self.max_in_flight = settings.max_queue
        self.held: dict[str, _Held] = {}
        self.draining = asyncio.Event()
        self._wake = asyncio.Event()
        self._clients: list[httpx.AsyncClient] = []
        self.upstreams: dict[str, Upstream] = {}
        self._socket: socket.socket | None = None
        self._side_tasks: set[asyncio.Task[None]] = set()  # upstream cancels under way

    # ---- the process ---------------------------------------------------------------------------
    async def run(self) -> None:
        for model, options in self.options.items():
            client = httpx.AsyncClient(
                trust_env=False,  # no proxy from the environment: downloads are pinned to checked addresses
                follow_redirects=False,
                limits=httpx.Limits(
                    max_connections=options.max_connections, max_keepalive_connections=options.max_connections
                ),
            )
            self._clients.append(client)
            self.upstreams[model] = build_upstream(model, options, client)
        self._listen()
        renewer = asyncio.create_task(self._renew_loop(), name="relay-renew")
        log.info("relay worker %s ready (%s)", self.worker_id, ", ".join(self.models))
        try:
            await self._claim_loop()
            await self._drain()
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            self._close_socket()
            for client in self._clients:
                await client.aclose()
            self.store.engine.dispose()

    def start_drain(self) -> None:
        if not self.draining.is_set():
            log.info("relay worker draining: %d task(s) held", len(self.held))
            self.draining.set()
            self._wake.set()
            for held in self.held.values():
                held.poked.set()

    def _listen(self) -> None:
        run_dir = self.settings.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        path = relay_socket_path(run_dir, os.getpid())
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        sock.setblocking(False)
        self._socket = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_datagrams)

    def _close_socket(self) -> None:
        if self._socket is None:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self._socket.fileno())
        self._socket.close()
        with contextlib.suppress(FileNotFoundError):
            relay_socket_path(self.settings.run_dir, os.getpid()).unlink()
        self._socket = None

    def _on_datagrams(self) -> None:
        assert self._socket is not None
        while True:
            try:
                data = self._socket.recv(256)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if data.startswith(POKE_PREFIX):
                held = self.held.get(data[len(POKE_PREFIX) :].decode("ascii", "replace"))
                if held is not None:
                    held.poked.set()
            else:
                self._wake.set()

    async def _claim_loop(self) -> None:
        lease = self.settings.lease_seconds
        while not self.draining.is_set():
            room = self.max_in_flight - len(self.held)
            rows: list[TaskRow] = []
            if room > 0:
                try:
                    rows = await asyncio.to_thread(
                        self.store.claim_relayed, self.worker_id, lease, self.models, min(room, CLAIM_BATCH)
                    )
                except Exception as exc:
                    log.warning("relay claim failed (%s: %s); retrying", type(exc).__name__, exc)
            for row in rows:
                self._start(row)
            if len(rows) == CLAIM_BATCH:
                continue  # more may be queued: claim on before waiting
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), IDLE_CLAIM_SECONDS)

    def _start(self, row: TaskRow) -> None:
        held = _Held(row=row, spent_attempt=row.upstream_id is None, claimed_at=time.monotonic())
        self.held[row.id] = held
        if row.upstream_id is None and row.attempts == 1:  # a resumed wait is not a second queue wait
            metrics.task_claimed(row.model, RELAY_ENGINE, time.time() - row.created_at)
        metrics.render_started(row.model, RELAY_ENGINE)  # a relayed "render" is the upstream's, held here
        held.coroutine = asyncio.create_task(self._relay(held), name=f"relay-{row.id}")
        held.coroutine.add_done_callback(lambda _: metrics.render_ended(row.model, RELAY_ENGINE))

    async def _renew_loop(self) -> None:
        """Renew every held lease in one statement; stop the coroutines of tasks no longer ours."""
        interval = min(self.settings.lease_seconds / 3, 5.0)
        while True:
            await asyncio.sleep(interval)
            if not self.held:
                continue
            asked_at = time.monotonic()
            try:
                ours = await asyncio.to_thread(
                    self.store.renew_all, self.worker_id, self.settings.lease_seconds
                )
            except Exception:
                log.warning("relay lease renewal failed; the lease has slack", exc_info=True)
                continue
            for task_id, held in list(self.held.items()):
                # Claimed after the renewal was asked, or settling: not in its answer for a good reason.
                if task_id in ours or held.claimed_at >= asked_at or held.settling:
                    continue
                self.held.pop(task_id, None)
                if held.coroutine is not None:
                    held.coroutine.cancel()
                # Cancelled or deleted by its owner (or taken over): find out, and stop it upstream too.
                self._side_tasks.add(task := asyncio.create_task(self._after_lost(held)))
                task.add_done_callback(self._side_tasks.discard)

    async def _after_lost(self, held: _Held) -> None:
        """A task no longer ours: if its owner cancelled (or deleted) it, cancel the upstream generation
        too, best effort (the Vidu platform refunds a cancelled task; a reelq upstream frees its worker)."""
        try:
            row = await asyncio.to_thread(self.store.get_task, held.row.id)
        except Exception:
            log.warning("task %s: lease lost; could not read it", held.row.id, exc_info=True)
            return
        if row is not None and row.error != CANCELLED_ERROR:
            log.warning("task %s: lease lost; another worker resumes it", held.row.id)
            return
        upstream_id = (row.upstream_id if row is not None else None) or held.upstream_id
        if upstream_id is None:
            return
        try:
            await self.upstreams[held.row.model].cancel(upstream_id)
            log.info("task %s: cancelled by its owner; upstream task %s cancelled", held.row.id, upstream_id)
        except Exception as exc:
            log.warning("task %s: upstream cancel of %s failed (%s)", held.row.id, upstream_id, exc)

    async def _drain(self) -> None:
        """Let creates and downloads under way finish (bounded), then hand back every held task."""
        pending = [h.coroutine for h in self.held.values() if h.coroutine is not None]
        if pending:
            await asyncio.wait(pending, timeout=self.settings.drain_seconds)
        for held in list(self.held.values()):
            if held.coroutine is not None and not held.coroutine.done():
                held.coroutine.cancel()
        for held in list(self.held.values()):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.store.release, held.row.id, self.worker_id, held.spent_attempt)
        released = len(self.held)
        self.held.clear()
        if released:
            log.info("relay worker handed back %d task(s) to be resumed", released)

    # ---- one task ------------------------------------------------------------------------------
    async def _relay(self, held: _Held) -> None:
        row = held.row
        try:
            await self._run(held)
        except TaskFailed as exc:
            held.settling = True
            await self._settle_failed(row, str(exc))
        except Released:
            return  # stays in `held`: `_drain` hands it back
        except asyncio.CancelledError:
            return
        except Exception:
            log.exception("task %s: relay crashed", row.id)
            held.settling = True
            await self._settle_failed(row, "Relay failed: internal error.")
        if self.held.get(row.id) is held:
            del self.held[row.id]

    async def _settle_failed(self, row: TaskRow, error: str) -> None:
        try:
            if await asyncio.to_thread(self.store.fail, row.id, error, self.worker_id):
                metrics.task_finished(row.model, RELAY_ENGINE, False)
        except Exception:
            log.exception("task %s: could not record its failure; its lease will lapse", row.id)

    async def _run(self, held: _Held) -> None:
        row = held.row
        options = self.options[row.model]
        upstream = self.upstreams[row.model]
        if find_blocked_term(row.prompt, self.settings.blocked_terms) is not None:
            raise TaskFailed(f"{CONTENT_POLICY_PREFIX} prompt contains restricted content.")
        deadline = (row.started_at or time.time()) + options.max_wait
        if time.time() >= deadline:
            raise TaskFailed(_too_long(options))
        upstream_id = held.upstream_id = row.upstream_id
        if upstream_id is None:
            if self.draining.is_set():
                raise Released
            upstream_id = held.upstream_id = await self._create(held, upstream, options, deadline)
        status = await self._wait(held, upstream, options, upstream_id, deadline)
        if status.status == FAILED:
            raise TaskFailed(status.error or "Upstream generation failed.")
        await self._rehost(held, options, status)

    async def _create(self, held: _Held, upstream: Upstream, options: RelayOptions, deadline: float) -> str:
        row = held.row
        inputs: dict[str, str] = {}
        if row.has_first_image or row.has_last_image:
            inputs = await asyncio.to_thread(self.store.get_inputs, row.id)
        callback_url = None
        if options.upstream == "vidu" and options.callbacks and self.settings.public_base_url:
            callback_url = vidu_callback_url(self.settings.public_base_url, row.id)
        request = RelayRequest(row, inputs.get("first_image"), inputs.get("last_image"), callback_url)
        # A reelq upstream deduplicates on the Idempotency-Key: any failure may be retried. The Vidu
        # platform has none: a create that was sent and got no answer is retried only if configured.
        safe_to_resend = options.upstream == "reelq" or options.ambiguous_create == "retry"
        created = await self._retrying(
            lambda: upstream.create(request), options, deadline, "the create", resend_ambiguous=safe_to_resend
        )
        # On the row before anything else can happen: from here on, every attempt only waits on it.
        await asyncio.to_thread(self.store.record_upstream, row.id, created.upstream_id, created.credits)
        log.info("task %s: upstream task %s created", row.id, created.upstream_id)
        return created.upstream_id

    async def _retrying(
        self,
        call: Callable[[], Awaitable[T]],
        options: RelayOptions,
        deadline: float,
        what: str,
        resend_ambiguous: bool = True,
    ) -> T:
        """`call()`, retried with backoff while the upstream is unavailable (Retry-After honoured)."""
        delay = options.poll_initial
        first_failure: float | None = None
        while True:
            try:
                return await call()
            except UpstreamRejected as exc:
                raise TaskFailed(str(exc)) from None
            except UpstreamUnavailable as exc:
                if exc.ambiguous and not resend_ambiguous:
                    raise TaskFailed(
                        f"Upstream did not answer {what} ({exc}); not sent again, so that the video is "
                        "never paid for twice."
                    ) from None
                now = time.time()
                first_failure = first_failure or now
                if now - first_failure > options.unreachable_timeout:
                    raise TaskFailed(_unreachable(options, exc)) from None
                wait = max(RETRY_FLOOR, delay, exc.retry_after or 0.0)
                if now + wait >= deadline:
                    raise TaskFailed(_too_long(options)) from None
                log.info("upstream unavailable for %s (%s); next try in %.1f s", what, exc, wait)
                await self._sleep_unless_draining(wait)  # nothing in flight now: a drain may hand it back
                delay = min(options.poll_max, delay * options.poll_backoff)
            except UpstreamError as exc:  # lost (404)
                raise TaskFailed(f"Upstream lost the task: {exc}") from None

    async def _wait(
        self, held: _Held, upstream: Upstream, options: RelayOptions, upstream_id: str, deadline: float
    ) -> UpstreamStatus:
        """Poll until the upstream finishes: fast at first, then slower, a poke reads at once."""
        row = held.row
        delay = options.poll_initial
        first_failure: float | None = None
        progress = row.progress
        credits = row.upstream_credits
        while True:
            wait = min(delay, max(0.0, deadline - time.time()))
            await self._sleep_unless_draining(wait, poked=held.poked)
            now = time.time()
            try:
                status = await upstream.query(upstream_id)
            except UpstreamUnavailable as exc:
                first_failure = first_failure or now
                if now - first_failure > options.unreachable_timeout:
                    raise TaskFailed(_unreachable(options, exc)) from None
                if now >= deadline:
                    raise TaskFailed(_too_long(options)) from None
                delay = max(
                    RETRY_FLOOR, min(options.poll_max, delay * options.poll_backoff), exc.retry_after or 0
                )
                continue
            except UpstreamRejected as exc:
                raise TaskFailed(str(exc)) from None
            except UpstreamError as exc:
                raise TaskFailed(f"Upstream lost the task: {exc}") from None
            first_failure = None
            if status.credits is not None and status.credits != credits:
                credits = status.credits
                await asyncio.to_thread(self.store.record_upstream, row.id, None, credits)
            if status.status in (COMPLETED, FAILED):
                return status
            if status.progress is not None and min(99, status.progress) > progress:
                progress = min(99, status.progress)
                try:
                    await asyncio.to_thread(
                        self.store.renew, row.id, self.worker_id, self.settings.lease_seconds, progress
                    )
                except Exception:  # progress is a nicety: a busy database must not end the wait
                    log.warning("task %s: could not record progress", row.id, exc_info=True)
            if now >= deadline:
                raise TaskFailed(_too_long(options))
            delay = min(options.poll_max, delay * options.poll_backoff)

    async def _sleep_unless_draining(
        self, seconds: float, poked: asyncio.Event | None = None, allow_drain: bool = True
    ) -> None:
        """Wait `seconds`, or until poked (read now); a drain hands the task back (`Released`)."""
        if allow_drain and self.draining.is_set():
            raise Released
        if poked is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(poked.wait(), seconds)
        poked.clear()
        if allow_drain and self.draining.is_set():
            raise Released

    async def _rehost(self, held: _Held, options: RelayOptions, status: UpstreamStatus) -> None:
        """Bring the finished video home and complete the task with our own file."""
        row = held.row
        assert status.video_url is not None
        temp = self.storage.temp_path(row.id, self.worker_id)
        client = self._clients[self.models.index(row.model)]
        for attempt in range(1, DOWNLOAD_TRIES + 1):
            try:
                await download(
                    client,
                    status.video_url,
                    temp,
                    upstream_root=options.root,
                    allow_private=self.settings.allow_private_urls,
                    max_bytes=options.max_download_bytes,
                    timeout=options.download_timeout,
                    read_timeout=options.request_timeout,
                )
                break
            except RehostError as exc:
                if attempt == DOWNLOAD_TRIES or "larger than" in str(exc) or "not allowed" in str(exc):
                    raise TaskFailed(str(exc)) from None
                log.info("task %s: download failed (%s); trying again", row.id, exc)
                await asyncio.sleep(2.0 * attempt)
        try:
            info = await asyncio.to_thread(probe, temp)
            if info.frame_count <= 0 or info.duration <= 0:
                raise ValueError("no frames")
        except Exception:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise TaskFailed("Upstream video is not a playable MP4.") from None
        tokens = total_tokens(
            row.model,
            info.duration,
            row.resolution,
            self.settings.token_rates,
            self.settings.resolution_factors,
        )
        held.settling = True
        key = await asyncio.to_thread(self.storage.commit, temp, row.id, row.attempts)
        if await asyncio.to_thread(self.store.complete, row.id, self.worker_id, key, info.duration, tokens):
            log.info("task %s: completed (%.2f s re-hosted)", row.id, info.duration)
            metrics.task_finished(row.model, RELAY_ENGINE, True, time.monotonic() - held.claimed_at)
            return
        # Someone else owns the task now: this file must never be served.
        self.storage.delete(key)


def _too_long(options: RelayOptions) -> str:
    return f"Upstream did not finish within {options.max_wait:g} s."


def _unreachable(options: RelayOptions, exc: Exception) -> str:
    return f"Upstream unreachable for more than {options.unreachable_timeout:g} s ({exc})."


def _worker_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="reelq-relay-worker", description="Settings JSON on stdin.")
    parser.add_argument("--name", default="relay")
    args = parser.parse_args(argv)
    settings = Settings.from_json(sys.stdin.buffer.read())
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its request lines carry URLs

    async def main() -> None:
        worker = RelayWorker(settings, args.name)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.start_drain)
        await worker.run()

    asyncio.run(main())


if __name__ == "__main__":
    _worker_main()
