"""Server-sent events of one task (`GET /v1/result/{id}/events`): the wire format and event ids.

A stream sends `status` events (the first of a connection, then each change of the wire status)
and `progress` events (progress moved, status the same), each carrying the task object of §1 as
`data`, and ends after the terminal one. Comment lines (`: keep-alive`) go out after
REELQ_SSE_HEARTBEAT idle seconds so proxies keep the stream open.

Event ids encode the task's state, not a message counter: `0` queued, `1`..`100` processing at
progress 0..99, `1000` finished. What a client sees only moves forward (SPEC §2: the wire status
never goes back, progress only grows), so the ids grow too, and a reconnect's `Last-Event-ID`
says exactly what the client has seen: the stream resumes with the current state if it is newer
and never skips the terminal event (the terminal state outranks everything). A reconnect whose
`Last-Event-ID` already is the terminal event gets `204 No Content`, which tells a browser's
EventSource to stop reconnecting.
"""

from __future__ import annotations

from reelq.database.views import TaskView
from reelq.domain import TERMINAL, Status
from reelq.service.links import shown_state

TERMINAL_EVENT_ID = 1000
MAX_EVENT_ID_CHARS = 20
HEARTBEAT = b": keep-alive\n\n"
# Sent first: how long an EventSource waits before reconnecting after a dropped stream (ms).
RETRY = b"retry: 1000\n\n"
_TERMINAL = frozenset(s.value for s in TERMINAL)


def event_id(view: TaskView) -> int:
    """The state a client has seen once it got this view's event (see the module docstring)."""
    status, progress = shown_state(view)
    if status in _TERMINAL:
        return TERMINAL_EVENT_ID
    if status == Status.PROCESSING:
        return 1 + min(max(progress, 0), 99)
    return 0


def stage(event: int) -> int:
    """0 queued, 1 processing, 2 finished: a change of stage is a `status` event."""
    return 0 if event == 0 else 2 if event >= TERMINAL_EVENT_ID else 1


def parse_last_event_id(value: str | None) -> int | None:
    """A `Last-Event-ID` this server sent, or None (absent or not ours: the stream starts afresh)."""
    if not value or len(value) > MAX_EVENT_ID_CHARS:
        return None
    value = value.strip()
    if not value.isdigit():
        return None
    number = int(value)
    return number if number <= TERMINAL_EVENT_ID else None


def format_event(kind: str, event: int, data: bytes) -> bytes:
    """One SSE message; `data` is single-line JSON (orjson never writes a raw newline)."""
    return b"event: %s\nid: %d\ndata: %s\n\n" % (kind.encode(), event, data)
