"""The rules of the task surface, once: authenticate, read, long-poll, create, render.

Both HTTP transports call this and only translate: the routed FastAPI app (api/vidu.py, the
documented surface and the fallback) and the raw-ASGI fast path (api/fastpath.py, what
uvicorn serves first). They parse the HTTP bits, call a method here, and turn the task view
or the ApiError it raises into an answer; neither decides anything a client could tell
apart. Routes added later (list, cancel, events, other API surfaces) call the same methods.

Nothing here imports an HTTP framework: errors are the ApiError family (service/errors.py),
which carries its status and headers as plain data for the transports to send.

Two spellings of the read exist on purpose. `authenticate_now`/`read_now` run synchronously
on the event loop and need the inline SQLite reader (database/fastread.py): a status read is
microseconds and the fast path serves thousands a second, so it pays for no thread hop.
`authenticate`/`read` are the same rules for any database: answered from the reader's cache
when the row did not change, else looked up where a lookup may block (PostgreSQL: a reader
thread; no reader, an in-memory test database: SQLAlchemy in a thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import anyio.to_thread
import orjson

from reelq import metrics
from reelq.config import Settings
from reelq.database import QuotaExceeded, Quotas, TaskStore
from reelq.database.batcher import CreateBatcher
from reelq.database.errors import StorageFull
from reelq.database.fastread import CachedReader
from reelq.database.views import TaskView
from reelq.domain import CANCELLED_ERROR, RESOLUTIONS, TERMINAL, Status, is_task_id
from reelq.metrics import CreateStats
from reelq.ratelimit import Limit, RateLimiter, retry_after_header
from reelq.service.covers import Covers
from reelq.service.errors import (
    ApiError,
    Conflict,
    Forbidden,
    Gone,
    InsufficientStorage,
    InvalidRequest,
    NotAllowed,
    NotFound,
    Overloaded,
    PaymentRequired,
    RateLimited,
    Unauthorized,
)
from reelq.service.events import (
    HEARTBEAT,
    RETRY,
    TERMINAL_EVENT_ID,
    event_id,
    format_event,
    parse_last_event_id,
    stage,
)
from reelq.service.links import SUFFIXES, Links, Purpose, Shown, request_base
from reelq.service.listing import encode_cursor, parse_list_query
from reelq.service.longpoll import LongPollHub
from reelq.service.models import model_list
from reelq.service.pollhint import DEFAULT_RENDER_SECONDS, MAX_QUEUED, RECENT_RENDERS, PollHints
from reelq.service.schemas import (
    parse_json_object,
    request_fingerprint,
    task_object,
    validate_create_off_loop,
)
from reelq.service.tenancy import KeyPolicies, allowed_models
from reelq.service.usage import parse_date, usage_object
from reelq.storage import Storage
from reelq.webhooks.targets import literal_problem

log = logging.getLogger("reelq.service")

MAX_IDEMPOTENCY_KEY = 200
TERMINAL_VALUES = frozenset(s.value for s in TERMINAL)
# Retry-After hints when a quota is full: no way to know when a render ends, so a polite guess.
ACTIVE_LIMIT_RETRY = 5.0
QUEUE_FULL_RETRY = 10.0
HELD_RETRY_AFTER = 5.0  # a long-poll or stream of the key ends within a minute; most much sooner
STORAGE_FULL_RETRY = 30.0  # a full disk waits for an operator, not for a render to end
# Finished answers kept per process (see `answer`); cleared whole when full, refilling is cheap.
MAX_CACHED_ANSWERS = 4096
INVALID_KEY = "Invalid or revoked API key."


def parse_bearer(header: str | None, scheme: str = "Bearer") -> str:
    """The token of an `Authorization: Bearer <key>` header value, or Unauthorized.

    `scheme` is the word before the key: `Token` on the Vidu platform's surface (api/vidu_platform.py).
    """
    if not header:
        raise Unauthorized(f"Missing API key: send 'Authorization: {scheme} <key>'.", scheme)
    given, _, token = header.partition(" ")
    token = token.strip()
    if given.lower() != scheme.lower() or not token or " " in token:
        raise Unauthorized(f"Malformed Authorization header: expected '{scheme} <key>'.", scheme)
    return token


class TaskService:
    """Reads and creates tasks for an authenticated key; one per API process."""

    def __init__(
        self,
        settings: Settings,
        store: TaskStore,
        storage: Storage,
        reader: CachedReader | None,
        limiter: RateLimiter,
        draining: threading.Event,
        on_stored: Callable[[], None],
        on_created: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.reader = reader  # the cached read path (database/fastread.py); None on an in-memory database
        self.limiter = limiter
        self.draining = draining  # set when shutting down: held long-polls answer at once
        self.public_base_url = settings.public_base_url
        self.model_limits = settings.model_limits  # served models and what each can be asked for
        self.poll_limit = Limit(rate=settings.poll_rate, burst=max(1.0, settings.poll_burst))
        self.read_limit = Limit(rate=settings.read_rate, burst=max(1.0, settings.read_burst))
        self.create_limit = Limit(rate=settings.create_rate / 60.0, burst=max(1.0, settings.create_rate))
        self.quotas = Quotas(max_active_per_key=settings.max_active_per_key, max_queue=settings.max_queue)
        # Group commit (database/batcher.py); `on_stored` wakes the workers once per stored batch.
        self.creates = CreateBatcher(store, self.quotas, on_stored=on_stored, on_created=on_created)
        # Woken by the change counter: the reader's, else the store's (LISTEN/NOTIFY on PostgreSQL).
        changes = reader.version if reader else (store.changes.value if store.changes is not None else None)
        self.long_polls = LongPollHub(changes, draining)
        # Each key's own rules (SPEC §6), cached under the same change notices as the key lookups.
        self.policies = KeyPolicies(store, reader._changes if reader else store.changes)
        self._finished: dict[tuple[str, TaskView], bytes] = {}
        # The `x-poll-after-ms` hint of non-terminal answers, from a queue snapshot (service/pollhint.py).
        self.poll_hints = PollHints(
            lambda: store.queue_stats(MAX_QUEUED, RECENT_RENDERS),
            settings.poll_rate,
            DEFAULT_RENDER_SECONDS + settings.synthetic_delay,
            # Only a models file with several pools has separate queues to count places in.
            pool_of=_pool_of(settings) if len({e.pool for e in settings.catalog.values()}) > 1 else None,
        )
        self.create_stats = CreateStats(settings.engine_for)  # reelq_tasks_created (metrics.py)
        # Every link, expiry and shown status a surface hands out (service/links.py).
        self.links = Links(storage, settings.secret_bytes(), settings.video_url_ttl)
        # Cover images (first frames, behind the links' cover links): list items, the Vidu platform's
        # and OpenAI's surfaces.
        self.covers = Covers()
        self._held: dict[str, int] = {}  # long-polls and event streams open, by key (`hold`)

    # --- the model list ---------------------------------------------------------------------

    async def models(self, key_id: str) -> dict[str, Any]:
        """`GET /v1/models`: the served models `key_id` may use (SPEC §7): the catalog, filtered by the
        key's `models` allow-list (SPEC §6)."""
        settings = self.settings
        record = await self.policies.get(key_id)
        return model_list(
            settings.catalog,
            resolutions=[r for r in RESOLUTIONS if r in settings.resolution_factors],
            created=self._models_created,
            allowed=allowed_models(record, settings.catalog),
        )

    @property
    def _models_created(self) -> int:
        """OpenAI's `created` of a model: when the models file last changed (0 for the built-in two)."""
        path = self.settings.models_file
        try:
            return int(path.stat().st_mtime) if path is not None else 0
        except OSError:
            return 0

    # --- authentication ---------------------------------------------------------------------

    def authenticate_now(self, authorization: str | None) -> str:
        """The key id of an `Authorization` header value, looked up inline (needs the SQLite reader)."""
        assert self.reader is not None and self.reader.inline
        key_id = self.reader.key_id_for(parse_bearer(authorization))
        if key_id is None:
            raise Unauthorized(INVALID_KEY)
        return key_id

    async def authenticate(self, authorization: str | None, scheme: str = "Bearer") -> str:
        """The key id of an `Authorization` header value (`<scheme> <key>`), on any database."""
        token = parse_bearer(authorization, scheme)
        reader = self.reader
        if reader is not None:
            key_id = reader.cached_key_id(token)
            if key_id is None:
                key_id = await reader.off_loop(reader.key_id_for, token)
        else:
            key_id = await anyio.to_thread.run_sync(self.store.key_id_for, token)
        if key_id is None:
            raise Unauthorized(INVALID_KEY, scheme)
        return key_id

    # --- reads ------------------------------------------------------------------------------

    def read_now(self, key_id: str, task_id: str) -> TaskView:
        """The key's task, read inline (needs the SQLite reader); RateLimited or NotFound."""
        assert self.reader is not None and self.reader.inline
        self._limit_reads(key_id, task_id)
        view = self.reader.task(task_id, key_id) if is_task_id(task_id) else None
        if view is None:
            raise _no_such_task(task_id)
        return view

    async def read(self, key_id: str, task_id: str) -> TaskView:
        """The key's task, on any database; RateLimited or NotFound."""
        if self.reader is not None and self.reader.inline:
            return self.read_now(key_id, task_id)
        await self.policies.get(key_id)  # a miss read off the loop; `_limit_reads` then finds it cached
        self._limit_reads(key_id, task_id)
        view = await self._lookup(task_id, key_id) if is_task_id(task_id) else None
        if view is None:
            raise _no_such_task(task_id)
        return view

    async def wait(
        self,
        key_id: str,
        task_id: str,
        view: TaskView,
        seconds: float,
        gone: asyncio.Future[None] | None = None,
    ) -> TaskView:
        """Hold a read (`view`, just read) until the task is terminal or `seconds` passed (a long-poll).

        Woken by the long-poll hub (service/longpoll.py) when the database changed, which re-reads
        the row (free while it is unchanged: database/fastread.py). `gone` completes when the client
        hung up, which ends the wait; so does a shutdown, answering every held long-poll with the
        current state at once instead of cancelling it at the end of its grace period. A task
        purged meanwhile answers with what was last read.
        """
        if view.status in TERMINAL_VALUES:
            return view  # nothing to wait for: not held, so not counted against the key
        with self.hold(key_id):
            return await self._wait(key_id, task_id, view, seconds, gone)

    async def _wait(
        self, key_id: str, task_id: str, view: TaskView, seconds: float, gone: asyncio.Future[None] | None
    ) -> TaskView:
        deadline = time.monotonic() + min(seconds, self.settings.max_long_poll)
        hub = self.long_polls
        seen = hub.version()  # before the read, so a commit after it always wakes us
        latest: TaskView | None = await self._lookup(task_id, key_id)
        while latest is not None:
            view = latest
            remaining = deadline - time.monotonic()
            if view.status in TERMINAL_VALUES or remaining <= 0:
                break
            if (gone is not None and gone.done()) or self.draining.is_set():
                break
            await hub.wait(remaining, seen, gone)
            seen = hub.version()
            latest = await self._lookup(task_id, key_id)
        return view

    @contextlib.contextmanager
    def hold(self, key_id: str) -> Iterator[None]:
        """`acquire_hold` for the length of a `with` block."""
        release = self.acquire_hold(key_id)
        try:
            yield
        finally:
            release()

    def acquire_hold(self, key_id: str) -> Callable[[], None]:
        """Count a long-poll or event stream of the key until the returned release is called (once or
        more); RateLimited when the key already holds REELQ_MAX_HELD_PER_KEY of them in this process.
        Event loop only, so no lock."""
        held = self._held.get(key_id, 0)
        if held >= self.settings.max_held_per_key:
            raise RateLimited(
                f"Too many long-polls and event streams open for this API key: at most "
                f"{self.settings.max_held_per_key} at once. Close one, or poll without `wait`.",
                retry_after_header(HELD_RETRY_AFTER),
                code="too_many_open_streams",
            )
        self._held[key_id] = held + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            left = self._held[key_id] - 1
            if left:
                self._held[key_id] = left
            else:
                del self._held[key_id]

        return release

    async def _lookup(self, task_id: str, key_id: str) -> TaskView | None:
        reader = self.reader
        if reader is not None:
            view = reader.cached_task(task_id, key_id)
            return view if view is not None else await reader.off_loop(reader.task, task_id, key_id)
        row = await anyio.to_thread.run_sync(self.store.get_task, task_id, key_id)
        return None if row is None else TaskView.of(row)

    def _limit_reads(self, key_id: str, task_id: str) -> None:
        """RateLimited when this key reads this task faster than its `poll_rate` (else REELQ_POLL_RATE)."""
        record = self.policies.get_now(key_id)
        rate, limit = self.settings.poll_rate, self.poll_limit
        if record is not None and record.poll_rate is not None:
            rate = record.poll_rate
            limit = Limit(rate=rate, burst=max(1.0, self.settings.poll_burst))
        retry = self.limiter.acquire(f"poll:{key_id}:{task_id}", limit)
        if retry:
            raise RateLimited(
                f"Too many status reads for this task: at most {rate:g} per second.",
                retry_after_header(retry),
            )

    def limit_key_reads(self, bucket: str) -> None:
        """RateLimited when `bucket` (a key's id, or a signed link's task) reads faster than REELQ_READ_RATE.

        For the reads that are not a task's status: lists, usage, `/content` and thumbnails, covers.
        """
        retry = self.limiter.acquire(f"read:{bucket}", self.read_limit)
        if retry:
            raise RateLimited(
                f"Too many reads: at most {self.settings.read_rate:g} per second "
                f"(bursts of {self.settings.read_burst:g}).",
                retry_after_header(retry),
            )

    # --- creates ----------------------------------------------------------------------------

    async def create(
        self,
        key_id: str,
        body: bytes | bytearray,
        content_type: str | None,
        idempotency_key: str | None,
        *,
        admitted: bool = False,
    ) -> TaskView:
        """Validate and store a create request (the raw body and its headers); the new (or replayed) task.

        Raises RateLimited (creates per minute, or the key's active tasks), InvalidRequest,
        Conflict (Idempotency-Key reused with another body), Overloaded (queue full) or
        InsufficientStorage (no room to store it). `admitted`: the transport already called
        `admit_create` (before reading the body), so the rate limit is not charged twice.
        """
        if not admitted:
            await self.admit_create(key_id)
        idempotency_key = _idempotency_key(idempotency_key)
        return await self._create(key_id, parse_json_object(body, content_type), idempotency_key)

    async def create_from(
        self, key_id: str, data: dict[str, Any], idempotency_key: str | None, *, admitted: bool = False
    ) -> TaskView:
        """The same create from a request another API surface already translated into this surface's
        fields (service/shapes/openai.py, service/shapes/vidu_platform.py): the same limits, validation,
        idempotency, quotas and webhooks, errors naming this surface's fields (the caller maps them back)."""
        if not admitted:
            await self.admit_create(key_id)
        idempotency_key = _idempotency_key(idempotency_key)
        return await self._create(key_id, data, idempotency_key)

    async def admit_create(self, key_id: str) -> None:
        """Charge the key's create rate limit (its own, else the server's); RateLimited when over it.
        Transports call it before reading a create's body (api/bodies.py), so a key over its limit
        costs no body read."""
        await self.policies.get(key_id)  # a miss read off the loop; `_limit_creates` then finds it cached
        self._limit_creates(key_id)

    def _limit_creates(self, key_id: str) -> None:
        record = self.policies.get_now(key_id)
        rate, limit = self.settings.create_rate, self.create_limit
        if record is not None and record.create_rate is not None:  # the key's own rate (SPEC §6)
            rate = record.create_rate
            limit = Limit(rate=rate / 60.0, burst=max(1.0, rate))
        wait = self.limiter.acquire(f"create:{key_id}", limit)
        if wait:
            if record is not None and record.create_rate is not None:
                self.create_stats.refused("create_rate")  # the key's own limit (SPEC §6)
            raise RateLimited(
                f"Too many creates: at most {rate:g} per minute per key.",
                retry_after_header(wait),
            )

    async def _create(self, key_id: str, data: dict[str, Any], idempotency_key: str | None) -> TaskView:
        try:
            new = await validate_create_off_loop(data, self.model_limits)  # image decodes run in a thread
        except ApiError as exc:
            # Its traceback and context reach the thread's future, which holds the error: a reference
            # cycle keeping this request's frames (a 50 MB body, its data URIs) until the next full
            # garbage collection. Cut it, so a refused body is freed as soon as it is answered.
            exc.__traceback__ = exc.__context__ = None
            raise exc from None
        if new.callback_url is not None:
            # A host written as a private address is refused now; a name is judged at each delivery.
            problem = literal_problem(new.callback_url, self.settings.allow_private_urls)
            if problem is not None:
                raise InvalidRequest(f"Invalid value for 'callback_url': {problem}.", param="callback_url")
        record = await self.policies.get(key_id)
        if not allowed_models(record, [new.model]):
            self.create_stats.refused("model_not_allowed")
            raise NotAllowed(
                f"This key may not use the model '{new.model}'.", param="model", code="model_not_allowed"
            )
        # The price at the requested duration, reserved of the key's budget with the insert (SPEC §6).
        price = self.settings.price(new.model, new.duration, new.resolution, new.off_peak)
        new = replace(new, price=price)
        if idempotency_key is not None:
            new = replace(new, idempotency_key=idempotency_key, request_hash=request_fingerprint(new))
        try:
            row, created = await self.creates.create(key_id, new)
        except StorageFull:
            raise InsufficientStorage(
                "The server has no room to store the task; nothing was stored. Try again later.",
                retry_after_header(STORAGE_FULL_RETRY),
            ) from None
        except QuotaExceeded as exc:
            if exc.kind == "budget":
                self.create_stats.refused("budget")
                raise PaymentRequired(
                    f"The key's budget cannot cover this task ({exc.limit} tokens); nothing was stored.",
                ) from None
            if exc.kind == "active":
                self.create_stats.refused("max_active")
            if exc.kind == "queue":
                raise Overloaded(
                    "The queue is full; try again later.", retry_after_header(QUEUE_FULL_RETRY)
                ) from None
            raise RateLimited(
                f"This key already has {exc.limit} tasks waiting or running; wait for one to finish.",
                retry_after_header(ACTIVE_LIMIT_RETRY),
                code="too_many_active_tasks",
            ) from None
        if created:
            self.create_stats.created_one(new.model)
        elif row.request_hash != new.request_hash:
            raise Conflict(
                "This Idempotency-Key was already used with a different request body.",
                param="Idempotency-Key",
                code="idempotency_key_reused",
            )
        return TaskView.of(row)

    # --- downloads and usage (the owner's reads that are not a status) -----------------------

    async def video_content(self, key_id: str, task_id: str, spell: Callable[[str], str] = str) -> Download:
        """The key's completed task whose video it downloads with its key (OpenAI's `/content`).

        The caller counts it among the key's reads first (`limit_key_reads`: the surface checks its own
        query in between), not as a status read.

        NotFound (`video_not_found`); InvalidRequest `video_not_ready` before it completed, naming its
        status as `spell` spells a wire status for the surface; Gone (`video_expired`) once its links
        expired or the video was deleted.
        """
        view = await self._lookup(task_id, key_id) if is_task_id(task_id) else None
        if view is None:
            raise NotFound(f"No video with id '{task_id}'.", param="id", code="video_not_found")
        shown = self.links.shown(view)
        if not shown.completed or not view.video_key:
            raise InvalidRequest(
                f"Video '{task_id}' is {spell(shown.status)}: its content is only available once "
                "it has completed.",
                param="video_id",
                code="video_not_ready",
            )
        if view.video_deleted or shown.expires_at is None or self.links.expired(shown.expires_at):
            raise Gone("This video has expired and was deleted.", code="video_expired")
        return Download(view, view.video_key, shown.expires_at)

    async def signed_file(self, what: Purpose, filename: str, expires: str, signature: str) -> Download:
        """The completed task's video behind a signed `/v1/files` link to it or its cover (`what`), no key
        needed; the §4 error a bad, forged, expired or dead link gets otherwise."""
        suffix = SUFFIXES[what]
        task_id = filename.removesuffix(suffix)
        if not filename.endswith(suffix) or not is_task_id(task_id):
            raise NotFound(f"No such {what}.", code="video_not_found")
        try:
            expires_at = int(expires)
        except ValueError:
            raise Forbidden("Missing or invalid signature.") from None
        # Verify before anything else so a forged link learns nothing, not even whether it expired.
        if not self.links.verify(what, task_id, expires_at, signature):
            raise Forbidden("Missing or invalid signature.")
        if self.links.expired(expires_at):
            raise Gone(f"This {what} link has expired.", code="link_expired")
        row = await anyio.to_thread.run_sync(self.store.get_task, task_id)
        if row is None or row.status != Status.COMPLETED or not row.video_key:
            raise NotFound(f"No such {what}.", code="video_not_found")
        if row.video_deleted:
            raise Gone("This video has expired and was deleted.", code="link_expired")
        return Download(TaskView.of(row), row.video_key, expires_at)

    async def usage(self, key_id: str, since: str | None, until: str | None) -> dict[str, Any]:
        """`GET /v1/usage`: what the key was charged within [since, until] (the query's dates, InvalidRequest
        naming one that is not a date) and its budget now; counted among the key's reads."""
        self.limit_key_reads(key_id)
        start, end = parse_date(since, "since"), parse_date(until, "until")
        rows = await anyio.to_thread.run_sync(self.store.usage, key_id, start, end)
        record = await anyio.to_thread.run_sync(self.store.key_record, key_id)  # fresh: balances move
        return usage_object(key_id, start, end, rows, record)

    # --- webhooks ---------------------------------------------------------------------------

    async def deliveries(self, key_id: str, task_id: str) -> dict[str, Any]:
        """The webhook delivery attempts of the key's task (`GET /v1/vidu/videos/{id}/deliveries`).

        Read as often as a status read of the same task is (REELQ_POLL_RATE, its own bucket).
        """
        retry = self.limiter.acquire(f"deliveries:{key_id}:{task_id}", self.poll_limit)
        if retry:
            raise RateLimited(
                f"Too many delivery reads for this task: at most {self.settings.poll_rate:g} per second.",
                retry_after_header(retry),
            )
        if not is_task_id(task_id) or await self._lookup(task_id, key_id) is None:
            raise _no_such_task(task_id)
        attempts = await anyio.to_thread.run_sync(self.store.webhook_attempts, task_id)
        return {
            "object": "list",
            "task_id": task_id,
            "data": [
                {
                    "webhook_id": a.webhook_id,
                    "event": a.event,
                    "attempt": a.attempt,
                    "created": int(a.at),
                    "timestamp": round(a.at, 3),
                    "duration_ms": a.duration_ms,
                    "status_code": a.status_code,
                    "error": a.error,
                    "outcome": a.outcome,
                }
                for a in attempts
            ],
        }

    # --- answers ----------------------------------------------------------------------------

    def link_base(
        self, scheme: str, host: str | None, root: str, server: tuple[str, int | None] | None = None
    ) -> str:
        """Where a request's video links point (service/links.py `request_base`)."""
        return request_base(self.public_base_url, scheme, host, root, server)

    def shown(self, view: TaskView, base_url: str | None = None) -> Shown:
        """What a client is shown of `view` (status, progress, expiry; links with `base_url`): the one
        rule every surface uses (service/links.py)."""
        return self.links.shown(view, base_url)

    def render(self, view: TaskView, base_url: str) -> dict[str, Any]:
        """The wire task object (SPEC §1); `base_url` is where its video link points (`link_base`)."""
        return task_object(view, self.links.shown(view, base_url))

    def answer(self, view: TaskView, base_url: str) -> bytes:
        """The task object as the JSON body both transports send."""
        if view.status not in TERMINAL_VALUES:
            return orjson.dumps(self.render(view, base_url))
        # A finished task reads the same until it is purged: keyed on the whole row, the
        # cached answer can never be stale, and clients poll finished tasks a lot.
        cache_key = (base_url, view)
        body = self._finished.get(cache_key)
        if body is None:
            body = orjson.dumps(self.render(view, base_url))
            if len(self._finished) >= MAX_CACHED_ANSWERS:
                self._finished.clear()
            self._finished[cache_key] = body
        return body

    def poll_after(self, view: TaskView) -> list[tuple[bytes, bytes]]:
        """The polling-hint header of an answer about `view` (none once it is terminal); no query."""
        return self.poll_hints.header(view)

    # --- the owner's task management: list, cancel, delete -------------------------------------

    async def list_tasks(
        self, key_id: str, limit: str | None, cursor: str | None, status: str | None
    ) -> TaskPage:
        """A page of the key's tasks, newest first; the raw query values (InvalidRequest naming one)."""
        self.limit_key_reads(key_id)
        query = parse_list_query(limit, cursor, status)
        rows = await anyio.to_thread.run_sync(
            self.store.list_tasks, key_id, query.limit + 1, query.before, query.status
        )
        has_more = len(rows) > query.limit
        rows = rows[: query.limit]
        next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if has_more else None
        asked = [
            {
                "prompt": row.prompt,
                "duration": row.duration,
                "aspect_ratio": row.aspect_ratio,
                "resolution": row.resolution,
                "seed": row.seed,
            }
            for row in rows
        ]
        return TaskPage([TaskView.of(row) for row in rows], has_more, next_cursor, asked)

    async def page(
        self, key_id: str, limit: int, after_id: str | None, ascending: bool
    ) -> tuple[list[TaskView], bool]:
        """A page of the key's tasks after the task `after_id` (newest first, or oldest first with
        `ascending`), and whether more follow: the OpenAI surface's `after`/`order`. An `after_id` that
        is not one of the key's tasks is NotFound."""
        self.limit_key_reads(key_id)
        position = None
        if after_id is not None:
            view = await self._lookup(after_id, key_id) if is_task_id(after_id) else None
            if view is None:
                raise _no_such_task(after_id)
            position = (view.created_at, view.id)
        rows = await anyio.to_thread.run_sync(
            self.store.list_tasks, key_id, limit + 1, position, None, ascending
        )
        return [TaskView.of(row) for row in rows[:limit]], len(rows) > limit

    def page_answer(self, page: TaskPage, base_url: str) -> bytes:
        """The list as the JSON body: `{"object": "list", "data": [...], "has_more", "next_cursor"}`."""
        return orjson.dumps(
            {
                "object": "list",
                "data": [
                    self._list_item(view, asked, base_url)
                    for view, asked in zip(page.tasks, page.asked or [{}] * len(page.tasks), strict=True)
                ],
                "has_more": page.has_more,
                "next_cursor": page.next_cursor,
            }
        )

    def _list_item(self, view: TaskView, asked: dict[str, Any], base_url: str) -> dict[str, Any]:
        """A list item: the task object, what was asked, and its cover (the poster a gallery shows
        without fetching any video: the web page)."""
        shown = self.links.shown(view, base_url)
        return {**task_object(view, shown), **asked, "cover_url": shown.cover_url}

    async def cancel(self, key_id: str, task_id: str) -> TaskView:
        """Cancel the key's task: a queued or processing task is failed "Cancelled by user." at once
        (a rendering worker notices within a second and stops; nothing is charged). Cancelling it
        again answers the same; a task that finished otherwise is Conflict; another key's, NotFound."""
        if not is_task_id(task_id):
            raise _no_such_task(task_id)
        result = await anyio.to_thread.run_sync(self.store.cancel, task_id, key_id)
        row = result.row
        if row is None:
            raise _no_such_task(task_id)
        if result.cancelled:
            metrics.task_finished(row.model, self.settings.engine_for(row.model), False, reason="cancelled")
        if not result.cancelled and not (row.status == Status.FAILED and row.error == CANCELLED_ERROR):
            raise Conflict(
                f"Task '{task_id}' already finished ({row.status}); there is nothing to cancel.",
                param="id",
                code="task_already_finished",
            )
        return TaskView.of(row)

    async def delete(self, key_id: str, task_id: str) -> bytes:
        """Delete the key's task and its video (a live task is cancelled in the same transaction, so its
        worker stops); its id then answers 404 and its video link no longer serves. The JSON answer."""
        if not is_task_id(task_id):
            raise _no_such_task(task_id)

        def remove() -> bool:
            result = self.store.delete_and_cancel(task_id, key_id)
            row = result.row
            if row is not None and result.cancelled:  # an unfinished task deleted: it failed here
                engine = self.settings.engine_for(row.model)
                metrics.task_finished(row.model, engine, False, reason="deleted")
            if row is not None and row.video_key:
                try:
                    self.storage.delete(row.video_key)
                except Exception:  # the task is gone either way: its owner is told so, the operator why
                    log.exception("task %s deleted; video %s not removed", task_id, row.video_key)
            return row is not None

        if not await anyio.to_thread.run_sync(remove):
            raise _no_such_task(task_id)
        return orjson.dumps({"id": task_id, "object": "video.deleted", "deleted": True})

    # --- server-sent events (service/events.py) -------------------------------------------------

    async def open_events(self, key_id: str, task_id: str, last_event_id: str | None) -> TaskView | None:
        """Check an events request before the stream starts (a read: rate limit, NotFound); None when
        the client's `Last-Event-ID` already is the terminal event (answer 204: nothing more to send)."""
        view = await self.read(key_id, task_id)
        if view.status in TERMINAL_VALUES and parse_last_event_id(last_event_id) == TERMINAL_EVENT_ID:
            return None
        return view

    async def events(
        self,
        key_id: str,
        task_id: str,
        view: TaskView,
        last_event_id: str | None,
        base_url: str,
        gone: asyncio.Future[None] | None = None,
    ) -> AsyncIterator[bytes]:
        """The SSE stream of a task opened by `open_events` (`view`, as it read it): one event per new
        state, woken through the long-poll hub like `wait` (an idle stream costs nothing between
        changes), heartbeat comments when idle, the end after the terminal event. A shutdown or the
        client hanging up (`gone`) ends it; a reconnect with Last-Event-ID resumes where it was."""
        hub = self.long_polls
        heartbeat = self.settings.sse_heartbeat
        last = parse_last_event_id(last_event_id)
        if last is not None and last > event_id(view):
            last = None  # not an id this task could have sent yet: start afresh
        seen = hub.version()
        latest: TaskView | None = view
        yield RETRY
        wrote = time.monotonic()
        while latest is not None:
            current = event_id(latest)
            if last is None or current > last:
                kind = "status" if last is None or stage(current) != stage(last) else "progress"
                yield format_event(kind, current, self.answer(latest, base_url))
                wrote = time.monotonic()
                last = current
            if current >= TERMINAL_EVENT_ID or self.draining.is_set() or (gone is not None and gone.done()):
                return
            idle = time.monotonic() - wrote
            if idle >= heartbeat:
                yield HEARTBEAT
                wrote = time.monotonic()
                continue
            await hub.wait(heartbeat - idle, seen, gone)
            seen = hub.version()
            latest = await self._lookup(task_id, key_id)

    def close(self) -> None:
        """Store the creates still queued."""
        self.creates.close()


