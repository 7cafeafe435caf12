"""Fair share and max_processing through a real `reelq serve` (SPEC §6): one render worker busy with
key A's backlog, key B's task is the next or the one after next to start; with two workers, a key at
`max_processing` 1 never has two tasks rendering. Embedded here; with REELQ_TEST_SCALED=1 the same
through PostgreSQL and Celery, where a message only wakes a worker and the worker claims the fairest."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import pytest

from tests.conftest import Server, run_cli

pytestmark = [pytest.mark.process, pytest.mark.scaled]

BODY = {"model": "viduq3-turbo", "prompt": "a quiet harbour", "duration": 1, "resolution": "540p"}


def _key(server: Server, *flags: str) -> tuple[str, str]:
    lines = run_cli(server.home, "keys", "create", *flags, env=server.env).stdout.strip().splitlines()
    return lines[0].removeprefix("id: "), lines[-1]


def _wait_all_finished(server: Server, n: int, timeout: float = 180) -> list[tuple]:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = server.query("SELECT key_id, started_at, status FROM tasks ORDER BY started_at")
        if len(rows) == n and all(status in ("completed", "failed") for _, _, status in rows):
            return rows
        time.sleep(0.2)
    counts = server.query("SELECT status, count(*) FROM tasks GROUP BY status")
    raise AssertionError(f"tasks not finished: {counts}")


def test_one_worker_a_second_customer_waits_at_most_one_task(make_server: Callable[..., Server]) -> None:
    server = make_server(workers=1, REELQ_SYNTHETIC_DELAY="0.3")
    a_id, a_key = _key(server, "--name", "a")
    b_id, b_key = _key(server, "--name", "b")
    with server.client(a_key) as a, server.client(b_key) as b:
        for _ in range(12):
            assert a.post("/v1/vidu/videos", json=BODY).status_code == 200
        deadline = time.monotonic() + 60
        started = "SELECT 1 FROM tasks WHERE started_at IS NOT NULL"
        while not server.query(started) and time.monotonic() < deadline:  # the worker is busy with A
            time.sleep(0.05)
        assert b.post("/v1/vidu/videos", json=BODY).status_code == 200
    rows = _wait_all_finished(server, 13)
    order = [key_id for key_id, _, _ in rows]
    b_at = order.index(b_id)
    assert order.count(a_id) == 12
    # When B created, at least one A task had started; B is next or the one after next.
    a_before_b = order[:b_at].count(a_id)
    assert b_at < 12 and a_before_b <= 3, order


def test_max_processing_with_idle_workers(make_server: Callable[..., Server]) -> None:
    server = make_server(workers=2, REELQ_SYNTHETIC_DELAY="0.5")
    _, a_key = _key(server, "--name", "a", "--max-processing", "1")
    with server.client(a_key) as a:
        for _ in range(4):
            assert a.post("/v1/vidu/videos", json=BODY).status_code == 200
    peak = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        running = server.query("SELECT count(*) FROM tasks WHERE status = 'processing'")[0][0]
        peak = max(peak, running)
        done = server.query("SELECT count(*) FROM tasks WHERE status IN ('completed', 'failed')")[0][0]
        if done == 4:
            break
        time.sleep(0.05)
    assert done == 4 and peak == 1
    rows = server.query("SELECT started_at, finished_at FROM tasks ORDER BY started_at")
    for (_, finished), (started, _) in itertools.pairwise(rows):
        assert started >= finished  # never overlapping
