"""Relay callbacks: the Vidu platform's state-change callbacks for the tasks we relayed to it.

Framework-free like the rest of `reelq.service`; the route (api/relay.py) only moves bytes. A callback
is accepted only when its signature verifies with the upstream key the task was created with
(engines/relay/signature.py). Its body is not signed, so it is never taken as the task's status:
an accepted callback wakes the relay worker holding the task, which reads the status from the
platform at once (polling stays the fallback when callbacks never come).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from urllib.parse import urlsplit

import orjson

from reelq.config import Settings
from reelq.database import TaskRow, TaskStore
from reelq.domain import TERMINAL, is_task_id
from reelq.engines import RELAY_ENGINE
from reelq.engines.relay import signature
from reelq.engines.relay.options import channel_for, parse_options
from reelq.engines.relay.pokes import callback_url, poke
from reelq.service.errors import Forbidden, InvalidRequest, NotFound

log = logging.getLogger("reelq.relay")

# A callback is a small JSON object; its body is read only after its signature verified, and never
# beyond this (413).
MAX_CALLBACK_BODY = 64 * 1024
# Verified signatures remembered against replays: at most this many, each until its Date leaves the
# clock window (a replay after that is refused as stale by the signature check itself).
MAX_REMEMBERED = 10_000
# Refused callbacks are logged once per this many seconds, with the count of those not logged.
REFUSAL_LOG_INTERVAL = 60.0


def callbacks_enabled(settings: Settings) -> bool:
    """Whether this deployment asks the Vidu platform for callbacks at all: a public base URL and a
    relayed Vidu model with `callbacks` on. Elsewhere the route answers 404 without reading a byte."""
    if not settings.public_base_url:
        return False
    for entry in settings.catalog.values():
        if entry.engine == RELAY_ENGINE:
            channels = parse_options(entry.options).channels()
            if any(c.upstream == "vidu" and c.callbacks for c in channels):
                return True
    return False


class SeenSignatures:
    """Signatures of verified callbacks until their Date leaves the clock window; bounded, thread-safe.

    Full of unexpired entries (10,000 verified callbacks in 10 minutes), the oldest is forgotten first:
    memory stays bounded and only a callback the platform itself signed could be replayed.
    """

    def __init__(self, limit: int = MAX_REMEMBERED) -> None:
        self.limit = limit
        self._until: OrderedDict[str, float] = OrderedDict()  # in order of arrival
        self._lock = threading.Lock()

    def first_time(self, key: str, sent_at: float, now: float) -> bool:
        """Remember `key` until `sent_at` + the clock window; False when it was already seen."""
        with self._lock:
            until = self._until
            while until and next(iter(until.values())) < now:  # expiry is near arrival order
                until.popitem(last=False)
            expired = [k for k, t in until.items() if t < now] if len(until) >= self.limit else []
            for k in expired:
                del until[k]
            if key in until:
                return False
            while len(until) >= self.limit:
                until.popitem(last=False)
            until[key] = sent_at + signature.MAX_CLOCK_SKEW
            return True


class RefusalLog:
    """One log line per refused callback would let a forger fill the log: the first refusal of each
    interval is logged, the next line says how many were left out."""

    def __init__(self, interval: float = REFUSAL_LOG_INTERVAL) -> None:
        self.interval = interval
        self._next = 0.0
        self._suppressed = 0
        self._lock = threading.Lock()

    def refused(self, task_id: str, reason: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            if now < self._next:
                self._suppressed += 1
                return
            suppressed, self._suppressed = self._suppressed, 0
            self._next = now + self.interval
        more = f" ({suppressed} more refused since the last line)" if suppressed else ""
        log.warning("task %s: callback refused (%s)%s", task_id, reason, more)  # an id: checked


class RelayCallbacks:
    """One per API process (api/deps.py): it remembers the signatures it has seen."""

    def __init__(self, settings: Settings, store: TaskStore) -> None:
        self.settings = settings
        self.store = store
        self.enabled = callbacks_enabled(settings)
        self.seen = SeenSignatures()
        self.refusals = RefusalLog()

    def accept(self, task_id: str, headers: Mapping[str, str], body: bytes, now: float | None = None) -> str:
        """`verify` then `take`, for a body already in hand."""
        return self.take(self.verify(task_id, headers, now), body)

    def verify(self, task_id: str, headers: Mapping[str, str], now: float | None = None) -> TaskRow:
        """Check a callback from its headers alone, before its body is read: the relayed task it names.

        Raises NotFound (no such relayed task, or callbacks off), Forbidden (bad, stale or replayed
        signature).
        """
        unknown = NotFound("No relayed task with this id.")
        if not self.enabled or not is_task_id(task_id):
            raise unknown
        row = self.store.get_task(task_id)
        entry = self.settings.catalog.get(row.model) if row is not None else None
        if row is None or entry is None or entry.engine != RELAY_ENGINE:
            raise unknown
        options = channel_for(parse_options(entry.options), row.upstream_channel)  # its key signs
        if options.upstream != "vidu" or not options.callbacks:
            raise unknown
        assert self.settings.public_base_url  # self.enabled
        # What the platform signed is the URL we gave it, whatever proxy stripped on the way here.
        signed = urlsplit(callback_url(self.settings.public_base_url, task_id))
        now = time.time() if now is None else now
        refusal, sent_at = signature.check(
            options.api_key(), "POST", signed.path or "/", signed.query, headers, now
        )
        if refusal is None and not self.seen.first_time(_signature_of(task_id, headers), sent_at, now):
            refusal = "replayed: this signature was already received"
        if refusal is not None:
            self.refusals.refused(task_id, refusal)
            raise Forbidden(f"Callback signature refused: {refusal}.")
        return row

    def take(self, row: TaskRow, body: bytes) -> str:
        """Wake the verified task's relay worker; returns "accepted" or "ignored" (the task is already
        finished). Raises InvalidRequest (not a JSON object, or about another upstream task)."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise InvalidRequest("The callback body is not JSON.") from None
        if not isinstance(data, dict):
            raise InvalidRequest("The callback body must be a JSON object.")
        said = data.get("id", data.get("task_id"))
        if said is not None and row.upstream_id is not None and str(said) != row.upstream_id:
            raise InvalidRequest("The callback is about another upstream task.", param="id")
        if row.status in TERMINAL:
            return "ignored"
        poke(self.settings.run_dir, row.id)
        return "accepted"


def _signature_of(task_id: str, headers: Mapping[str, str]) -> str:
    for name, value in headers.items():
        if name.lower() == "x-hmac-signature":
            return f"{task_id} {value.strip()}"
    return task_id  # not reached: a verified callback has a signature
