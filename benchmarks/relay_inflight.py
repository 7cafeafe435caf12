"""One relay worker holding 1,000 upstream tasks in flight: memory, CPU, completion lag.

A real `reelq serve --workers 0` relays every task to a local fake of the Vidu platform
(tests/fake_vidu.py, in this process) that completes each `--delay` seconds after its create. For
each mode (polling only; signed callbacks + polling) it creates `--tasks` tasks at once and
reports: the relay worker's RSS (before the tasks, and its peak while they are all in flight, sampled
every 0.5 s), its CPU seconds over the run, and per task the lag between the upstream's completion
and our task's `completed` (re-host included: download, probe, commit).

    python -m benchmarks.relay_inflight [--tasks 1000] [--delay 20] [--modes polling,callback]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import httpx

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    REELQ,
    RESULTS_DIR,
    cpu_seconds,
    create_key,
    free_port,
    install_signal_cleanup,
    reelq_env,
    spawn,
    summary,
    temp_home,
    wait_ready,
    write_json,
)
from tests.fake_vidu import FakeVidu, make_mp4

KEY_ENV = "BENCH_VIDU_KEY"
VIDU_KEY = "bench-vidu-key"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def relay_worker_pid(server_pid: int, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"reelq.worker.relay" in cmdline:
                return int(child)
        time.sleep(0.1)
    raise RuntimeError("no relay worker process found")


async def create_all(base: str, key: str, n: int) -> list[str]:
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {key}"}, limits=limits
    ) as c:
        sem = asyncio.Semaphore(32)

        async def one(i: int) -> str:
            async with sem:
                body = {"model": "viduq3-pro", "prompt": f"relayed task {i}", "duration": 1}
                answer = await c.post("/v1/vidu/videos", json=body, timeout=60)
                answer.raise_for_status()
                return str(answer.json()["id"])

        return await asyncio.gather(*(one(i) for i in range(n)))


def run_mode(mode: str, tasks: int, delay: float, mp4: bytes) -> dict[str, Any]:
    fake = FakeVidu(VIDU_KEY, mp4, delay=delay).start()
    try:
        with temp_home("rq-relay-") as home:
            models = home / "models.toml"
            models.write_text(
                "[models.viduq3-pro]\n"
                'engine = "relay"\nupstream = "vidu"\n'
                f'base_url = "{fake.base_url}"\napi_key_env = "{KEY_ENV}"\n'
                f"callbacks = {'true' if mode == 'callback' else 'false'}\n"
            )
            env = reelq_env(home, REELQ_MODELS=str(models), REELQ_MAX_QUEUE="100000", **{KEY_ENV: VIDU_KEY})
            key = create_key(env)
            return _measure(home, env, key, tasks, fake, mode)
    finally:
        fake.stop()


def _measure(
    home: Path, env: dict[str, str], key: str, tasks: int, fake: FakeVidu, mode: str
) -> dict[str, Any]:
    port = free_port()
    if mode == "callback":
        env = {**env, "REELQ_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}"}
    log = home / "serve.log"
    with spawn([*REELQ, "serve", "--port", str(port), "--workers", "0"], env, log) as proc:
        base = f"http://127.0.0.1:{port}"
        wait_ready(proc, f"{base}/readyz", log)
        worker = relay_worker_pid(proc.pid)
        time.sleep(1.0)
        rss_idle = rss_mb(worker)
        cpu_start = cpu_seconds(worker)
        started = time.monotonic()
        ids = asyncio.run(create_all(base, key, tasks))
        created_s = time.monotonic() - started
        peak, in_flight_peak = rss_idle, 0
        deadline = time.monotonic() + fake.delay + 600
        db = home / "reelq.db"
        done = 0
        while time.monotonic() < deadline:
            peak = max(peak, rss_mb(worker))
            with sqlite3.connect(db) as conn:
                counts = dict(conn.execute("SELECT status, count(*) FROM tasks GROUP BY status").fetchall())
                held = conn.execute(
                    "SELECT count(*) FROM tasks WHERE status = 'processing' AND upstream_id IS NOT NULL"
                ).fetchone()[0]
            in_flight_peak = max(in_flight_peak, held)
            done = counts.get("completed", 0) + counts.get("failed", 0)
            if done >= tasks:
                break
            time.sleep(0.5)
        wall = time.monotonic() - started
        cpu = cpu_seconds(worker) - cpu_start
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT id, status, finished_at, upstream_id FROM tasks").fetchall()
        log_text = log.read_text(errors="replace")
    completed_at = {t.id: t.completed_at for t in fake.tasks.values()}
    lags = [
        finished - completed_at[upstream]
        for _id, status, finished, upstream in rows
        if status == "completed" and completed_at.get(upstream)
    ]
    failed = sum(1 for r in rows if r[1] == "failed")
    return {
        "mode": mode,
        "tasks": tasks,
        "upstream_delay_s": fake.delay,
        "creates_s": round(created_s, 2),
        "upstream_creates": len(fake.create_calls),
        "in_flight_peak": in_flight_peak,
        "completed": len(lags),
        "failed": failed,
        "relay_rss_idle_mb": round(rss_idle, 1),
        "relay_rss_peak_mb": round(peak, 1),
        "relay_rss_per_task_kb": round((peak - rss_idle) * 1024 / max(1, tasks), 1),
        "relay_cpu_s": round(cpu, 2),
        "wall_s": round(wall, 1),
        "status_reads": len(fake.query_times),
        "callbacks_accepted": sum(1 for *_, status in fake.callbacks if status == 200),
        "lag_s": {k: round(v, 3) for k, v in summary(lags).items()} if lags else None,
        "errors_in_log": log_text.count("ERROR"),
        "ids": len(ids),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--delay", type=float, default=20.0, help="seconds each upstream task takes")
    parser.add_argument("--modes", default="polling,callback")
    args = parser.parse_args(argv)
    install_signal_cleanup()
    with temp_home("rq-mp4-") as tmp:
        mp4 = make_mp4(tmp / "v.mp4", seconds=1.0)
    results = {"runs": [run_mode(m.strip(), args.tasks, args.delay, mp4) for m in args.modes.split(",")]}
    write_json(RESULTS_DIR / "relay_inflight.json", results)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
