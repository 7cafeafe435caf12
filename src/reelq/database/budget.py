"""Budgets with reservations (SPEC §6): the arithmetic on a key's `budget`, `spent` and `reserved`.

Every function runs inside the transaction that changes the task, so a task's tokens move exactly
once: the create's transaction reserves them with its insert; the transition that ends the task
(lifecycle.py complete, fail, cancel, sweep) moves them to `spent` or releases them in the same
commit as its status change. A transition is a conditional UPDATE that matches only a live row, so a
retried, duplicated or crashed-and-resumed step finds nothing to end and moves no tokens twice.

The reservation itself is one conditional UPDATE, `reserved += price WHERE budget IS NULL OR
budget - spent - reserved >= price`: on SQLite the write transaction is the file's only writer; on
PostgreSQL the UPDATE locks the key's row and re-evaluates its condition on the newest committed
version, so concurrent creates on any number of API processes can never push
`spent + reserved` past `budget`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from sqlalchemy import Connection, or_, update

from reelq.database.tables import api_keys


def reserve(conn: Connection, key_id: str, tokens: int) -> bool:
    """Hold `tokens` of the key's budget for a new task; False (nothing held) when they do not fit."""
    room = api_keys.c.budget - api_keys.c.spent - api_keys.c.reserved
    fits = or_(api_keys.c.budget.is_(None), room >= tokens)
    stmt = update(api_keys).where(api_keys.c.id == key_id, fits).values(reserved=api_keys.c.reserved + tokens)
    return conn.execute(stmt).rowcount == 1


def reserve_unchecked(conn: Connection, key_id: str, tokens: int) -> None:
    """Hold tokens of an unlimited key (one UPDATE for a whole batch's creates of that key)."""
    stmt = update(api_keys).where(api_keys.c.id == key_id)
    conn.execute(stmt.values(reserved=api_keys.c.reserved + tokens))


def settle(conn: Connection, key_id: str, reserved: int | None, charged: int) -> None:
    """A task completed: its reservation goes, `charged` (never more than it) is spent."""
    held = reserved or 0
    conn.execute(
        update(api_keys)
        .where(api_keys.c.id == key_id)
        .values(reserved=api_keys.c.reserved - held, spent=api_keys.c.spent + charged)
    )


def release(conn: Connection, ended: Iterable[tuple[str, int | None]]) -> None:
    """Tasks that ended uncharged (failed, cancelled, deleted, expired): (key id, reserved) each."""
    per_key: dict[str, int] = defaultdict(int)
    for key_id, reserved in ended:
        if reserved:
            per_key[key_id] += reserved
    for key_id, tokens in per_key.items():
        conn.execute(
            update(api_keys).where(api_keys.c.id == key_id).values(reserved=api_keys.c.reserved - tokens)
        )
