"""Creates per second: `POST /v1/vidu/videos` on `reelq serve` against a bare Starlette insert, same run.

    python -m benchmarks.creates [--rounds 5] [--seconds 10] [--json PATH]

The baseline (`baseline_app.py --db`) parses the JSON body, inserts one row into its own SQLite file
(WAL, synchronous=NORMAL, like reelq's store) and answers a task object. reelq does everything a
real create does: bearer auth, the create rate limit, strict validation of the body, the per-key
active quota and the queue-depth check, the insert, waking the render workers (none run here, so
tasks stay queued and the queue grows through the run: the quota checks see it), and the answer.
Limits are raised far above what the load sends. Rounds interleave baseline, reelq, … and medians
are reported; the target is reelq/baseline >= 0.6.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path
from typing import Any

import orjson

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    RESULTS_DIR,
    ROOT,
    create_key,
    ensure_wrk,
    free_port,
    machine,
    measure_load,
    reelq_env,
    reelq_server,
    run_benchmark,
    run_load,
    side_summary,
    spawn,
    temp_home,
    wait_ready,
)

TARGET_RATIO = 0.6
SIDES = ("baseline", "reelq")
BODY = orjson.dumps(
    {
        "model": "viduq3-turbo",
        "prompt": "A red fox runs through fresh snow at dawn, low sun, long shadows",
        "duration": 5,
        "aspect_ratio": "16:9",
        "resolution": "720p",
    }
)
# Far above what a run sends, so no create is refused (a refused create would void the run).
UNLIMITED = {"REELQ_CREATE_RATE": "1000000000", "REELQ_MAX_ACTIVE_PER_KEY": "1000000000"}
UNLIMITED |= {"REELQ_MAX_QUEUE": "1000000000"}


def queued(db: Path, table: str = "tasks") -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def run(args: argparse.Namespace) -> dict[str, Any]:
    wrk = None if args.python_load else ensure_wrk()
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    with temp_home("rq-creates-") as home:
        env = reelq_env(home, **UNLIMITED)
        key = create_key(env)
        headers = {"Authorization": f"Bearer {key}"}
        task_file = home / "task.json"
        task_file.write_bytes(b"{}")
        port = free_port()
        log = home / "baseline.log"
        baseline_db = home / "baseline.db"
        baseline_args = [sys.executable, str(ROOT / "benchmarks" / "baseline_app.py"), "--port", str(port)]
        baseline_args += ["--body", str(task_file), "--db", str(baseline_db)]
        with (
            spawn(baseline_args, None, log) as baseline,
            reelq_server(home, env, workers=0) as (server, base),
        ):
            wait_ready(baseline, f"http://127.0.0.1:{port}/v1/result/x", log)
            targets = {
                "baseline": (baseline.pid, f"http://127.0.0.1:{port}/v1/vidu/videos"),
                "reelq": (server.pid, f"{base}/v1/vidu/videos"),
            }
            for side in SIDES:  # warm-up, not counted
                run_load(wrk, targets[side][1], headers, args.warmup, args.connections, args.threads, BODY)
            for i in range(args.rounds):
                for side in SIDES:
                    pid, url = targets[side]
                    runs[side].append(
                        measure_load(
                            pid,
                            url,
                            headers,
                            wrk=wrk,
                            seconds=args.seconds,
                            connections=args.connections,
                            threads=args.threads,
                            body=BODY,
                        )
                    )
                b, r = runs["baseline"][-1]["rps"], runs["reelq"][-1]["rps"]
                print(
                    f"round {i + 1}/{args.rounds}: baseline {b:7.0f} creates/s   reelq {r:7.0f} creates/s   "
                    f"ratio {r / b:.2f}",
                    file=sys.stderr,
                    flush=True,
                )
        depth = {"baseline": queued(baseline_db), "reelq": queued(home / "reelq.db")}
    sides = {side: side_summary(runs[side]) for side in SIDES}
    ratio = sides["reelq"]["rps"] / sides["baseline"]["rps"]
    return {
        "benchmark": "creates",
        "machine": machine(),
        "config": {
            "tool": "wrk" if wrk else "pyload",
            "rounds": args.rounds,
            "seconds": args.seconds,
            "connections": args.connections,
            "threads": args.threads,
        },
        "median": sides,
        "rows_at_end": depth,
        "ratio_rps": round(ratio, 3),
        "cpu_per_req_ratio": round(
            sides["reelq"]["server_cpu_us_per_req"] / sides["baseline"]["server_cpu_us_per_req"], 3
        ),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        "runs": runs,
    }


def print_table(result: dict[str, Any]) -> None:
    cfg = result["config"]
    print(
        f"\nPOST /v1/vidu/videos, {cfg['tool']} {cfg['threads']} threads {cfg['connections']} connections, "
        f"{cfg['rounds']} rounds x {cfg['seconds']:g} s, medians:"
    )
    print(f"{'':10}{'creates/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/req':>12}{'rows at end':>13}")
    for side in SIDES:
        m = result["median"][side]
        print(
            f"{side:10}{m['rps']:>10.0f}{m['p50_ms']:>9.2f}{m['p99_ms']:>9.2f}"
            f"{m['server_cpu_us_per_req']:>12.0f}{result['rows_at_end'][side]:>13}"
        )
    verdict = "meets" if result["meets_target"] else "BELOW"
    print(
        f"ratio reelq/baseline: {result['ratio_rps']:.2f} creates/s ({verdict} target {TARGET_RATIO}); "
        f"server CPU per create x{result['cpu_per_req_ratio']:.2f}"
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per side (default 5)")
    p.add_argument("--seconds", type=int, default=10, help="seconds of load per run (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured seconds per side first (default 2)")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--threads", type=int, default=2, help="load generator threads (default 2)")
    p.add_argument("--python-load", action="store_true", help="use the Python driver even if wrk exists")
    p.add_argument("--json", type=Path, default=RESULTS_DIR / "creates.json")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_benchmark(argv, parser, run, print_table)


if __name__ == "__main__":
    main()
