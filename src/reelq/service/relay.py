"""Relay callbacks: the Vidu platform's state-change callbacks for the tasks we relayed to it.

Framework-free like the rest of `reelq.service`; the route (api/relay.py) only moves bytes. A callback
is accepted only when its signature verifies with the upstream key the task was created with
(engines/relay/signature.py). Its body is not signed, so it is never taken as the task's status:
an accepted callback wakes the relay worker holding the task, which reads the status from the
platform at once (polling stays the fallback when callbacks never come).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

import orjson

from reelq.config import Settings
from reelq.database import TaskStore
from reelq.domain import TERMINAL, is_task_id
from reelq.engines import RELAY_ENGINE
from reelq.engines.relay import signature
from reelq.engines.relay.options import parse_options
from reelq.engines.relay.pokes import poke
from reelq.service.errors import Forbidden, InvalidRequest, NotFound

log = logging.getLogger("reelq.relay")

CALLBACK_ROUTE = "/callbacks/vidu/{task_id}"


def callback_url(public_base_url: str, task_id: str) -> str:
    """Where the platform calls back for one of our tasks (its path is part of what it signs)."""
    return public_base_url + CALLBACK_ROUTE.format(task_id=task_id)


class RelayCallbacks:
    def __init__(self, settings: Settings, store: TaskStore) -> None:
        self.settings = settings
        self.store = store

    def accept(self, task_id: str, headers: Mapping[str, str], body: bytes, now: float | None = None) -> str:
        """Verify a callback and wake the task's relay worker; returns "accepted" or "ignored" (the task
        is already finished). Raises NotFound (no such relayed task), Forbidden (bad signature),
        InvalidRequest (not a JSON object, or about another upstream task)."""
        unknown = NotFound("No relayed task with this id.")
        if not is_task_id(task_id):
            raise unknown
        row = self.store.get_task(task_id)
        entry = self.settings.catalog.get(row.model) if row is not None else None
        if row is None or entry is None or entry.engine != RELAY_ENGINE:
            raise unknown
        options = parse_options(entry.options)
        if options.upstream != "vidu" or not self.settings.public_base_url:
            raise unknown
        # What the platform signed is the URL we gave it, whatever proxy stripped on the way here.
        signed = urlsplit(callback_url(self.settings.public_base_url, task_id))
        refusal = signature.verify(
            options.api_key(),
            "POST",
            signed.path or "/",
            signed.query,
            headers,
            time.time() if now is None else now,
        )
        if refusal is not None:
            log.warning("task %s: callback refused (%s)", task_id, refusal)
            raise Forbidden(f"Callback signature refused: {refusal}.")
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
        poke(self.settings.run_dir, task_id)
        return "accepted"
