"""The fair-share claim (SPEC §6) against the FIFO claim it replaced, at 10,000 queued tasks from 100 keys.

Both claim statements run in the same run, on the same store, interleaved in rounds: "fair" is
`TaskStore.claim_next` (database/lifecycle.py: the key with the smallest virtual time, then its
oldest task, and the key's virtual time advanced); "fifo" is the statement `claim` ran before (the
oldest queued row by ix_tasks_status_created, moved to processing). Each claim is its own write
transaction, committed, as a worker's is. The queue is refilled between rounds so every claim sees
~10,000 queued rows. Prints per-claim medians and the ratio; writes benchmarks/results/fair_claim.json.

    python -m benchmarks.fair_claim [--tasks 10000 --keys 100 --claims 300 --rounds 3] [--postgres URL]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import text, update

from reelq.database import NewTask, TaskStore, make_engine, migrate
from reelq.database.tables import tasks

RESULTS = Path(__file__).parent / "results"


def fifo_claim(store: TaskStore, worker: str) -> str | None:
    """The claim as it was before fair share: the oldest queued row, whoever's it is."""
    from sqlalchemy import select

    with store._write() as conn:
        pick = select(tasks.c.id).where(tasks.c.status == "queued").order_by(tasks.c.created_at).limit(1)
        if conn.dialect.name == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        stmt = (
            update(tasks)
            .where(tasks.c.id == pick.scalar_subquery(), tasks.c.status == "queued")
            .values(status="processing", worker=worker, lease_until=time.time() + 30)
            .values(attempts=tasks.c.attempts + 1)
            .returning(tasks.c.id)
        )
        return conn.execute(stmt).scalar()


def fill(store: TaskStore, keys: list[str], total: int) -> None:
    """Top the queue up to `total` queued tasks, spread evenly over `keys` (one transaction per 500)."""
    with store.engine.connect() as conn:
        queued = conn.execute(text("SELECT count(*) FROM tasks WHERE status = 'queued'")).scalar_one()
    new = NewTask(model="viduq3-pro", prompt="bench", duration=5, aspect_ratio="16:9", resolution="720p")
    missing = [(keys[i % len(keys)], new) for i in range(total - queued)]
    for start in range(0, len(missing), 500):
        store.create_tasks(missing[start : start + 500])


def measure(store: TaskStore, claim: Any, n: int) -> list[float]:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        got = claim(f"bench-{i}")
        times.append(time.perf_counter() - t0)
        assert got is not None
    return times


def run(store: TaskStore, tasks_n: int, keys_n: int, claims: int, rounds: int) -> dict[str, Any]:
    keys = [store.create_key_with({"name": f"k{i}", "weight": float(1 + i % 3)})[0].id for i in range(keys_n)]
    fair: list[float] = []
    fifo: list[float] = []
    for _ in range(rounds):
        for name, fn, sink in (
            ("fair", lambda w: store.claim_next(w, 30), fair),
            ("fifo", lambda w: fifo_claim(store, w), fifo),
        ):
            fill(store, keys, tasks_n)
            sink += measure(store, fn, claims)
            median = statistics.median(sink) * 1e6
            print(f"  {name}: median {median:.0f} µs over {len(sink)}", file=sys.stderr)
    return {
        "fair_median_us": round(statistics.median(fair) * 1e6, 1),
        "fifo_median_us": round(statistics.median(fifo) * 1e6, 1),
        "fair_p95_us": round(sorted(fair)[int(len(fair) * 0.95)] * 1e6, 1),
        "fifo_p95_us": round(sorted(fifo)[int(len(fifo) * 0.95)] * 1e6, 1),
        "ratio": round(statistics.median(fair) / statistics.median(fifo), 2),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--claims", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--postgres", help="also on this PostgreSQL database (a fresh schema, dropped after)")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"tasks": args.tasks, "keys": args.keys}
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'bench.db'}")
        migrate(engine)
        print("sqlite:", file=sys.stderr)
        results["sqlite"] = run(TaskStore(engine), args.tasks, args.keys, args.claims, args.rounds)
        engine.dispose()
    if args.postgres:
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        admin = make_engine(args.postgres)
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        engine = make_engine(args.postgres + f"?options=-csearch_path%3D{schema}")
        try:
            migrate(engine)
            print("postgresql:", file=sys.stderr)
            results["postgresql"] = run(TaskStore(engine), args.tasks, args.keys, args.claims, args.rounds)
        finally:
            engine.dispose()
            with admin.begin() as conn:
                conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
            admin.dispose()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fair_claim.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