@dataclass(frozen=True, slots=True)
class TaskPage:
    """One page of a key's tasks (`TaskService.list_tasks`)."""

    tasks: list[TaskView]
    has_more: bool
    next_cursor: str | None
    # Per task, what was asked (prompt, duration, aspect_ratio, resolution, seed): list items carry
    # it as extension keys (SPEC §1 allows them), so a listing says what each video is.
    asked: list[dict[str, Any]] | None = None


@dataclass(frozen=True, slots=True)
class Download:
    """A completed task's stored video its owner may download now (`TaskService.video_content`)."""

    view: TaskView
    video_key: str
    expires_at: int  # when its links stop working


def _no_such_task(task_id: str) -> NotFound:
    return NotFound(
        f"No task with id '{task_id}'.",
        param="id",
        code="task_not_found",
        named=lambda name: f"No task with {name} '{task_id}'.",
    )


def _idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not value or len(value) > MAX_IDEMPOTENCY_KEY or not all(32 <= ord(c) < 127 for c in value):
        raise InvalidRequest(
            "Idempotency-Key must be 1..200 printable ASCII characters.",
            param="Idempotency-Key",
            code="invalid_idempotency_key",
        )
    return value


def _pool_of(settings: Settings) -> Callable[[str], str]:
    """model -> the pool that serves it (SPEC §7), for the polling hint's per-pool queues."""
    from reelq.catalog import DEFAULT_POOL

    catalog = settings.catalog
    return lambda model: catalog[model].pool if model in catalog else DEFAULT_POOL
