"""Helpers for tests of the scaled mode: a fresh PostgreSQL database and a fresh RabbitMQ queue per test.

Under CI=true a missing PostgreSQL or RabbitMQ fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pytest

POSTGRES_ADMIN_URL = os.environ.get(
    "REELQ_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BROKER_URL = os.environ.get("REELQ_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
# REELQ_TEST_SCALED=1 (tests/conftest.py): the session's services, and each REELQ_HOME's database,
# queue and prefixes. Kept here because test modules import tests.conftest as a second module.
ENV: dict[str, str] = {}
HOMES: dict[str, dict[str, str]] = {}
# The URL of the migrated database every home's database is copied from (one per test process).
TEMPLATE: str | None = None


def _unavailable(what: str, exc: BaseException) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} is required under CI=true: {type(exc).__name__}: {exc}")
    pytest.skip(f"{what} not reachable: {exc}")


def migrated_template() -> str:
    """The name of a database migrated once by `reelq db upgrade` (the operator's command, in a
    subprocess), which migrated databases are then copied from (CREATE DATABASE ... TEMPLATE): a copy
    costs PostgreSQL a file copy where a migration costs a Python process and Alembic. One per test
    process, dropped at the session's end (tests/conftest.py)."""
    global TEMPLATE
    from sqlalchemy import create_engine, make_url, text

    if TEMPLATE is not None:
        return TEMPLATE.rsplit("/", 1)[1]
    name = f"reelq_tpl_{os.getpid()}_{time.time_ns() % 10**9}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
    except Exception as exc:
        _unavailable("PostgreSQL", exc)
    finally:
        admin.dispose()
    url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(False)
    TEMPLATE = url
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELQ_")}
    home = tempfile.mkdtemp(prefix="reelq-template-")
    env.update(REELQ_HOME=home, REELQ_DATABASE_URL=url)
    try:
        command = [sys.executable, "-m", "reelq", "db", "upgrade"]
        subprocess.run(command, env=env, check=True, capture_output=True, timeout=120)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return name


@contextmanager
def fresh_postgres_database(migrated: bool = False) -> Iterator[str]:
    """A new database on the test server (dropped afterwards); yields its SQLAlchemy URL. Empty, or
    `migrated`: at the schema's head, as `reelq db upgrade` leaves it (a copy of `migrated_template`)."""
    from sqlalchemy import create_engine, make_url, text

    template = f" TEMPLATE {migrated_template()}" if migrated else ""
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"reelq_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}{template}"))
    except Exception as exc:
        admin.dispose()
        _unavailable("PostgreSQL", exc)
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@contextmanager
def fresh_queue() -> Iterator[str]:
    """A queue name of its own on the test broker (deleted afterwards)."""
    import kombu

    name = f"reelq-test-{uuid.uuid4().hex[:12]}"
    try:
        with kombu.Connection(BROKER_URL, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        _unavailable("RabbitMQ", exc)
    try:
        yield name
    finally:
        with kombu.Connection(BROKER_URL, connect_timeout=2) as conn, suppress(Exception):
            conn.default_channel.queue_delete(name)


@contextmanager
def private_vhost() -> Iterator[str]:
    """A RabbitMQ virtual host of its own (deleted afterwards); yields its broker URL. For a test that
    closes every broker connection (`rabbitmqctl close_all_connections --vhost`): only its own go,
    never those of the tests running beside it."""
    import subprocess

    name = f"reelq-test-{uuid.uuid4().hex[:12]}"

    def ctl(*args: str) -> None:
        subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)

    try:
        ctl("add_vhost", name)
        ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    except (OSError, subprocess.SubprocessError) as exc:
        _unavailable("rabbitmqctl", exc)
    try:
        yield f"{BROKER_URL.rstrip('/')}/{name}"
    finally:
        with suppress(OSError, subprocess.SubprocessError):
            ctl("delete_vhost", name)


def purge_queue(name: str) -> int:
    """Drop every ready message of the queue; how many there were (0 also before it was declared)."""
    import amqp
    import kombu

    with kombu.Connection(BROKER_URL, connect_timeout=2) as conn:
        try:
            return conn.default_channel.queue_purge(name) or 0
        except amqp.exceptions.NotFound:
            return 0


def queue_depth(name: str) -> int:
    import kombu

    with kombu.Connection(BROKER_URL, connect_timeout=2) as conn:
        return conn.default_channel.queue_declare(name, passive=True).message_count
