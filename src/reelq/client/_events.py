"""Server-sent events of a task (`GET /v1/result/{id}/events`), parsed without I/O for both clients.

The server sends `status` and `progress` events whose data is the task object and whose ids say what
state the client has seen; a reconnect sends the last one as `Last-Event-ID` and resumes without
missing the terminal event. Only what this API sends is handled (one `data:` line per event is the
norm; several are joined with newlines as the SSE format says).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from reelq.client._task import Task

# The server sends a heartbeat comment every 15 s by default: a read this long without one means the
# connection is dead, and the stream is reopened (with Last-Event-ID).
EVENTS_READ_TIMEOUT = 60.0


@dataclass
class EventParser:
    """Feed it lines (without their line ending); it returns a Task at the end of each task event."""

    last_event_id: str | None = None
    _data: list[str] = field(default_factory=list)
    _kind: str = ""

    def feed(self, line: str) -> Task | None:
        if line == "":
            data, kind = "\n".join(self._data), self._kind
            self._data, self._kind = [], ""
            if not data or kind not in ("", "status", "progress"):
                return None
            return Task.from_dict(json.loads(data))
        if line.startswith(":"):
            return None  # a comment: the server's heartbeat
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._kind = value
        elif name == "id" and "\0" not in value:
            self.last_event_id = value
        return None
