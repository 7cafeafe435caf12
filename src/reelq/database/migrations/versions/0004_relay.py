"""Relay engine: the upstream's task id and credits on our task row.

The id is stored the moment the upstream accepts a create, so a worker that dies resumes waiting on
it instead of creating (and paying for) a second generation.

Revision ID: 0004_relay
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_relay"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("upstream_id", sa.String(200), nullable=True))
        batch.add_column(sa.Column("upstream_credits", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("upstream_credits")
        batch.drop_column("upstream_id")
