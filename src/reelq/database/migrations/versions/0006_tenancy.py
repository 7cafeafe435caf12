"""Selling it (SPEC §6): per-key settings, budgets with reservations, the credit ledger, fair share's
virtual time and the off-peak tier.

Revision ID: 0006_tenancy
Revises: 0005_webhooks
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_tenancy"
down_revision = "0005_webhooks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("is_admin", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("expires_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("budget", sa.Integer, nullable=True))
        batch.add_column(sa.Column("spent", sa.Integer, nullable=False, server_default=sa.text("0")))
        batch.add_column(sa.Column("reserved", sa.Integer, nullable=False, server_default=sa.text("0")))
        batch.add_column(sa.Column("max_active", sa.Integer, nullable=True))
        batch.add_column(sa.Column("max_processing", sa.Integer, nullable=True))
        batch.add_column(sa.Column("weight", sa.Float, nullable=False, server_default=sa.text("1")))
        batch.add_column(sa.Column("models", sa.Text, nullable=True))
        batch.add_column(sa.Column("create_rate", sa.Float, nullable=True))
        batch.add_column(sa.Column("poll_rate", sa.Float, nullable=True))
        batch.add_column(sa.Column("vtime", sa.Float, nullable=False, server_default=sa.text("0")))
    op.create_index("ix_api_keys_vtime", "api_keys", ["vtime", "id"])
    op.create_table(
        "key_credits",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key_id", sa.String(40), sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("tokens", sa.Integer, nullable=False),
        sa.Column("note", sa.Text, nullable=True),
        sa.Column("by", sa.String(40), nullable=True),
    )
    op.create_index("ix_key_credits_key", "key_credits", ["key_id", "id"])
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("reserved_tokens", sa.Integer, nullable=True))
        batch.add_column(sa.Column("off_peak", sa.Boolean, nullable=False, server_default=sa.false()))
    op.create_index(
        "ix_tasks_key_status_peak_created", "tasks", ["key_id", "status", "off_peak", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_key_status_peak_created", "tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("off_peak")
        batch.drop_column("reserved_tokens")
    op.drop_index("ix_key_credits_key", "key_credits")
    op.drop_table("key_credits")
    op.drop_index("ix_api_keys_vtime", "api_keys")
    with op.batch_alter_table("api_keys") as batch:
        for name in ("vtime", "poll_rate", "create_rate", "models", "weight", "max_processing",
                     "max_active", "reserved", "spent", "budget", "expires_at", "is_admin"):
            batch.drop_column(name)
