"""A relay-only gateway's command line: key management needs no upstream secret; `reelq worker`
checks the upstream keys when it starts and stops with one line naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import reelq_env, run_cli
from tests.relay_front import write_models

pytestmark = [pytest.mark.process]


def test_keys_need_no_upstream_secret_and_workers_check_them(tmp_path: Path) -> None:
    models = write_models(
        tmp_path / "models.toml",
        "viduq3-pro",
        [
            {"upstream": "vidu", "api_key_env": "FLEET_VIDU_KEY", "max_in_flight": 5},
            {"upstream": "openai", "base_url": "http://127.0.0.1:9", "api_key_env": "FLEET_SGL_KEY"},
        ],
    )
    env = reelq_env(tmp_path / "home", REELQ_MODELS=str(models), FLEET_VIDU_KEY="set")
    env.pop("FLEET_SGL_KEY", None)
    created = run_cli(tmp_path / "home", "keys", "create", "--name", "customer", env=env)
    assert created.returncode == 0 and created.stdout.strip().splitlines()[-1]  # the new key
    listed = run_cli(tmp_path / "home", "keys", "list", env=env)
    assert "customer" in listed.stdout
    worker = run_cli(tmp_path / "home", "worker", env=env, check=False, timeout=60)
    assert worker.returncode == 2
    assert "FLEET_SGL_KEY is unset or empty" in worker.stderr and "Traceback" not in worker.stderr
