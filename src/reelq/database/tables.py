"""The schema (SQLAlchemy Core). Alembic migrations in database/migrations create exactly this."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeAlias

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)

metadata = MetaData()

# A multi-column select's result, as the code that unpacks its rows declares it. SQLAlchemy 2.1 types the
# rows as `Row[*tuple[Any, ...]]`, a tuple, yet mypy unpacks that variadic tuple subclass into `object`s;
# declared as plain tuples, the columns unpack as Any. Only a declaration: the result is unchanged.
Rows: TypeAlias = Iterable[tuple[Any, ...]]

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False, server_default=""),
    # sha256 of the plain key: keys are 256-bit random, so a fast hash is as safe as a slow one.
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("key_prefix", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
    # The Standard Webhooks signing secret (`whsec_` + base64 of 32 random bytes). Stored as it is: a
    # signing secret must be usable to sign, unlike the key, which only has to be recognised.
    Column("webhook_secret", String(100), nullable=True),
    # Selling it (SPEC §6; database/keys.py, database/budget.py). A NULL limit is no limit.
    Column("is_admin", Boolean, nullable=False, server_default=false()),
    Column("expires_at", Float, nullable=True),
    Column("budget", Integer, nullable=True),  # tokens; NULL: unlimited
    Column("spent", Integer, nullable=False, server_default=text("0")),
    Column("reserved", Integer, nullable=False, server_default=text("0")),  # held by live tasks
    Column("max_active", Integer, nullable=True),  # NULL: REELQ_MAX_ACTIVE_PER_KEY
    Column("max_processing", Integer, nullable=True),
    Column("weight", Float, nullable=False, server_default=text("1")),
    Column("models", Text, nullable=True),  # JSON list of model names; NULL: every model
    Column("create_rate", Float, nullable=True),  # creates per minute; NULL: REELQ_CREATE_RATE
    Column("poll_rate", Float, nullable=True),  # reads per second per task; NULL: REELQ_POLL_RATE
    # Fair share's virtual time (database/lifecycle.py `claim`): advanced by 1/weight per claim.
    Column("vtime", Float, nullable=False, server_default=text("0")),
)
# The fair claim walks keys in virtual-time order and stops at the first with a claimable task.
Index("ix_api_keys_vtime", api_keys.c.vtime, api_keys.c.id)

# Every change to a key's budget (SPEC §6 credits): who, when, how much, why.
key_credits = Table(
    "key_credits",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key_id", String(40), ForeignKey("api_keys.id"), nullable=False),
    Column("at", Float, nullable=False),
    Column("tokens", Integer, nullable=False),
    Column("note", Text, nullable=True),
    Column("by", String(40), nullable=True),  # the admin key id; NULL: the CLI on the database's machine
)
Index("ix_key_credits_key", key_credits.c.key_id, key_credits.c.id)

tasks = Table(
    "tasks",
    metadata,
    Column("id", String(48), primary_key=True),
    Column("key_id", String(40), ForeignKey("api_keys.id"), nullable=False),
    Column("model", String(100), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("duration", Integer, nullable=False),
    Column("aspect_ratio", String(8), nullable=False),
    Column("resolution", String(8), nullable=False),
    Column("seed", Integer, nullable=True),
    Column("has_first_image", Boolean, nullable=False, server_default=false()),
    Column("has_last_image", Boolean, nullable=False, server_default=false()),
    Column("callback_url", Text, nullable=True),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("worker", String(100), nullable=True),
    Column("lease_until", Float, nullable=True),
    Column("progress", Integer, nullable=False, server_default=text("0")),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("video_key", String(200), nullable=True),
    Column("video_deleted", Boolean, nullable=False, server_default=false()),
    Column("actual_duration", Float, nullable=True),
    Column("total_tokens", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("idempotency_key", String(200), nullable=True),
    Column("request_hash", String(64), nullable=True),
    # Relay engine (engines/relay): the upstream's task id, stored as soon as the upstream accepted the
    # create, so a resumed attempt waits on it instead of creating again; and what the upstream charged.
    Column("upstream_id", String(200), nullable=True),
    Column("upstream_credits", Integer, nullable=True),
    # Budgets (SPEC §6): the tokens this task holds of its key's budget while live (NULL: made before
    # budgets, holds nothing); released or moved to `spent` by the transition that ends it.
    Column("reserved_tokens", Integer, nullable=True),
    Column("off_peak", Boolean, nullable=False, server_default=false()),
    # Relay channels (SPEC §7): the name of the upstream of a relayed model's several that holds the task.
    Column("upstream_channel", String(200), nullable=True),
    UniqueConstraint("key_id", "idempotency_key", name="uq_tasks_key_idempotency"),
)
# The claim looks for the oldest queued row; the sweeper for lapsed leases: both walk this index.
Index("ix_tasks_status_created", tasks.c.status, tasks.c.created_at)
Index("ix_tasks_key_created", tasks.c.key_id, tasks.c.created_at)
Index("ix_tasks_key_status", tasks.c.key_id, tasks.c.status)
# The fair claim's probe: a key's oldest queued task of the given tier (off-peak last).
Index(
    "ix_tasks_key_status_peak_created", tasks.c.key_id, tasks.c.status, tasks.c.off_peak, tasks.c.created_at
)

# Billing survives task retention: one row per key, UTC day and model, added to at completion.
usage_daily = Table(
    "usage_daily",
    metadata,
    Column("key_id", String(40), ForeignKey("api_keys.id"), primary_key=True),
    Column("day", String(10), primary_key=True),
    Column("model", String(100), primary_key=True),
    Column("videos", Integer, nullable=False, server_default=text("0")),
    Column("seconds", Float, nullable=False, server_default=text("0")),
    Column("tokens", Integer, nullable=False, server_default=text("0")),
)

# Input images live beside the row, not in it: a data URI can be 27 MB of text and the
# hot status read must never drag that along.
task_inputs = Table(
    "task_inputs",
    metadata,
    Column("task_id", String(48), ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True),
    Column("field", String(20), primary_key=True),
    Column("value", Text, nullable=False),
)

# The webhook outbox (database/webhooks.py): one row per event of a task with a callback_url, written
# in the transaction that changes the task's status, so no event is lost to a crash. The row carries
# what the task looked like then (the payload must not change between retries) and where it goes.
webhook_events = Table(
    "webhook_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),  # ascending: the order within a task
    Column("webhook_id", String(40), nullable=False, unique=True),  # `webhook-id`, the same on every retry
    Column("task_id", String(48), nullable=False),
    Column("key_id", String(40), nullable=False),
    Column("url", Text, nullable=False),
    Column("event", String(32), nullable=False),
    Column("created_at", Float, nullable=False),
    # The task as it was (the columns of the same names in `tasks`).
    Column("model", String(100), nullable=False),
    Column("status", String(16), nullable=False),
    Column("task_created_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("progress", Integer, nullable=False),
    Column("finished_at", Float, nullable=True),
    Column("actual_duration", Float, nullable=True),
    Column("total_tokens", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("video_key", String(200), nullable=True),
    # Delivery: pending until delivered or given up; a sender holds it by a lease, like a task.
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", Float, nullable=False),
    Column("owner", String(100), nullable=True),
    Column("lease_until", Float, nullable=True),
    Column("finished", Float, nullable=True),
)
Index("ix_webhook_events_state_due", webhook_events.c.state, webhook_events.c.next_attempt_at)
Index("ix_webhook_events_task", webhook_events.c.task_id, webhook_events.c.id)

# Every delivery attempt, for `GET /v1/vidu/videos/{id}/deliveries`.
webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", Integer, ForeignKey("webhook_events.id", ondelete="CASCADE"), nullable=False),
    Column("task_id", String(48), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("at", Float, nullable=False),
    Column("duration_ms", Float, nullable=True),
    Column("status_code", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("outcome", String(16), nullable=False),  # delivered, retrying, given_up
)
Index("ix_webhook_attempts_task", webhook_attempts.c.task_id, webhook_attempts.c.id)
Index("ix_webhook_attempts_event", webhook_attempts.c.event_id)
