"""Worker processes share one bootstrap (worker/bootstrap.py): the relay worker too.

The relay worker used to set up its own logging (`logging.basicConfig`, text only), so a deployment
with REELQ_LOG_FORMAT=json got bare text lines from it that a log collector cannot parse. Started the
way the supervisor starts it (`python -m <RELAY_WORKER_MODULE>`, settings on stdin), every line it
writes up to "ready" must now be one JSON object.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from reelq.config import Settings
from reelq.dispatch.supervisor import RELAY_WORKER_MODULE

pytestmark = [pytest.mark.process]

KEY_ENV = "LAYERS_TEST_RELAY_KEY"
READY_DEADLINE = 60.0  # seconds; a loaded two-core machine starts Python slowly


def test_relay_worker_logs_json_when_asked(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text(
        "[models.relayed]\n"
        'engine = "relay"\n'
        'upstream = "reelq"\n'
        'base_url = "http://127.0.0.1:9"\n'  # nothing listens: the start-up model check fails fast
        f'api_key_env = "{KEY_ENV}"\n'
    )
    (tmp_path / "home").mkdir()  # `reelq serve` makes it before it starts any worker
    settings = Settings(home=tmp_path / "home", models_file=models, log_format="json", log_level="INFO")
    proc = subprocess.Popen(
        [sys.executable, "-m", RELAY_WORKER_MODULE, "--name", "relay"],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env={**os.environ, KEY_ENV: "k"},
    )
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(settings.to_json().encode())
    proc.stdin.close()
    lines: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    stderr = proc.stderr

    def pump() -> None:
        for line in stderr:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[bytes] = []
    try:
        deadline = time.monotonic() + READY_DEADLINE
        while not any(b"ready" in line for line in seen):
            left = deadline - time.monotonic()
            assert left > 0 and proc.poll() is None, f"no 'ready' line; stderr: {b''.join(seen)[-2000:]!r}"
            try:
                seen.append(lines.get(timeout=min(left, 1.0)))
            except queue.Empty:
                continue
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for line in seen:
        entry = json.loads(line)  # a text line (the old basicConfig format) fails here
        assert {"ts", "level", "logger", "message"} <= entry.keys()
    assert any(json.loads(line)["logger"] == "reelq.relay" for line in seen)
