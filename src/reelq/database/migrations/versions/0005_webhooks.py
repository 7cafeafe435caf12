"""Webhooks: a signing secret per API key, the outbox of events and the record of delivery attempts.

Revision ID: 0004_webhooks
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_webhooks"
down_revision = "0004_relay"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Keys made before this revision get their secret the first time one is needed (database/keys.py).
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("webhook_secret", sa.String(100), nullable=True))
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("webhook_id", sa.String(40), nullable=False, unique=True),
        sa.Column("task_id", sa.String(48), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("task_created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("progress", sa.Integer, nullable=False),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.Column("actual_duration", sa.Float, nullable=True),
        sa.Column("total_tokens", sa.Integer, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("video_key", sa.String(200), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("next_attempt_at", sa.Float, nullable=False),
        sa.Column("owner", sa.String(100), nullable=True),
        sa.Column("lease_until", sa.Float, nullable=True),
        sa.Column("finished", sa.Float, nullable=True),
    )
    op.create_index("ix_webhook_events_state_due", "webhook_events", ["state", "next_attempt_at"])
    op.create_index("ix_webhook_events_task", "webhook_events", ["task_id", "id"])
    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "event_id",
            sa.Integer,
            sa.ForeignKey("webhook_events.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("task_id", sa.String(48), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("duration_ms", sa.Float, nullable=True),
        sa.Column("status_code", sa.Integer, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
    )
    op.create_index("ix_webhook_attempts_task", "webhook_attempts", ["task_id", "id"])
    op.create_index("ix_webhook_attempts_event", "webhook_attempts", ["event_id"])


def downgrade() -> None:
    op.drop_table("webhook_attempts")
    op.drop_table("webhook_events")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("webhook_secret")
