"""The scaled mode's two latencies, on PostgreSQL + RabbitMQ (Celery dispatch), two API replicas.

    python -m benchmarks.scaled_latency [--tasks 30] [--json PATH]
        [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/test] [--broker amqp://guest:guest@127.0.0.1:5672//]

A fresh database (created on the server, dropped after) and a fresh queue. Replica A runs
`reelq serve --workers 1` (the API and one Celery render worker), replica B `reelq serve --workers 0`
(API only), same database and queue. After one unmeasured warm-up task, each of --tasks times:

  create -> processing   POST on A, poll A every ~2 ms until the task no longer reads `queued`:
                         client (POST sent -> seen) and db (started_at - created_at, both written
                         with this host's clock: the publish, the broker, the Celery worker and the claim)
  completion -> answered a `?wait=30` long-poll held on B from the moment the task is processing;
                         the moment B's answer arrives minus the row's finished_at (written just
                         before the completing commit, so this includes that commit)

Targets: create -> processing median < 20 ms; completion -> long-poll answered on the other replica
< 100 ms. The synthetic render is 1 s of 540p plus REELQ_SYNTHETIC_DELAY=0.3, so the long-poll is
always held before the task completes.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    BROKER_URL,
    POSTGRES_URL,
    REELQ,
    RESULTS_DIR,
    create_key,
    fresh_database,
    machine,
    percentile,
    reelq_env,
    reelq_server,
    run_benchmark,
    summary,
    temp_home,
)
from benchmarks.dispatch_latency import TASK, create, first_not_queued

CREATE_TARGET_MS = 20.0
WAKE_TARGET_MS = 100.0


def row_times(database_url: str, task_id: str) -> tuple[float, float, float | None]:
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT created_at, started_at, finished_at FROM tasks WHERE id = :id"), {"id": task_id}
            ).one()
    finally:
        engine.dispose()
    return float(row[0]), float(row[1]), None if row[2] is None else float(row[2])


def probe(a: httpx.Client, b: httpx.Client, database_url: str) -> dict[str, Any]:
    task_id, sent, answered = create(a)
    seen, polls = first_not_queued(a, task_id, 0.002)
    held: dict[str, Any] = {}

    def hold() -> None:
        body = b.get(f"/v1/result/{task_id}", params={"wait": 30}).json()
        held["at"], held["status"] = time.time(), body["status"]

    thread = threading.Thread(target=hold)
    thread.start()
    thread.join(60)
    created_at, started_at, finished_at = row_times(database_url, task_id)
    if finished_at is None or held.get("status") != "completed":
        raise RuntimeError(f"{task_id}: the long-poll answered {held} before the task finished")
    return {
        "id": task_id,
        "client_ms": round(1000 * (seen - sent), 2),
        "post_ms": round(1000 * (answered - sent), 2),
        "db_ms": round(1000 * (started_at - created_at), 2),
        "wake_ms": round(1000 * (held["at"] - finished_at), 2),
        "polls": polls,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import subprocess

    samples: list[dict[str, Any]] = []
    queue = f"reelq-bench-{uuid.uuid4().hex[:10]}"
    with temp_home("rq-scaled-") as home, fresh_database(args.postgres) as database_url, ExitStack() as stack:
        env = reelq_env(
            home,
            REELQ_DATABASE_URL=database_url,
            REELQ_BROKER_URL=args.broker,
            REELQ_QUEUE=queue,
            REELQ_SYNTHETIC_DELAY="0.3",
        )
        subprocess.run([*REELQ, "db", "upgrade"], env=env, check=True, capture_output=True)
        key = create_key(env)
        headers = {"Authorization": f"Bearer {key}"}
        _, base_a = stack.enter_context(reelq_server(home, env, workers=1))
        _, base_b = stack.enter_context(reelq_server(home, env, workers=0))
        a = stack.enter_context(httpx.Client(base_url=base_a, headers=headers, timeout=60))
        b = stack.enter_context(httpx.Client(base_url=base_b, headers=headers, timeout=60))
        probe(a, b, database_url)  # warm-up: worker imports, encoder, first connections
        for i in range(args.tasks):
            time.sleep(args.gap)
            sample = probe(a, b, database_url)
            samples.append(sample)
            print(
                f"task {i + 1}/{args.tasks}: create->processing client {sample['client_ms']:7.2f} ms"
                f"  db {sample['db_ms']:7.2f} ms   completion->answered on B {sample['wake_ms']:7.2f} ms",
                file=sys.stderr,
                flush=True,
            )
        kombu_cleanup(args.broker, queue)
    stats = {}
    for name in ("client_ms", "db_ms", "post_ms", "wake_ms"):
        values = [s[name] for s in samples]
        stats[name] = {k: round(v, 2) for k, v in {**summary(values), "p99": percentile(values, 99)}.items()}
    return {
        "benchmark": "scaled_latency",
        "machine": machine(),
        "config": {"tasks": args.tasks, "gap_s": args.gap, "task": TASK, "synthetic_delay": 0.3},
        "stats": stats,
        "targets_ms": {"create_to_processing_median": CREATE_TARGET_MS, "wake_other_replica": WAKE_TARGET_MS},
        "meets_targets": stats["db_ms"]["median"] < CREATE_TARGET_MS
        and stats["wake_ms"]["max"] < WAKE_TARGET_MS,
        "samples": samples,
    }


def kombu_cleanup(broker: str, queue: str) -> None:
    import kombu

    try:
        with kombu.Connection(broker, connect_timeout=2) as conn:
            conn.default_channel.queue_delete(queue)
    except Exception as exc:  # the benchmark's figures stand; a leftover queue is only untidy
        print(f"could not delete queue {queue}: {exc}", file=sys.stderr)


def print_table(result: dict[str, Any]) -> None:
    print(f"\nPostgreSQL + Celery on RabbitMQ, {result['config']['tasks']} tasks, idle worker:")
    print(f"{'':44}{'median':>9}{'p90':>9}{'p99':>9}{'max':>9}")
    labels = {
        "db_ms": "create -> processing, db (ms)",
        "client_ms": "create -> processing, client (ms)",
        "post_ms": "POST round trip (ms)",
        "wake_ms": "completion -> long-poll answered on B (ms)",
    }
    for name, label in labels.items():
        s = result["stats"][name]
        print(f"{label:44}{s['median']:>9.2f}{s['p90']:>9.2f}{s['p99']:>9.2f}{s['max']:>9.2f}")
    print("meets targets" if result["meets_targets"] else "MISSES a target")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=30, help="measured tasks (default 30)")
    p.add_argument("--gap", type=float, default=0.2, help="seconds idle between tasks (default 0.2)")
    p.add_argument("--postgres", default=POSTGRES_URL)
    p.add_argument("--broker", default=BROKER_URL)
    p.add_argument("--json", type=Path, default=RESULTS_DIR / "scaled_latency.json")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_benchmark(argv, parser, run, print_table)


if __name__ == "__main__":
    main()
