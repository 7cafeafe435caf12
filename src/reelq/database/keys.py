"""API keys: create, list, revoke, look up. Only a key's SHA-256 is stored, never the key.

Functions take an open connection; `TaskStore` chooses the transaction. A revocation is a
write that changes a row, so its commit bumps the change counter (database/changes.py): that
bump is the signal that makes every API process's cached key lookups (database/fastread.py)
look again, so a revoked key stops working at the next request.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, or_, select, update

from reelq.database.tables import api_keys

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
    """The id of an active key, or None (unknown or revoked)."""
    return conn.execute(
        select(api_keys.c.id).where(api_keys.c.key_hash == hash_key(plain), api_keys.c.revoked_at.is_(None))
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
