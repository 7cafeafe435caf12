"""API keys: create, list, revoke, look up. Only a key's SHA-256 is stored, never the key.

Functions take an open connection; `TaskStore` chooses the transaction. A revocation is a
write that changes a row, so its commit bumps the change counter (database/changes.py): that
bump is the signal that makes every API process's cached key lookups (database/fastread.py)
look again, so a revoked key stops working at the next request.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Connection, RowMapping, and_, func, insert, or_, select, update

from reelq.database.tables import Rows, api_keys, key_credits

KEY_PREFIX = "rq_"
WEBHOOK_SECRET_PREFIX = "whsec_"
LOCAL_KEY_ID = "key_local"
# What may leave the store about a key: never its hash.
KEY_COLUMNS = (
    api_keys.c.id,
    api_keys.c.name,
    api_keys.c.key_prefix,
    api_keys.c.created_at,
    api_keys.c.revoked_at,
)


def hash_key(plain: str) -> str:
    return hashlib.sha256(plain.encode()).hexdigest()


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: `whsec_` + base64 of 32 random bytes (the spec asks for 24..64)."""
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    name: str
    key_prefix: str
    created_at: float
    revoked_at: float | None


def create(conn: Connection, name: str = "") -> tuple[ApiKey, str]:
    """Store a new key; returns the record and the plain key (shown once, never stored)."""
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKey(
        id="key_" + secrets.token_hex(8),
        name=name,
        key_prefix=plain[:10],
        created_at=time.time(),
        revoked_at=None,
    )
    conn.execute(
        insert(api_keys).values(
            id=record.id,
            name=name,
            key_hash=hash_key(plain),
            key_prefix=record.key_prefix,
            created_at=record.created_at,
            webhook_secret=new_webhook_secret(),
        )
    )
    return record, plain


def list_all(conn: Connection) -> list[ApiKey]:
    rows = conn.execute(select(*KEY_COLUMNS).order_by(api_keys.c.created_at)).mappings()
    return [ApiKey(**row) for row in rows]


def revoke(conn: Connection, id_or_key: str) -> ApiKey | None:
    """Revoke by id or by the plain key; returns the key, or None when there is no such key."""
    cond = _by_id_or_key(id_or_key)
    conn.execute(update(api_keys).where(cond, api_keys.c.revoked_at.is_(None)).values(revoked_at=time.time()))
    row = conn.execute(select(*KEY_COLUMNS).where(cond)).mappings().first()
    return ApiKey(**row) if row else None


