"""`reelq keys create|update|credit|show` (SPEC §6): the admin API's settings as flags, on the database's
machine, validated the same way; the key alone on the last line of stdout (SPEC §5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = [pytest.mark.process]


def test_keys_create_update_credit_show(tmp_path: Path) -> None:
    made = run_cli(tmp_path, "keys", "create", "--name", "acme", "--budget", "3000", "--weight", "2",
                   "--model", "viduq3-pro", "--max-processing", "1")
    lines = made.stdout.strip().splitlines()
    assert lines[0].startswith("id: key_") and lines[1].startswith("webhook secret: whsec_")
    assert lines[-1].startswith("rq_") and " " not in lines[-1]
    assert "shown only this once" in made.stderr
    key_id = lines[0].removeprefix("id: ")
    shown = json.loads(run_cli(tmp_path, "keys", "credit", key_id, "500", "--note", "inv 1").stdout)
    settings = (shown["budget"], shown["available"], shown["weight"], shown["models"])
    assert settings == (3500, 3500, 2.0, ["viduq3-pro"])
    lift = ("--budget", "none", "--model", "none")
    lifted = json.loads(run_cli(tmp_path, "keys", "update", key_id, *lift).stdout)
    assert (lifted["budget"], lifted["models"], lifted["max_processing"]) == (None, None, 1)
    show = run_cli(tmp_path, "keys", "show", key_id).stdout
    assert "+500" in show and "inv 1" in show
    bad = run_cli(tmp_path, "keys", "update", key_id, "--weight", "0", check=False)
    assert bad.returncode == 2 and "weight" in bad.stderr
    assert run_cli(tmp_path, "keys", "credit", key_id, "5", check=False).returncode == 1  # unlimited now
    admin = run_cli(tmp_path, "keys", "create", "--admin").stdout.strip().splitlines()[0].removeprefix("id: ")
    assert json.loads(run_cli(tmp_path, "keys", "update", admin).stdout)["admin"] is True
