"""A key's own rules (SPEC §6): its model allow-list, rates, admin flag and budget, read once per change.

The settings live on the key's row (database/keys.py). Every request of a key needs some of them
(its poll rate on a status read, its models and create rate on a create), so each API process keeps
them cached under the change counter like the key lookups of database/fastread.py: an admin's PATCH
commits a change notice that every API process sees, and the next request reads the row again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import anyio.to_thread

from reelq.database import TaskStore
from reelq.database.changes import ChangeNotices
from reelq.database.keys import KeyRecord
from reelq.ratelimit import Limit

MAX_CACHED = 10_000


class KeyPolicies:
    """Key records by id, cached until the next change that could have touched a key."""

    def __init__(self, store: TaskStore, changes: ChangeNotices | None) -> None:
        self._store = store
        self._changes = changes
        self._cache: dict[str, tuple[int, KeyRecord | None]] = {}

    def cached(self, key_id: str) -> KeyRecord | None:
        found = self._cache.get(key_id)
        if found is None or self._changes is None or not self._changes.fresh(found[0], None):
            return None
        return found[1]

    def get_now(self, key_id: str) -> KeyRecord | None:
        """The key's record, read here on a miss (a point read; on the SQLite file microseconds)."""
        cached = self.cached(key_id)
        if cached is not None:
            return cached
        version = self._changes.value() if self._changes is not None else 0
        record = self._store.key_record(key_id)
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[key_id] = (version, record)
        return record

    async def get(self, key_id: str) -> KeyRecord | None:
        """The same, a miss read in a thread (PostgreSQL: a network round trip)."""
        cached = self.cached(key_id)
        return cached if cached is not None else await anyio.to_thread.run_sync(self.get_now, key_id)


def allowed_models(record: KeyRecord | None, models: Iterable[str]) -> list[str]:
    """Which of `models` this key may use (its `models` allow-list; all when it has none).
    For `GET /v1/models`, which lists only what the key may use."""
    names = list(models)
    if record is None or record.models is None:
        return names
    allowed = set(record.models)
    return [name for name in names if name in allowed]


def per_key_limit(default: Limit, rate: float | None, make: Callable[[float], Limit]) -> Limit:
    """The key's own rate (`create_rate`/`poll_rate`) when it has one, else the server's."""
    return default if rate is None else make(rate)
