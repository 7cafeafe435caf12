"""The relay worker: one asynchronous process that holds many relayed tasks at once.

Started by the supervisor (`python -m reelq.worker.relay`) when any model is relayed, with
its settings on stdin like a render worker. Each claimed task is one coroutine:

    content policy -> create upstream once (id stored on the row at once) -> wait (poll with
    backoff; a verified callback pokes it) -> download -> the finish step render workers share
    (worker/finish.py: probe, commit (our URL), conditional complete)

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

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import httpx

from reelq import metrics
from reelq.config import Settings
from reelq.database import TaskRow, TaskStore, ensure_schema, make_engine
from reelq.dispatch.children import make_worker_id
from reelq.domain import CANCELLED_ERROR, CONTENT_POLICY_PREFIX, find_blocked_term
from reelq.engines import RELAY_ENGINE, relayed_models
from reelq.engines.relay.channels import Channel, ChannelSet
from reelq.engines.relay.clients import build_upstream, check_upstream_keys
from reelq.engines.relay.openai_upstream import OpenAIUpstream
from reelq.engines.relay.options import RelayOptions, parse_options
from reelq.engines.relay.pokes import POKE_PREFIX, relay_socket_path
from reelq.engines.relay.pokes import callback_url as vidu_callback_url
from reelq.engines.relay.rehost import RehostError, download
from reelq.engines.relay.upstream import (
    COMPLETED,
    FAILED,
    Created,
    RelayRequest,
    Upstream,
    UpstreamLost,
    UpstreamRejected,
    UpstreamStatus,
    UpstreamUnavailable,
)
from reelq.storage import build_storage
from reelq.worker.bootstrap import start_worker_process
from reelq.worker.finish import probe_video, settle_video, store_video

log = logging.getLogger("reelq.relay")

T = TypeVar("T")

CLAIM_BATCH = 200  # tasks claimed per transaction when many are queued
IDLE_CLAIM_SECONDS = 1.0  # look for work this often without a doorbell ring
DOWNLOAD_TRIES = 3
RETRY_FLOOR = 0.5  # shortest wait between two tries of an unavailable upstream


MODEL_CHECK_SECONDS = 10.0  # at start-up, each upstream's model list is asked for at most this long
LONG_POLL_SECONDS = 25.0  # one status read of a reelq upstream waits this long for the end (`?wait=`)
LONG_POLL_FLOOR = 1.0  # a long-poll answered sooner than this without the end is followed by a pause


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
    channel: Channel | None = None  # the upstream that holds (or will hold) it: counted in its in_flight
    resubmits: int = 0  # creates made again after the upstream forgot the task (openai)

    home: Channel | None = None  # the last channel it was on (for a cancel after it is let go)
    aimed: str | None = None  # the upstream the row notes a create was sent to (lifecycle.aim_create)

    def move_to(self, channel: Channel | None) -> None:
        """Count this task on `channel` (None: on none) instead of where it was."""
        if self.channel is not None:
            self.channel.let_go()
        self.channel = channel
        if channel is not None:
            channel.hold()
            self.home = channel


class RelayWorker:
    def __init__(self, settings: Settings, name: str = "relay") -> None:
        self.settings = settings
        engine = make_engine(settings.sqlalchemy_url)
        ensure_schema(engine)
        self.store = TaskStore(engine)
        self.storage = build_storage(settings)
        self.worker_id = make_worker_id(name)
        self.models = relayed_models(settings)
        check_upstream_keys(settings)  # a missing key stops this worker with one line naming it
        self.options = {m: parse_options(settings.catalog[m].options) for m in self.models}
        self.max_in_flight = settings.max_queue
        self.held: dict[str, _Held] = {}
        self.draining = asyncio.Event()
        self._wake = asyncio.Event()
        self._clients: list[httpx.AsyncClient] = []
        self.channels: dict[str, ChannelSet] = {}
        self.ready = False  # its channels are built and checked: it claims from now on
        self._socket: socket.socket | None = None
        self._side_tasks: set[asyncio.Task[None]] = set()  # upstream cancels under way

    # ---- the process ---------------------------------------------------------------------------
    async def run(self) -> None:
        for model, options in self.options.items():
            channels = self.channels[model] = ChannelSet(model)
            for channel in options.channels():
                client = httpx.AsyncClient(
                    trust_env=False,  # no proxy from the environment: downloads go to checked addresses
                    follow_redirects=False,
                    limits=httpx.Limits(
                        max_connections=channel.max_connections,
                        max_keepalive_connections=channel.max_connections,
                    ),
                )
                self._clients.append(client)
                upstream = build_upstream(model, channel, client)
                if isinstance(upstream, OpenAIUpstream):
                    upstream.allow_private = self.settings.allow_private_urls
                channels.channels.append(Channel(model, channel, upstream, client))
        await self._check_models()
        self._listen()
        renewer = asyncio.create_task(self._renew_loop(), name="relay-renew")
        self.ready = True
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

    async def _check_models(self) -> None:
        """A wrong `upstream_model` is found now, not on the first task: each channel whose upstream
        lists its models (`GET /v1/models`) and lacks ours takes no task, and the log says why. An
        upstream that lists none, or cannot answer now, is trusted as configured."""

        async def check(channel: Channel) -> None:
            lister = getattr(channel.upstream, "served_models", None)
            if lister is None:
                return
            try:
                listed = await asyncio.wait_for(lister(), MODEL_CHECK_SECONDS)
            except Exception:
                return
            wanted = channel.options.model_name(channel.model)
            if listed is not None and wanted not in listed:
                channel.disabled = f"the upstream does not serve model {wanted!r}"
                shown = ", ".join(sorted(listed)[:20]) or "none"
                log.error(
                    "upstream %s of model %s does not serve %r (it lists: %s): no task goes there; fix "
                    "upstream_model in the models file",
                    channel.name,
                    channel.model,
                    wanted,
                    shown,
                )

        await asyncio.gather(*(check(c) for s in self.channels.values() for c in s.channels))

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
            full = False
            # Each model claims at most what its channels have room for (SPEC §7 max_in_flight): the
            # rest stay queued, in their fair-share order, for when a channel frees up.
            for model in self.models:
                want = int(min(room, CLAIM_BATCH, self.channels[model].room()))
                if want <= 0:
                    continue
                try:
                    rows = await asyncio.to_thread(
                        self.store.claim_relayed, self.worker_id, lease, [model], want
                    )
                except Exception as exc:
                    log.warning("relay claim failed (%s: %s); retrying", type(exc).__name__, exc)
                    continue
                for row in rows:
                    self._start(row)
                room -= len(rows)
                full = full or len(rows) == want == CLAIM_BATCH
            if full:
                continue  # more may be queued: claim on before waiting
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), IDLE_CLAIM_SECONDS)

    def _start(self, row: TaskRow) -> None:
        held = _Held(row=row, spent_attempt=row.upstream_id is None, claimed_at=time.monotonic())
        channels = self.channels[row.model]
        # A task an upstream holds, or may hold (a create sent there went unanswered: the worker that sent
        # it died), stays on it (its id means nothing elsewhere); a new one goes where there is room.
        # None: the models file no longer lists its upstream (`_run` fails it).
        held.aimed = row.upstream_channel if row.upstream_id is None else None
        placed = row.upstream_id is not None or held.aimed is not None
        held.move_to(channels.named(row.upstream_channel) if placed else channels.pick())
        if held.channel is None and not placed:
            # No room after all (resumed tasks filled a channel): back to the queue, attempt refunded.
            self._side_tasks.add(task := asyncio.create_task(self._hand_back(held)))
            task.add_done_callback(self._side_tasks.discard)
            return
        self.held[row.id] = held
        if row.upstream_id is None and row.attempts == 1:  # a resumed wait is not a second queue wait
            metrics.task_claimed(row.model, RELAY_ENGINE, time.time() - row.created_at)
        metrics.render_started(row.model, RELAY_ENGINE)  # a relayed "render" is the upstream's, held here
        held.coroutine = asyncio.create_task(self._relay(held), name=f"relay-{row.id}")
        held.coroutine.add_done_callback(lambda _: metrics.render_ended(row.model, RELAY_ENGINE))
        held.coroutine.add_done_callback(lambda _: held.move_to(None))

    async def _hand_back(self, held: _Held) -> None:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.store.release, held.row.id, self.worker_id, held.spent_attempt)

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
        channel = self.channels[held.row.model].named(row.upstream_channel if row is not None else None)
        channel = held.home or channel
        if upstream_id is None or channel is None:
            return
        try:
            await channel.upstream.cancel(upstream_id)
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
                metrics.task_finished(row.model, RELAY_ENGINE, False, reason=metrics.failure_reason(error))
        except Exception:
            log.exception("task %s: could not record its failure; its lease will lapse", row.id)

    async def _run(self, held: _Held) -> None:
        row = held.row
        options = self.options[row.model]
        if find_blocked_term(row.prompt, self.settings.blocked_terms) is not None:
            raise TaskFailed(f"{CONTENT_POLICY_PREFIX} prompt contains restricted content.")
        if held.channel is None:
            log.error(
                "task %s: its upstream %r (task %s) is no longer in the models file",
                row.id,
                row.upstream_channel,
                row.upstream_id,
            )
            raise TaskFailed("Relay failed: the upstream holding this task is no longer configured.")
        deadline = (row.started_at or time.time()) + options.max_wait
        if time.time() >= deadline:
            raise TaskFailed(_too_long(options))
        upstream_id = held.upstream_id = row.upstream_id
        if upstream_id is None:
            if self.draining.is_set():
                raise Released
            upstream_id = held.upstream_id = await self._create(held, options, deadline)
        while True:
            try:
                status = await self._wait(held, options, upstream_id, deadline)
                break
            except UpstreamLost as exc:
                upstream_id = held.upstream_id = await self._resubmit(held, options, deadline, exc)
        if status.status == FAILED:
            raise TaskFailed(status.error or "Upstream generation failed.")
        await self._rehost(held, status)

    async def _request(self, held: _Held, channel: Channel) -> RelayRequest:
        row = held.row
        inputs: dict[str, str] = {}
        if row.has_first_image or row.has_last_image:
            inputs = await asyncio.to_thread(self.store.get_inputs, row.id)
        callback_url = None
        if channel.options.upstream == "vidu" and channel.options.callbacks and self.settings.public_base_url:
            callback_url = vidu_callback_url(self.settings.public_base_url, row.id)
        return RelayRequest(row, inputs.get("first_image"), inputs.get("last_image"), callback_url)

    async def _create(self, held: _Held, options: RelayOptions, deadline: float) -> str:
        """Create the task upstream once, failing over between channels (SPEC §7): a create refused
        before it could have been accepted goes to the next channel with room; one whose fate is unknown
        is only ever sent again to the same upstream, and only where that cannot pay twice."""
        row = held.row
        channels = self.channels[row.model]
        tried: set[Channel] = set()
        delay = options.poll_initial
        first_failure: float | None = None
        # Once a create went unanswered, the upstream may hold the task: from then on it is sent to that
        # upstream only (its Idempotency-Key makes that safe), even when it is later refused or cooling,
        # or the video could be made (and paid for) twice.
        pinned = held.aimed is not None  # sent before this claim (see _start)
        while True:
            channel = held.channel
            assert channel is not None
            if channel.cooling() and not pinned:
                # Its upstream keeps refusing: another with room, or wait for one (never send to it now).
                other = channels.pick()
                if other is not None:
                    held.move_to(other)
                    continue
                if time.time() + delay >= deadline:
                    raise TaskFailed(_too_long(options))
                await self._sleep_unless_draining(delay)
                delay = min(options.poll_max, delay * options.poll_backoff)
                continue
            if pinned and not _may_resend(channel.options):
                raise _unanswered_create(row.id, channel, "its worker stopped before the answer")
            request = await self._request(held, channel)
            if held.aimed != channel.name:  # on the row before it is sent: see lifecycle.aim_create
                await asyncio.to_thread(self.store.aim_create, row.id, channel.name)
                held.aimed = channel.name
            started = time.monotonic()
            try:
                created = await channel.upstream.create(request)
            except UpstreamRejected as exc:
                metrics.upstream_error(row.model, channel.name, "rejected")
                log.warning("task %s: upstream %s refused the create: %s", row.id, channel.name, exc.detail)
                raise TaskFailed(str(exc)) from None
            except UpstreamUnavailable as exc:
                # A reelq upstream deduplicates on the Idempotency-Key: any failure may be sent again (to
                # it). The Vidu platform and OpenAI-shaped servers have none: an unanswered create is
                # sent again only if configured, and never to another upstream.
                if exc.ambiguous:
                    pinned = True
                    metrics.upstream_error(row.model, channel.name, "no_answer")
                    if not _may_resend(channel.options):
                        raise _unanswered_create(row.id, channel, str(exc)) from None
                else:
                    channel.refused("busy" if exc.busy else "unavailable")
                    if not pinned:  # refused for sure: nothing is there, any upstream may take it
                        await asyncio.to_thread(self.store.aim_create, row.id, None)
                        held.aimed = None
                    tried.add(channel)
                    other = None if pinned else channels.pick(exclude=tried)
                    if other is not None:
                        log.info(
                            "task %s: upstream %s refused the create (%s); trying %s",
                            row.id,
                            channel.name,
                            exc,
                            other.name,
                        )
                        held.move_to(other)
                        continue
                now = time.time()
                if not exc.busy:  # a busy upstream is reachable: only max_wait bounds the wait for room
                    first_failure = first_failure or now
                    if now - first_failure > options.unreachable_timeout:
                        raise TaskFailed(_unreachable(options, exc)) from None
                wait = max(RETRY_FLOOR, delay, exc.retry_after or 0.0)
                if now + wait >= deadline:
                    raise TaskFailed(_too_long(options)) from None
                log.info("task %s: no upstream took the create (%s); next try in %.1f s", row.id, exc, wait)
                await self._sleep_unless_draining(wait)  # nothing in flight now: a drain may hand it back
                delay = min(options.poll_max, delay * options.poll_backoff)
                tried.clear()
                best = None if pinned else channels.pick()
                if best is not None and best is not channel:
                    held.move_to(best)
                continue
            channel.accepted()
            metrics.upstream_call(row.model, channel.name, "create", time.monotonic() - started)
            await self._record(held, created, channel)
            return created.upstream_id

    async def _record(
        self, held: _Held, created: Created, channel: Channel, replaces: str | None = None
    ) -> None:
        row = held.row
        # On the row before anything else can happen: from here on, every attempt only waits on it.
        await asyncio.to_thread(
            self.store.record_upstream, row.id, created.upstream_id, created.credits, channel.name, replaces
        )
        log.info("task %s: upstream task %s created on %s", row.id, created.upstream_id, channel.name)

    async def _resubmit(self, held: _Held, options: RelayOptions, deadline: float, lost: UpstreamLost) -> str:
        """The upstream forgot a task it accepted (an in-memory job store restarted): create it again on
        the same upstream, at most `max_resubmits` times (openai upstreams; others fail at once)."""
        row, channel = held.row, held.channel
        assert channel is not None and held.upstream_id is not None
        metrics.upstream_error(row.model, channel.name, "lost")
        if channel.options.upstream != "openai" or held.resubmits >= channel.options.max_resubmits:
            log.warning("task %s: upstream %s lost %s (%s)", row.id, channel.name, held.upstream_id, lost)
            tries = f" after {held.resubmits} resubmission(s)" if held.resubmits else ""
            raise TaskFailed(f"Upstream lost the task{tries}.")
        held.resubmits += 1
        log.warning(
            "task %s: upstream %s forgot task %s; creating it again (%d of %d)",
            row.id,
            channel.name,
            held.upstream_id,
            held.resubmits,
            channel.options.max_resubmits,
        )
        request = await self._request(held, channel)
        created = await self._retrying(
            lambda: channel.upstream.create(request), options, deadline, "the create", resend_ambiguous=False
        )
        await self._record(held, created, channel, replaces=held.upstream_id)
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
                return await _by_deadline(call(), deadline, options)
            except UpstreamRejected as exc:
                raise TaskFailed(str(exc)) from None
            except UpstreamUnavailable as exc:
                if exc.ambiguous and not resend_ambiguous:
                    raise TaskFailed(
                        f"Upstream did not answer {what}; not sent again, so that the video is never paid "
                        "for twice."
                    ) from None
                now = time.time()
                if not exc.busy:
                    first_failure = first_failure or now
                    if now - first_failure > options.unreachable_timeout:
                        raise TaskFailed(_unreachable(options, exc)) from None
                wait = max(RETRY_FLOOR, delay, exc.retry_after or 0.0)
                if now + wait >= deadline:
                    raise TaskFailed(_too_long(options)) from None
                log.info("upstream unavailable for %s (%s); next try in %.1f s", what, exc, wait)
                await self._sleep_unless_draining(wait)  # nothing in flight now: a drain may hand it back
                delay = min(options.poll_max, delay * options.poll_backoff)
            except UpstreamLost:
                raise TaskFailed("Upstream lost the task.") from None

    async def _wait(
        self, held: _Held, options: RelayOptions, upstream_id: str, deadline: float
    ) -> UpstreamStatus:
        """Poll until the upstream finishes: fast at first, then slower, a poke reads at once; a reelq
        upstream is long-polled instead (`?wait=`), so its end is known the moment it happens.

        Raises UpstreamLost when the upstream no longer knows the task (the caller may resubmit)."""
        row = held.row
        channel = held.channel
        assert channel is not None
        upstream = channel.upstream
        long_poll = getattr(upstream, "long_poll", False)
        delay = options.poll_initial
        first_failure: float | None = None
        progress = row.progress
        credits = row.upstream_credits
        # A long-polled upstream is asked again at once after a non-terminal answer (the answer itself
        # waited), unless it answered early (an upstream that caps long-polls short, or after an error).
        pause = not long_poll
        while True:
            if pause:
                wait = min(delay, max(0.0, deadline - time.time()))
                await self._sleep_unless_draining(wait, poked=held.poked)
            pause = not long_poll
            now = time.time()
            started = time.monotonic()
            try:
                if long_poll:
                    held_for = min(LONG_POLL_SECONDS, max(0.0, deadline - now))
                    status = await _by_deadline(
                        self._long_poll(upstream, upstream_id, held_for), deadline, options
                    )
                else:
                    status = await _by_deadline(upstream.query(upstream_id), deadline, options)
            except UpstreamUnavailable as exc:
                pause = True
                metrics.upstream_error(row.model, channel.name, "busy" if exc.busy else "unavailable")
                if not exc.busy:
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
                metrics.upstream_error(row.model, channel.name, "rejected")
                log.warning("task %s: %s refused a status read: %s", row.id, channel.name, exc.detail)
                raise TaskFailed(str(exc)) from None
            if not long_poll:
                metrics.upstream_call(row.model, channel.name, "status", time.monotonic() - started)
            elif time.monotonic() - started < min(LONG_POLL_FLOOR, held_for):
                pause, delay = True, LONG_POLL_FLOOR  # it did not hold the read: do not spin on it
            first_failure = None
            if status.credits is not None and status.credits != credits:
                credits = status.credits
                await asyncio.to_thread(self.store.record_upstream, row.id, None, credits)
            if status.status in (COMPLETED, FAILED):
                if status.status == FAILED and status.detail:
                    log.warning("task %s: upstream %s failed it: %s", row.id, channel.name, status.detail)
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

    async def _long_poll(self, upstream: Upstream, upstream_id: str, wait: float) -> UpstreamStatus:
        """One long-poll, cut short by a drain (the task is then handed back, its id on the row)."""
        if self.draining.is_set():
            raise Released
        query = asyncio.ensure_future(upstream.query(upstream_id, wait=wait))  # type: ignore[call-arg]
        drain = asyncio.ensure_future(self.draining.wait())
        try:
            await asyncio.wait({query, drain}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled from outside (the task's max_wait): the query goes with it
            query.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await query
            raise
        finally:
            drain.cancel()
        if not query.done():
            query.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await query
            raise Released
        return query.result()

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

    async def _rehost(self, held: _Held, status: UpstreamStatus) -> None:
        """Bring the finished video home and complete the task with our own file."""
        row = held.row
        assert status.video_url is not None and held.channel is not None
        channel = held.channel
        options = channel.options
        temp = self.storage.temp_path(row.id, self.worker_id)
        client = channel.client
        for attempt in range(1, DOWNLOAD_TRIES + 1):
            started = time.monotonic()
            try:
                await download(
                    client,
                    status.video_url,
                    temp,
                    upstream_root=options.root,
                    trusted_hosts=options.download_hosts,
                    headers=status.video_headers,
                    allow_private=self.settings.allow_private_urls,
                    max_bytes=options.max_download_bytes,
                    timeout=options.download_timeout,
                    read_timeout=options.request_timeout,
                )
                metrics.upstream_call(row.model, channel.name, "download", time.monotonic() - started)
                break
            except RehostError as exc:
                metrics.upstream_error(row.model, channel.name, "download")
                if attempt == DOWNLOAD_TRIES or exc.final:  # final: trying again cannot help
                    raise TaskFailed(str(exc)) from None
                log.info("task %s: download failed (%s); trying again", row.id, exc)
                await asyncio.sleep(2.0 * attempt)
        try:
            info = await asyncio.to_thread(probe_video, temp)
        except Exception:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise TaskFailed("Upstream video is not a playable MP4.") from None
        held.settling = True
        video = await asyncio.to_thread(store_video, self.settings, self.storage, row, temp, info)
        if await asyncio.to_thread(settle_video, self.store, self.storage, row, self.worker_id, video):
            log.info("task %s: completed (%.2f s re-hosted)", row.id, info.duration)
            metrics.task_finished(row.model, RELAY_ENGINE, True, time.monotonic() - held.claimed_at)


async def _by_deadline(call: Awaitable[T], deadline: float, options: RelayOptions) -> T:
    """`call` (one upstream request), cut at the task's `max_wait` deadline whatever the upstream does:
    each request has its own total time (engines/relay/bounded.py), and this bounds the sum."""
    try:
        async with asyncio.timeout(max(0.0, deadline - time.time())):
            return await call
    except TimeoutError:
        raise TaskFailed(_too_long(options)) from None


def _may_resend(options: RelayOptions) -> bool:
    """May a create of unknown fate be sent again (to the same upstream)? A reelq upstream deduplicates
    on the Idempotency-Key; the Vidu platform and OpenAI-shaped servers have none, so only if the
    models file says so (`ambiguous_create = "retry"`)."""
    return options.upstream == "reelq" or options.ambiguous_create == "retry"


def _unanswered_create(task_id: str, channel: Channel, why: str) -> TaskFailed:
    log.warning("task %s: %s did not answer the create (%s); not sent again", task_id, channel.name, why)
    return TaskFailed(
        "Upstream did not answer the create; not sent again, so that the video is never paid for twice."
    )


def _too_long(options: RelayOptions) -> str:
    return f"Upstream did not finish within {options.max_wait:g} s."


def _unreachable(options: RelayOptions, exc: Exception) -> str:
    # `exc`'s message is ours (upstream.send words it), never the upstream's text.
    return f"Upstream unreachable for more than {options.unreachable_timeout:g} s ({exc})."


def _worker_main(argv: list[str] | None = None) -> None:
    settings, name = start_worker_process("reelq-relay-worker", "relay", argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its request lines carry URLs

    async def main() -> None:
        worker = RelayWorker(settings, name)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.start_drain)
        await worker.run()

    asyncio.run(main())


if __name__ == "__main__":
    _worker_main()
