"""kill -9 in the middle of settling (SPEC §6): a worker process killed after its completing
transaction has settled the budget but before that transaction commits leaves nothing charged and
the task recoverable; the recovery completes it and charges it exactly once. On SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from reelq.database import NewTask, TaskStore
from tests.test_tenancy_store import store  # noqa: F401  (the SQLite / PostgreSQL fixture)

pytestmark = [pytest.mark.process]

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from reelq.database import TaskStore, make_engine, lifecycle
    store = TaskStore(make_engine(sys.argv[1]))
    with store.engine.begin() as conn:
        assert lifecycle.complete(conn, sys.argv[2], "doomed", "v.mp4", 5.0, 1500)  # settles inside
        print("settled", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # before the COMMIT
    """
)


def test_kill_between_settle_and_commit_charges_once(store: TaskStore) -> None:  # noqa: F811
    key, _, _ = store.create_key_with({"name": "crash", "budget": 3000})
    new = NewTask(
        model="viduq3-pro", prompt="p", duration=5, aspect_ratio="16:9", resolution="720p", price=1500
    )
    task = store.create_task(key.id, new)[0]
    assert store.claim_next("doomed", 30) is not None
    url = store.engine.url.render_as_string(hide_password=False)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.run([sys.executable, "-c", CHILD, url, task.id], capture_output=True, text=True,
                           timeout=120, env=env)
    assert child.returncode == -signal.SIGKILL and "settled" in child.stdout, child.stderr
    row = store.get_task(task.id)
    record = store.key_record(key.id)
    assert row is not None and record is not None
    assert (row.status, record.spent, record.reserved) == ("processing", 0, 1500)  # nothing happened
    store.expire_leases_of("doomed")
    assert task.id in store.sweep(max_attempts=3, queued_stale_seconds=3600).requeued
    again = store.claim_next("rescuer", 30)
    assert again is not None and again.id == task.id
    assert store.complete(task.id, "rescuer", "v.mp4", 5.0, 1500)
    assert not store.complete(task.id, "doomed", "v.mp4", 5.0, 1500)  # the dead one's retry: nothing
    record = store.key_record(key.id)
    assert record is not None and (record.spent, record.reserved) == (1500, 0)
    assert sum(u.tokens for u in store.usage(key.id)) == 1500
