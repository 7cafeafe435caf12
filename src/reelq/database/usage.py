"""The usage ledger: one row per key, UTC day and model, charged by the transaction that completes a video."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Connection, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from reelq.database.tables import usage_daily


@dataclass(frozen=True, slots=True)
class UsageRow:
    day: str
    model: str
    videos: int
    seconds: float
    tokens: int


def charge(conn: Connection, key_id: str, model: str, when: float, seconds: float, tokens: int) -> None:
    """Add one video to the key's ledger. Called inside the completing transaction, so a video is
    charged exactly once: a worker that lost its lease completes nothing and charges nothing."""
    day = time.strftime("%Y-%m-%d", time.gmtime(when))
    insert_fn = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = insert_fn(usage_daily).values(
        key_id=key_id, day=day, model=model, videos=1, seconds=seconds, tokens=tokens
    )
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["key_id", "day", "model"],
            set_={
                "videos": usage_daily.c.videos + 1,
                "seconds": usage_daily.c.seconds + seconds,
                "tokens": usage_daily.c.tokens + tokens,
            },
        )
    )


def query(
    conn: Connection, key_id: str, since: str | None = None, until: str | None = None
) -> list[UsageRow]:
    """The key's usage per UTC day and model, optionally within [since, until] (YYYY-MM-DD)."""
    stmt = select(usage_daily).where(usage_daily.c.key_id == key_id)
    if since:
        stmt = stmt.where(usage_daily.c.day >= since)
    if until:
        stmt = stmt.where(usage_daily.c.day <= until)
    rows = conn.execute(stmt.order_by(usage_daily.c.day, usage_daily.c.model)).mappings()
    return [
        UsageRow(day=r["day"], model=r["model"], videos=r["videos"], seconds=r["seconds"], tokens=r["tokens"])
        for r in rows
    ]


def query_all(
    conn: Connection, since: str | None = None, until: str | None = None, key_id: str | None = None
) -> list[tuple[str, UsageRow]]:
    """Every key's usage (the admin's view, SPEC §6), or one key's: (key id, row), by day, key, model."""
    stmt = select(usage_daily)
    if key_id:
        stmt = stmt.where(usage_daily.c.key_id == key_id)
    if since:
        stmt = stmt.where(usage_daily.c.day >= since)
    if until:
        stmt = stmt.where(usage_daily.c.day <= until)
    order = (usage_daily.c.day, usage_daily.c.key_id, usage_daily.c.model)
    found = conn.execute(stmt.order_by(*order)).mappings()
    return [
        (r["key_id"], UsageRow(r["day"], r["model"], r["videos"], r["seconds"], r["tokens"])) for r in found
    ]
