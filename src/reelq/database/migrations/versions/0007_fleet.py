"""Relay channels: which of a relayed model's upstreams holds a task.

A resumed task waits on the upstream that accepted it (its id means nothing to another), and a
channel's in-flight count is the tasks it holds.

Revision ID: 0007_fleet
Revises: 0006_tenancy
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_fleet"
down_revision = "0006_tenancy"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("upstream_channel", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("upstream_channel")
