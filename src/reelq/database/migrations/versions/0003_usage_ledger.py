"""Usage ledger: tokens charged per key, UTC day and model, kept apart from tasks (which are purged).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_daily",
        sa.Column("key_id", sa.String(40), sa.ForeignKey("api_keys.id"), primary_key=True),
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("model", sa.String(100), primary_key=True),
        sa.Column("videos", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("seconds", sa.Float, nullable=False, server_default=sa.text("0")),
        sa.Column("tokens", sa.Integer, nullable=False, server_default=sa.text("0")),
    )


def downgrade() -> None:
    op.drop_table("usage_daily")
