"""Settings are read in one place: the environment by `Settings`, a render worker's from its parent."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from reelq.config import ConfigError, Settings, load_settings
from reelq.database import NewTask
from reelq.dispatch.supervisor import Supervisor
from reelq.domain import TERMINAL
from reelq.engines import ENGINES, build_engines
from reelq.engines.synthetic import SyntheticEngine


def test_log_level_is_a_validated_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REELQ_LOG_LEVEL", "debug")
    assert load_settings().log_level == "DEBUG"
    monkeypatch.setenv("REELQ_LOG_LEVEL", "chatty")
    with pytest.raises(ConfigError, match="REELQ_LOG_LEVEL"):
        load_settings()


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgresql://u:p@db:5432/reelq", "postgresql+psycopg://u:p@db:5432/reelq"),
        ("postgres://u@db/reelq?sslmode=require", "postgresql+psycopg://u@db/reelq?sslmode=require"),
        ("postgresql+psycopg://u@db/reelq", "postgresql+psycopg://u@db/reelq"),  # a driver named: kept
    ],
)
def test_plain_postgresql_urls_mean_psycopg_3(given: str, used: str) -> None:
    assert Settings(database_url=given).sqlalchemy_url == used


def test_pooled_postgresql_connections_time_out_unless_the_url_says_otherwise() -> None:
    from reelq.database.db import pg_connect_args

    assert pg_connect_args("postgresql+psycopg://u@db/reelq")["connect_timeout"] == 10
    given = pg_connect_args("postgresql+psycopg://u@db/reelq?connect_timeout=3&keepalives=0")
    assert "connect_timeout" not in given and "keepalives" not in given  # the URL's own values stand
    assert given["tcp_user_timeout"] == 30_000


def test_settings_handed_to_a_child_ignore_its_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    given = Settings(home=tmp_path, workers=3, signing_secret="s", blocked_terms=["zebra"], log_level="ERROR")
    monkeypatch.setenv("REELQ_WORKERS", "9")
    monkeypatch.setenv("REELQ_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("REELQ_MODEL_RATES", "not json")  # would fail any read of the environment
    child = Settings.from_json(given.to_json())
    assert child.model_dump() == given.model_dump()
    assert child.home_dir == tmp_path.resolve()


def test_the_home_a_child_gets_is_resolved(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    child = Settings.from_json(Settings(home=Path("relative")).to_json())
    monkeypatch.chdir("/")  # a child may start elsewhere: its home must not move
    assert child.home_dir == tmp_path.resolve() / "relative"


def test_engines_come_from_one_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"unknown engine .nope. \(available: diffusers, relay, synthetic"):
        load_settings(engines={"viduq3-pro": "nope"})

    class Echo(SyntheticEngine):
        pass

    monkeypatch.setitem(ENGINES, "echo", lambda settings: Echo())
    with pytest.raises(ConfigError, match=r"\(available: diffusers, echo, relay, synthetic\)"):
        load_settings(engines={"viduq3-pro": "nope"})
    settings = load_settings(
        engines={"viduq3-pro": "echo"}, model_rates={"viduq3-pro": 1, "viduq3-turbo": 1, "other": 1}
    )
    built = build_engines(settings)
    assert type(built["viduq3-pro"]) is Echo
    assert type(built["viduq3-turbo"]) is SyntheticEngine
    assert built["other"] is built["viduq3-turbo"]  # one instance per engine, shared by its models


def test_a_render_worker_runs_with_the_supervisors_settings_not_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()  # as `reelq serve` does before it starts the supervisor
    settings = Settings(home=home, blocked_terms=["zebra"], sweep_interval=0.2, log_level="WARNING")
    # The environment disagrees: a worker that read it would crash (bad JSON) or use another home.
    monkeypatch.setenv("REELQ_MODEL_RATES", "not json")
    monkeypatch.setenv("REELQ_HOME", str(tmp_path / "elsewhere"))
    supervisor = Supervisor(settings, 1)
    key = supervisor.store.ensure_local_key()
    spec = {"model": "viduq3-turbo", "duration": 1, "aspect_ratio": "16:9", "resolution": "540p"}
    blocked, _ = supervisor.store.create_task(key, NewTask(prompt="a zebra", **spec))  # type: ignore[arg-type]
    plain, _ = supervisor.store.create_task(key, NewTask(prompt="a horse", **spec))  # type: ignore[arg-type]
    supervisor.start()
    try:
        deadline = time.monotonic() + 60
        rows = [supervisor.store.get_task(blocked.id), supervisor.store.get_task(plain.id)]
        while not all(row is not None and row.status in TERMINAL for row in rows):
            assert time.monotonic() < deadline, f"the worker never finished: {rows}"
            time.sleep(0.1)
            rows = [supervisor.store.get_task(blocked.id), supervisor.store.get_task(plain.id)]
    finally:
        supervisor.stop(timeout=30)
    assert rows[0] is not None and rows[0].status == "failed" and "restricted" in (rows[0].error or "")
    assert rows[1] is not None and rows[1].status == "completed"
    assert not (tmp_path / "elsewhere").exists()
