"""Hostile input: schemathesis against the running server's own OpenAPI document.

Bounded and seeded so CI is repeatable: every operation is fuzzed (coverage, fuzzing and
stateful phases) with a valid key, and every answer must be a documented status with a
body that matches its documented schema — above all, never a 5xx.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, free_port, reelq_env

pytestmark = pytest.mark.e2e

SEED = 20261125
MAX_EXAMPLES = 60
# positive_data_acceptance is left out on purpose: some rules (a data URI that is not an
# image, last_image without first_image) cannot be said in JSON Schema, so a schema-valid
# body can rightly be refused with 400.
EXCLUDED_CHECKS = "positive_data_acceptance"


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("fuzz")
    # Long-polls on tasks queued behind the fuzzer's own creates would hold requests up to
    # 60 s: cap them (the cap itself is tested in test_api).
    server = Server(home=home, port=free_port(), env=reelq_env(home, REELQ_MAX_LONG_POLL="2"))
    server.new_key("fuzz")
    server.start(workers=1)
    yield server
    server.stop()


def schemathesis_binary() -> str:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert found, "schemathesis is a test dependency (pip install -e '.[test]')"
    return found


def test_no_5xx_and_every_answer_matches_the_document(fuzz_server: Server, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = subprocess.run(
        [
            schemathesis_binary(), "run", f"{fuzz_server.base_url}/openapi.json",
            "--header", f"Authorization: Bearer {fuzz_server.keys[0]}",
            "--checks", "all", "--exclude-checks", EXCLUDED_CHECKS,
            "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--generation-deterministic",
            "--workers", "1", "--request-timeout", "30",
            "--report", "json", "--report-json-path", str(report),
        ],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", output)
    assert counts, output[-3000:]
    generated = int(counts.group(1))
    print(f"schemathesis: {generated} cases generated, all passed")  # the README reports this count
    (fuzz_server.home / "fuzz-cases.json").write_text(json.dumps({"generated": generated}))
    assert generated >= 300
    assert "7/7" in output or "Tested: 7" in output  # every operation of the document was exercised
    assert "500" not in re.findall(r"\[(\d{3})\]", output)
    assert "Traceback" not in fuzz_server.log()
