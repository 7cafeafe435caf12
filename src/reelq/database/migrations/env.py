"""Alembic environment: the connection is handed over by reelq.database.migrate (no alembic.ini needed)."""

from __future__ import annotations

from alembic import context

from reelq.database.tables import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
