"""Engine creation and migrations (Alembic, run programmatically at start-up when the schema is behind)."""

from __future__ import annotations

import fcntl
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, create_engine, event, inspect, make_url, text

if TYPE_CHECKING:
    from alembic.config import Config

SQLITE_BUSY_TIMEOUT_MS = 15_000
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# The newest migration's revision, which every process start compares the database with. Written
# here, not read from MIGRATIONS_DIR, so that a start whose schema is current never imports Alembic
# (and its templates and dialects: about a tenth of a second of every server's and worker's start);
# a unit test (tests/test_store.py) holds it equal to the folder's head.
SCHEMA_HEAD = "0007_fleet"
ALEMBIC_VERSION_TABLE = "alembic_version"


# libpq parameters of every PostgreSQL connection but the listener's (the pool, the fast reader's),
# unless the URL sets them: a database host that stops answering (a partition, a blackholed
# address) fails a connect or a query in seconds instead of the minutes of TCP's own retries,
# which would hold API threads, workers and probes.
PG_CONNECTION: dict[str, int] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,  # ms: data sent and never acknowledged (a long query's answer is not that)
}


def pg_connect_args(url: str) -> dict[str, int]:
    """`PG_CONNECTION` less what the URL's query sets itself."""
    given = make_url(url).query
    return {name: value for name, value in PG_CONNECTION.items() if name not in given}


def make_engine(url: str) -> Engine:
    """A SQLAlchemy engine; SQLite gets WAL, a busy timeout and write-locking transactions."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, future=True, connect_args=pg_connect_args(url))

    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        # Let SQLAlchemy emit BEGIN itself (below) instead of the driver's implicit deferred BEGIN.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # IMMEDIATE takes the write lock up front: a deferred transaction that reads and then
        # writes can fail with SQLITE_BUSY at once (no busy wait) when another process wrote.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _alembic_config(engine: Engine | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


def migrations_head() -> str | None:
    """The head revision of the migrations folder, as Alembic reads it (what SCHEMA_HEAD must equal)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The database's Alembic revision (None: never migrated), read from Alembic's own version table.
    Several rows (branches: no reelq migration makes them) read as their list, which is no head."""
    with engine.connect() as conn:
        if not inspect(conn).has_table(ALEMBIC_VERSION_TABLE):
            return None
        query = text(f"SELECT version_num FROM {ALEMBIC_VERSION_TABLE}")
        rows: list[str] = sorted(conn.execute(query).scalars())
    return ", ".join(rows) if rows else None


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """On SQLite, serialise first-start migrations between processes sharing REELQ_HOME."""
    db_path = engine.url.database
    if engine.dialect.name != "sqlite" or not db_path:
        yield
        return
    with open(f"{db_path}.migrate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class SchemaOutdated(Exception):
    """A shared database whose schema is not this reelq's: `reelq db upgrade` first (one line)."""


def schema_revision(engine: Engine) -> tuple[str | None, str | None]:
    """(the database's Alembic revision, this reelq's newest)."""
    return current_revision(engine), SCHEMA_HEAD


def ensure_schema(engine: Engine) -> None:
    """The embedded SQLite file migrates itself at start-up; a shared database (PostgreSQL) is
    migrated only by `reelq db upgrade`, run once by the operator, never by whichever replica starts
    first (a half-rolled-out fleet must not change the schema under the old replicas)."""
    if engine.dialect.name == "sqlite":
        migrate(engine)
        return
    current, head = schema_revision(engine)
    if current != head:
        raise SchemaOutdated(
            f"the database schema is at revision {current or 'none (empty database)'}, this reelq needs "
            f"{head}: run `reelq db upgrade` first"
        )


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (a no-op when it is already there)."""
    if current_revision(engine) == SCHEMA_HEAD:
        return
    from alembic import command

    cfg = _alembic_config(engine)
    with _migration_lock(engine):
        if current_revision(engine) == SCHEMA_HEAD:
            return
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
