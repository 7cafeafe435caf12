"""The budget race (SPEC §6): 40 simultaneous creates against a budget with room for 10, from several
processes at once, on the SQLite file and on PostgreSQL, repeated. Every round must accept exactly 10;
prints the accepted counts and the rounds' wall time; writes benchmarks/results/budget_race.json.

    python -m benchmarks.budget_race [--rounds 20 --processes 4] [--postgres URL]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import text

from reelq.database import NewTask, QuotaExceeded, Quotas, TaskStore, make_engine, migrate

RESULTS = Path(__file__).parent / "results"
PRICE = 1500


def _creator(url: str, key_id: str, n: int, start: Any, out: Any) -> None:
    import threading

    store = TaskStore(make_engine(url))
    new = NewTask(
        model="viduq3-pro", prompt="race", duration=5, aspect_ratio="16:9", resolution="720p", price=PRICE
    )
    with store.engine.connect() as conn:  # connected and warm before the start
        conn.execute(text("SELECT 1"))
    accepted = 0
    lock = threading.Lock()

    def one() -> None:
        nonlocal accepted
        try:
            store.create_task(key_id, new, Quotas(10_000, 100_000))
        except QuotaExceeded:
            return
        with lock:
            accepted += 1

    gate = threading.Barrier(n)

    def gated() -> None:
        gate.wait()
        one()

    threads = [threading.Thread(target=gated) for _ in range(n)]
    start.wait()  # a Barrier of every process and the parent
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(accepted)


def race(url: str, rounds: int, processes: int) -> dict[str, Any]:
    store = TaskStore(make_engine(url))
    ctx = multiprocessing.get_context("spawn")
    counts, walls = [], []
    for _ in range(rounds):
        key = store.create_key_with({"budget": 10 * PRICE})[0]
        start, out = ctx.Barrier(processes + 1), ctx.Queue()
        args = (url, key.id, 40 // processes, start, out)
        procs = [ctx.Process(target=_creator, args=args) for _ in range(processes)]
        for p in procs:
            p.start()
        start.wait()  # every process imported and connected: the creates start together
        t0 = time.perf_counter()
        accepted = sum(out.get(timeout=120) for _ in procs)
        walls.append(time.perf_counter() - t0)
        for p in procs:
            p.join()
        record = store.key_record(key.id)
        assert record is not None and record.spent + record.reserved <= 10 * PRICE
        counts.append(accepted)
    return {
        "accepted": counts,
        "all_exactly_10": all(c == 10 for c in counts),
        "median_round_ms": round(statistics.median(walls) * 1000, 1),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--postgres")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"creates": 40, "room": 10, "processes": args.processes}
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'race.db'}"
        migrate(make_engine(url))
        results["sqlite"] = race(url, args.rounds, args.processes)
    if args.postgres:
        schema = f"race_{uuid.uuid4().hex[:10]}"
        admin = make_engine(args.postgres)
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        url = args.postgres + f"?options=-csearch_path%3D{schema}"
        try:
            migrate(make_engine(url))
            results["postgresql"] = race(url, args.rounds, args.processes)
        finally:
            with admin.begin() as conn:
                conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "budget_race.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
