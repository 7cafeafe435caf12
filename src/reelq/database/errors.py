"""Recognising a full disk behind a database error, whatever the driver (SQLite, PostgreSQL) or layer."""

from __future__ import annotations

import sqlite3

from reelq.storage.local import NO_SPACE_ERRNOS

_SQLITE_FULL = 13  # primary result code "database or disk is full": a write needed a page it could not get
_PG_DISK_FULL = "53100"  # SQLSTATE disk_full


class StorageFull(Exception):
    """A write could not be stored because the database's disk (or quota) is full; it was rolled back."""


def is_storage_full(exc: BaseException) -> bool:
    """Whether `exc`, or what it wraps (SQLAlchemy's `.orig`, an explicit cause), says "no space left"."""
    seen: BaseException | None = exc
    for _ in range(8):  # the chains are short; a bound keeps a cycle harmless
        if seen is None:
            return False
        if isinstance(seen, sqlite3.Error) and (getattr(seen, "sqlite_errorcode", 0) & 0xFF) == _SQLITE_FULL:
            return True
        if _PG_DISK_FULL in (getattr(seen, "pgcode", None), getattr(seen, "sqlstate", None)):
            return True
        if isinstance(seen, OSError) and seen.errno in NO_SPACE_ERRNOS:
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__
    return False
