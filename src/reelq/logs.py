"""Logging set-up for every reelq process: text (default) or one JSON object a line (`REELQ_LOG_FORMAT=json`).

A JSON line carries `task_id` whenever one is known: the task a render worker is running (set by
`task_context` around it, so every line of that render has it, the engine's included), else the
first task id the message names (the sweeper's and the API's lines say "task <id>").
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from reelq.config import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_TASK_ID = re.compile(r"video_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
current_task: contextvars.ContextVar[str | None] = contextvars.ContextVar("reelq_task", default=None)


@contextlib.contextmanager
def task_context(task_id: str) -> Iterator[None]:
    """Every log line in this block (this thread) names `task_id`."""
    token = current_task.set(task_id)
    try:
        yield
    finally:
        current_task.reset(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        task_id = current_task.get()
        if task_id is None:
            found = _TASK_ID.search(message)
            task_id = found.group(0) if found else None
        if task_id is not None:
            entry["task_id"] = task_id
        entry["pid"] = record.process
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def setup_logging(settings: Settings) -> None:
    """The root logger for this process, per REELQ_LOG_LEVEL and REELQ_LOG_FORMAT (stderr)."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # Python warnings (a library's, such as Celery's warning about running as root) go to stderr as
    # bare text: in JSON they must be log records like any other line, or a collector chokes on them.
    logging.captureWarnings(settings.log_format == "json")
    if settings.log_format == "json":
        # uvicorn's own loggers carry their own text handlers: send them to ours instead.
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            uvicorn_logger = logging.getLogger(name)
            uvicorn_logger.handlers.clear()
            uvicorn_logger.propagate = True