# ---- selling it (SPEC §6): settings, budgets, credits ---------------------------------------------
# The settings an admin may set on a key, with their types (None lifts a limit, except `weight`).
SETTABLE = ("name", "budget", "max_active", "max_processing", "weight", "models", "create_rate",
            "poll_rate", "expires_at")


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A key as the admin API shows it (SPEC §6 "The key object"); never its hash or secret."""

    id: str
    name: str
    key_prefix: str
    created_at: float
    revoked_at: float | None
    is_admin: bool
    expires_at: float | None
    budget: int | None
    spent: int
    reserved: int
    max_active: int | None
    max_processing: int | None
    weight: float
    models: tuple[str, ...] | None
    create_rate: float | None
    poll_rate: float | None

    @property
    def available(self) -> int | None:
        return None if self.budget is None else self.budget - self.spent - self.reserved

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any] | RowMapping) -> KeyRecord:
        values = {f.name: row[f.name] for f in fields(cls)}
        values["is_admin"] = bool(values["is_admin"])
        values["models"] = None if row["models"] is None else tuple(json.loads(row["models"]))
        return cls(**values)


_RECORD_COLUMNS = tuple(api_keys.c[f.name] for f in fields(KeyRecord))


def _setting_values(settings: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(settings) - set(SETTABLE)
    if unknown:
        raise ValueError(f"not a key setting: {', '.join(sorted(unknown))}")
    values = dict(settings)
    if "models" in values and values["models"] is not None:
        values["models"] = json.dumps(sorted(set(values["models"])))
    if "weight" in values and values["weight"] is None:
        values["weight"] = 1.0  # `null` restores the default share
    if values.get("name") is None and "name" in values:
        values["name"] = ""
    return values


def create_with(
    conn: Connection, settings: Mapping[str, Any], *, admin: bool = False
) -> tuple[KeyRecord, str, str]:
    """A new key with its settings; (record, plain key, webhook secret), the two secrets shown once.

    A new key joins fair share at the current virtual time, not at 0 (lifecycle.py `claim`), so it
    cannot jump the queue ahead of every backlogged key until it has caught up with them.
    """
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    secret = new_webhook_secret()
    key_id = "key_" + secrets.token_hex(8)
    values = _setting_values(settings)
    conn.execute(
        insert(api_keys).values(
            id=key_id,
            key_hash=hash_key(plain),
            key_prefix=plain[:10],
            created_at=time.time(),
            webhook_secret=secret,
            is_admin=admin,
            vtime=conn.execute(select(func.coalesce(func.max(api_keys.c.vtime), 0.0))).scalar_one(),
            **{"name": "", **values},
        )
    )
    record = get(conn, key_id)
    assert record is not None
    return record, plain, secret


def get(conn: Connection, key_id: str) -> KeyRecord | None:
    row = conn.execute(select(*_RECORD_COLUMNS).where(api_keys.c.id == key_id)).mappings().first()
    return KeyRecord.from_mapping(row) if row else None


def page(conn: Connection, limit: int, after: str | None = None) -> list[KeyRecord]:
    """Keys in id order after `after` (the admin list's cursor)."""
    query = select(*_RECORD_COLUMNS).order_by(api_keys.c.id).limit(limit)
    if after is not None:
        query = query.where(api_keys.c.id > after)
    return [KeyRecord.from_mapping(row) for row in conn.execute(query).mappings()]


class BudgetInUse(Exception):
    """A budget lowered below what the key has already spent or holds for live tasks."""


def update_settings(conn: Connection, key_id: str, settings: Mapping[str, Any]) -> KeyRecord | None:
    """Change some settings of a key; None: no such key. BudgetInUse: a budget below spent + reserved
    (the invariant `spent + reserved <= budget` holds at every instant, so it cannot be broken here)."""
    values = _setting_values(settings)
    if values:
        cond = api_keys.c.id == key_id
        if values.get("budget") is not None:
            cond = and_(cond, api_keys.c.spent + api_keys.c.reserved <= values["budget"])
        if conn.execute(update(api_keys).where(cond).values(**values)).rowcount != 1:
            if get(conn, key_id) is None:
                return None
            raise BudgetInUse(key_id)
    return get(conn, key_id)


def credit(conn: Connection, key_id: str, tokens: int, note: str | None, by: str | None) -> KeyRecord | None:
    """Add `tokens` (negative: take away) to a budgeted key's budget and record it; None: no such key.

    ValueError: the key has no budget (unlimited). BudgetInUse: a debit below spent + reserved.
    One conditional UPDATE and the ledger row in the caller's transaction: both or neither.
    """
    found = get(conn, key_id)
    if found is None:
        return None
    if found.budget is None:
        raise ValueError("the key has no budget (unlimited): set one first")
    cond = and_(
        api_keys.c.id == key_id,
        api_keys.c.budget.is_not(None),
        api_keys.c.spent + api_keys.c.reserved <= api_keys.c.budget + tokens,
    )
    if conn.execute(update(api_keys).where(cond).values(budget=api_keys.c.budget + tokens)).rowcount != 1:
        raise BudgetInUse(key_id)
    conn.execute(insert(key_credits).values(key_id=key_id, at=time.time(), tokens=tokens, note=note, by=by))
    return get(conn, key_id)


@dataclass(frozen=True, slots=True)
class Credit:
    at: float
    tokens: int
    note: str | None
    by: str | None


def credits_of(conn: Connection, key_id: str, limit: int = 100) -> list[Credit]:
    """The key's newest credits first."""
    rows: Rows = conn.execute(
        select(key_credits.c.at, key_credits.c.tokens, key_credits.c.note, key_credits.c.by)
        .where(key_credits.c.key_id == key_id)
        .order_by(key_credits.c.id.desc())
        .limit(limit)
    )
    return [Credit(at, tokens, note, by) for at, tokens, note, by in rows]


def _by_id_or_key(id_or_key: str) -> Any:
    return or_(api_keys.c.id == id_or_key, api_keys.c.key_hash == hash_key(id_or_key))


def webhook_secret(conn: Connection, id_or_key: str, *, make: bool = True) -> tuple[str, str | None] | None:
    """(key id, webhook signing secret) of a key given by id or by the key itself; None: no such key.

    A key made before webhooks existed has none yet: with `make` it gets one now (a write: call within a
    write transaction), else the secret reads None.
    """
    cond = _by_id_or_key(id_or_key)
    row = conn.execute(select(api_keys.c.id, api_keys.c.webhook_secret).where(cond)).first()
    if row is None:
        return None
    if row.webhook_secret is not None or not make:
        return row.id, row.webhook_secret
    secret = new_webhook_secret()
    conn.execute(
        update(api_keys)
        .where(api_keys.c.id == row.id, api_keys.c.webhook_secret.is_(None))
        .values(webhook_secret=secret)
    )
    stored = conn.execute(select(api_keys.c.webhook_secret).where(api_keys.c.id == row.id)).scalar()
    return row.id, stored


def rotate_webhook_secret(conn: Connection, id_or_key: str) -> tuple[str, str] | None:
    """Replace a key's signing secret; the old one stops signing at once. None: no such key."""
    key_id = conn.execute(select(api_keys.c.id).where(_by_id_or_key(id_or_key))).scalar()
    if key_id is None:
        return None
    secret = new_webhook_secret()
    conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(webhook_secret=secret))
    return key_id, secret


def active_id(conn: Connection, plain: str) -> str | None:
    """The id of an active key, or None (unknown, revoked or expired)."""
    unexpired = or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > time.time())
    return conn.execute(
        select(api_keys.c.id).where(
            api_keys.c.key_hash == hash_key(plain), api_keys.c.revoked_at.is_(None), unexpired
        )
    ).scalar()


def ensure_local(conn: Connection) -> str:
    """A key row for the embedded CLI (`reelq generate` without a server); it has no usable plain key."""
    exists = conn.execute(select(api_keys.c.id).where(api_keys.c.id == LOCAL_KEY_ID)).scalar()
    if not exists:
        conn.execute(
            insert(api_keys).values(
                id=LOCAL_KEY_ID,
                name="embedded cli",
                key_hash=hash_key(secrets.token_hex(32)),
                key_prefix="(local)",
                created_at=time.time(),
            )
        )
    return LOCAL_KEY_ID
