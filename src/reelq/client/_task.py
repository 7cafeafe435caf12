"""The task object of SPEC §1 as a frozen, typed value."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

TERMINAL = frozenset({"completed", "failed"})


@dataclass(frozen=True, slots=True)
class Task:
    """A video-generation task as the server last reported it.

    `raw` is the object as received (extension keys included); it is left out of equality and repr.
    """

    id: str
    object: str
    created: int
    model: str
    status: str
    video_url: str | None = None
    actual_duration: float | None = None
    total_tokens: int | float | None = None
    error: str | None = None
    progress: int | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def done(self) -> bool:
        """True once the task is `completed` or `failed`: its status never changes again."""
        return self.status in TERMINAL

    @property
    def ok(self) -> bool:
        """True when the task completed: its video is at `video_url`."""
        return self.status == "completed"

    @classmethod
    def from_dict(cls, data: Any) -> Task:
        """Build a Task from the wire object; ValueError if it is not one."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a task object, got {type(data).__name__}")
        for key in ("id", "status"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise ValueError(f"task object without a string '{key}'")
        progress = _number(data, "progress")
        return cls(
            id=data["id"],
            object=_string(data, "object") or "Video",
            created=int(_number(data, "created") or 0),
            model=_string(data, "model") or "",
            status=data["status"],
            video_url=_string(data, "video_url"),
            actual_duration=_number(data, "actualDuration"),
            total_tokens=_number(data, "totalTokens"),
            error=_string(data, "error"),
            progress=None if progress is None else int(progress),
            raw=data,
        )


@dataclass(frozen=True, slots=True)
class TaskList:
    """One page of a key's tasks, newest first; `next_cursor` fetches the next (None on the last)."""

    data: list[Task]
    has_more: bool
    next_cursor: str | None

    @classmethod
    def from_dict(cls, data: Any) -> TaskList:
        """Build a TaskList from the wire object; ValueError if it is not one."""
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise ValueError("expected a list object with 'data'")
        cursor = _string(data, "next_cursor")
        return cls([Task.from_dict(item) for item in data["data"]], bool(data.get("has_more")), cursor)


def _string(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"task key '{key}' should be a string or null, got {type(value).__name__}")


def _number(data: Mapping[str, Any], key: str) -> Any:
    value = data.get(key)
    # bool is an int in Python but never a number on this wire
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return value
    raise ValueError(f"task key '{key}' should be a number or null, got {type(value).__name__}")
