"""The polling hint: when a client polling a task that is not finished should ask again.

Non-terminal task answers carry `x-poll-after-ms` (SPEC §3; in the spirit of OpenAI's
`openai-poll-after-ms`). The estimate is the time the task still needs — its place in the queue
times the typical render time of its model, spread over the renders running at once, or the part
of a render its progress says is left — halved, and bounded: halving makes a client's polls close
in on the finish instead of overshooting it, the floor keeps within the per-task read rate, the
ceiling keeps a client from sleeping through a queue that moved faster than it looked.

A status read must not pay a query for this: the figures come from a snapshot of the queue (the
creation times of queued rows, the number of running renders, recent render times per model)
refreshed in a background thread at most every REFRESH_SECONDS, triggered by reads, so a read
costs a clock read, a binary search and some arithmetic. The very first read of a process takes
the snapshot inline once (a few milliseconds) so that every answer, from the first, is computed
the same way.
"""

from __future__ import annotations

import bisect
import logging
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reelq.database.views import TaskView
from reelq.domain import TERMINAL, Status
from reelq.service.links import shown_state

log = logging.getLogger("reelq.api")

HEADER = "x-poll-after-ms"
REFRESH_SECONDS = 2.0
MAX_HINT_MS = 30_000
MIN_HINT_MS = 250  # even with a generous read rate: a tighter loop only burns requests
DEFAULT_RENDER_SECONDS = 10.0  # before a model has finished anything on this server
RECENT_RENDERS = 200  # completed tasks the typical render time is the median of
MAX_QUEUED = 20_000  # queue positions beyond this are all "at the back"
_TERMINAL = frozenset(s.value for s in TERMINAL)

# TaskStore.queue_stats: (queued created_at, running, renders[, queued rows' models, running by model])
Stats = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    queued: list[float] = field(default_factory=list)  # creation times of queued rows, sorted
    running: int = 0
    render_seconds: dict[str, float] = field(default_factory=dict)  # typical (median) per model
    # Per pool (SPEC §7: each pool's workers take only its tasks), when the models file has pools.
    queued_by_pool: dict[str, list[float]] = field(default_factory=dict)
    running_by_pool: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, stats: Stats, pool_of: Callable[[str], str] | None = None) -> QueueSnapshot:
        queued, running, renders = stats[:3]
        per_model: dict[str, list[float]] = {}
        for model, seconds in renders:
            per_model.setdefault(model, []).append(max(0.0, seconds))
        by_pool: dict[str, list[float]] = {}
        running_by_pool: dict[str, int] = {}
        if pool_of is not None and len(stats) >= 5:
            for created, model in zip(queued, stats[3], strict=True):
                by_pool.setdefault(pool_of(model), []).append(created)
            for model, n in stats[4].items():
                pool = pool_of(model)
                running_by_pool[pool] = running_by_pool.get(pool, 0) + n
        return cls(
            queued=sorted(queued),
            running=running,
            render_seconds={model: statistics.median(times) for model, times in per_model.items()},
            queued_by_pool={pool: sorted(times) for pool, times in by_pool.items()},
            running_by_pool=running_by_pool,
        )


class PollHints:
    """`hint_ms(view)`: milliseconds until the next poll is worth it, or None for a finished task."""

    def __init__(
        self,
        fetch: Callable[[], Stats],
        poll_rate: float,
        default_render_seconds: float,
        pool_of: Callable[[str], str] | None = None,
    ) -> None:
        self._fetch = fetch
        # model -> pool: a queued task's place is counted in its pool's queue, among its pool's renders.
        self._pool_of = pool_of
        self._floor_ms = max(MIN_HINT_MS, int(1000 / poll_rate) if poll_rate > 0 else MAX_HINT_MS)
        self._default = default_render_seconds
        self._snapshot: QueueSnapshot | None = None
        self._taken = 0.0
        self._refreshing = threading.Lock()

    def hint_ms(self, view: TaskView) -> int | None:
        status, progress = shown_state(view)
        if status in _TERMINAL:
            return None
        snapshot = self._current()
        typical = snapshot.render_seconds.get(view.model, self._default)
        if status == Status.PROCESSING:
            remaining = typical * (100 - min(progress, 99)) / 100
        else:
            queued, running = snapshot.queued, snapshot.running
            if self._pool_of is not None and snapshot.queued_by_pool:
                pool = self._pool_of(view.model)
                queued = snapshot.queued_by_pool.get(pool, [])
                running = snapshot.running_by_pool.get(pool, 0)
            ahead = bisect.bisect_left(queued, view.created_at)
            remaining = (ahead / max(1, running) + 1) * typical
        return min(MAX_HINT_MS, max(self._floor_ms, int(remaining * 500)))

    def header(self, view: TaskView) -> list[tuple[bytes, bytes]]:
        """The hint as raw ASGI headers (none for a finished task), for both transports."""
        hint = self.hint_ms(view)
        return [] if hint is None else [(HEADER.encode(), str(hint).encode())]

    def _current(self) -> QueueSnapshot:
        snapshot = self._snapshot
        if snapshot is None:
            return self._refresh()  # once per process, inline (see the module docstring)
        now = time.monotonic()
        if now - self._taken >= REFRESH_SECONDS:
            # Marked before the thread starts, so the reads meanwhile start no other (reads run on
            # the event loop, one at a time); a failing query is retried only every REFRESH_SECONDS.
            self._taken = now
            threading.Thread(target=self._refresh, name="reelq-poll-hints", daemon=True).start()
        return snapshot

    def _refresh(self) -> QueueSnapshot:
        with self._refreshing:
            self._taken = time.monotonic()
            try:
                self._snapshot = QueueSnapshot.of(self._fetch(), self._pool_of)
            except Exception:
                log.warning("could not refresh the polling-hint figures", exc_info=True)
                if self._snapshot is None:
                    self._snapshot = QueueSnapshot()
            return self._snapshot
