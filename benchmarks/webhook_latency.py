"""Terminal state -> webhook received: how soon a client with a callback_url knows its video is done.

    python -m benchmarks.webhook_latency [--tasks 30] [--json PATH]

`reelq serve --workers 1` on a fresh REELQ_HOME and a local HTTP receiver (tests/webhook_receiver.py,
answering 204). Each of --tasks times, one at a time after an unmeasured warm-up: create a 1 s 540p
task with a callback_url, wait until the receiver has its `completed` event, verify its signature
with `standardwebhooks`, and take

  delay_ms   receiver's clock when the body arrived - tasks.finished_at (the commit that made the task
             terminal, float unix seconds from REELQ_HOME/reelq.db); same host, same clock

Target: median < 100 ms. For comparison, polling every 30-60 s (what the Vidu documentation advises)
learns of the same moment 15-30 s late on average (half the interval).
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from standardwebhooks import Webhook

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    REELQ,
    RESULTS_DIR,
    create_key,
    machine,
    reelq_env,
    reelq_server,
    run_benchmark,
    summary,
    temp_home,
)
from tests.webhook_receiver import Receiver

TARGET_MS = 100.0
TASK = {"model": "viduq3-turbo", "prompt": "webhook latency probe", "duration": 1, "resolution": "540p"}


def finished_at(db: Path, task_id: str) -> float:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT finished_at FROM tasks WHERE id = ?", (task_id,)).fetchone()
    if row is None or row[0] is None:
        raise RuntimeError(f"{task_id}: no finished_at in {db}")
    return float(row[0])


def probe(client: httpx.Client, receiver: Receiver, webhook: Webhook, db: Path) -> dict[str, Any]:
    answer = client.post("/v1/vidu/videos", json={**TASK, "callback_url": receiver.url()})
    answer.raise_for_status()
    task_id = answer.json()["id"]

    def completed(got: list[Any]) -> bool:
        return any(r.json["id"] == task_id and r.json["status"] in ("completed", "failed") for r in got)

    got = receiver.wait_for(completed, timeout=60)
    event = next(r for r in got if r.json["id"] == task_id and r.json["status"] in ("completed", "failed"))
    webhook.verify(event.body, event.headers)  # what a receiver does; raises if not genuine
    return {
        "id": task_id,
        "status": event.json["status"],
        "delay_ms": round(1000 * (event.at - finished_at(db, task_id)), 2),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    samples: list[dict[str, Any]] = []
    receiver = Receiver().start()
    try:
        with temp_home("rq-hook-") as home:
            env = reelq_env(home, REELQ_ALLOW_PRIVATE_URLS="true")  # the receiver is on 127.0.0.1
            key = create_key(env)
            secret = subprocess.run(
                [*REELQ, "keys", "secret", key], env=env, capture_output=True, text=True, check=True
            ).stdout.strip()
            webhook = Webhook(secret)
            with (
                reelq_server(home, env, workers=1) as (_, base),
                httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client,
            ):
                db = home / "reelq.db"
                probe(client, receiver, webhook, db)  # warm-up: worker imports, encoder, connections
                for i in range(args.tasks):
                    time.sleep(args.gap)
                    sample = probe(client, receiver, webhook, db)
                    samples.append(sample)
                    line = f"task {i + 1}/{args.tasks}: {sample['delay_ms']:7.2f} ms"
                    print(line, file=sys.stderr, flush=True)
    finally:
        receiver.stop()
    stats = {k: round(v, 2) for k, v in summary([s["delay_ms"] for s in samples]).items()}
    return {
        "benchmark": "webhook_latency",
        "machine": machine(),
        "config": {"tasks": args.tasks, "gap_s": args.gap, "task": TASK},
        "stats": {"delay_ms": stats},
        "target_median_ms": TARGET_MS,
        "meets_target": stats["median"] < TARGET_MS,
        "polling_30_60s_average_ms": [15000, 30000],
        "not_completed": sum(s["status"] != "completed" for s in samples),
        "samples": samples,
    }


def print_table(result: dict[str, Any]) -> None:
    s = result["stats"]["delay_ms"]
    print(f"\nterminal -> webhook received, {result['config']['tasks']} tasks, one worker:")
    print(f"{'':34}{'median':>9}{'p90':>9}{'max':>9}")
    print(f"{'webhook delay ms':34}{s['median']:>9.2f}{s['p90']:>9.2f}{s['max']:>9.2f}")
    print(f"{'polling every 30-60 s (average)':34}{'15000-30000':>18}")
    verdict = "meets" if result["meets_target"] else "MISSES"
    print(f"{verdict} target median < {TARGET_MS:g} ms")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=30, help="measured tasks (default 30)")
    p.add_argument("--gap", type=float, default=0.2, help="seconds idle between tasks (default 0.2)")
    p.add_argument("--json", type=Path, default=RESULTS_DIR / "webhook_latency.json")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_benchmark(argv, parser, run, print_table)


if __name__ == "__main__":
    main()
