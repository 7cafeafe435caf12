"""The API on PostgreSQL: status reads (one and two API processes) and creates, against bare Starlette.

    python -m benchmarks.postgres_api [--rounds 5] [--seconds 8] [--json PATH] [--postgres URL]

A fresh PostgreSQL database (created on the server, dropped after). One `reelq serve --workers 1`
renders a task first; then, with no render workers running:

- reads x1: authenticated `GET /v1/result/{id}` of that completed task, one `reelq serve` against
  one bare Starlette process answering the same bytes (`baseline_app.py`), 64 connections;
- reads x2: two `reelq serve` processes on the same database against two baseline processes,
  the 64 connections split between the two (two wrk, one per process, at once);
- reads under churn: one process, each request reading another of 200 completed tasks (a wrk
  script walks them) while a busy deployment is simulated: --churn progress commits a second
  (as many GPU workers' heartbeats) to another task, from this process, throughout both sides'
  runs. Each commit's notice names its task, so the 200 cached rows stay cached; were every
  notice to drop the whole cache, nearly every read here would be a database round trip;
- creates: `POST /v1/vidu/videos`, one `reelq serve --workers 0` against `baseline_app.py --pg`
  (parse the body, one autocommit INSERT into the same PostgreSQL server), 32 connections.

Rounds interleave baseline, reelq, baseline, … so drift on a shared machine hits both sides
alike; medians reported. Targets as on SQLite: reads >= 0.8x the baseline, creates >= 0.6x. The
load generator shares the cores with the servers on both sides.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    POSTGRES_URL,
    REELQ,
    RESULTS_DIR,
    ROOT,
    LoadResult,
    cpu_seconds,
    create_key,
    ensure_wrk,
    free_port,
    fresh_database,
    machine,
    reelq_env,
    reelq_server,
    run_benchmark,
    run_load,
    spawn,
    temp_home,
    wait_ready,
)
from benchmarks.creates import BODY, UNLIMITED
from benchmarks.load_pollers import lua_script
from benchmarks.status_reads import task_reaching

if TYPE_CHECKING:
    from reelq.database import TaskStore

SIDES = ("baseline", "reelq")
TARGETS = {"reads_x1": 0.8, "reads_x2": 0.8, "reads_churn": 0.8, "creates": 0.6}
PHASE_TITLES = {
    "reads_x1": "status reads, 1 API process",
    "reads_x2": "status reads, 2 API processes",
    "reads_churn": "status reads of 200 tasks under progress churn",
    "creates": "creates, 1 API process",
}
CHURN_TASKS = 200
Target = tuple[int, str]  # (server pid, URL)


def measure_group(
    targets: list[Target],
    headers: dict[str, str],
    wrk: str | None,
    args: argparse.Namespace,
    *,
    connections: int,
    body: bytes | None = None,
    script: Path | None = None,
) -> dict[str, Any]:
    """One run of load on every target at once (connections split evenly); the group's totals.

    Any error or non-2xx answer voids the run, as in common.measure_load.
    """
    share = connections // len(targets)
    threads = 1 if len(targets) > 1 else args.threads
    results: list[LoadResult | BaseException] = [RuntimeError("no result")] * len(targets)

    def load(i: int) -> None:
        try:
            results[i] = run_load(wrk, targets[i][1], headers, args.seconds, share, threads, body, script)
        except BaseException as exc:  # handed to the caller below
            results[i] = exc

    cpu_before = sum(cpu_seconds(pid) for pid, _ in targets)
    runners = [threading.Thread(target=load, args=(i,)) for i in range(len(targets))]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join()
    cpu = sum(cpu_seconds(pid) for pid, _ in targets) - cpu_before
    loads: list[LoadResult] = []
    for result in results:
        if isinstance(result, BaseException):
            raise result
        if result.errors:
            raise RuntimeError(f"{result.errors} errors or non-2xx answers in a run: numbers are void")
        loads.append(result)
    requests = sum(r.requests for r in loads)
    return {
        "rps": round(sum(r.rps for r in loads), 1),
        "p50_ms": max(r.p50_ms for r in loads),
        "p99_ms": max(r.p99_ms for r in loads),
        "server_cpu_us_per_req": round(1e6 * cpu / requests, 1) if requests else None,
        "per_process_rps": [round(r.rps, 1) for r in loads],
    }


def run_phase(
    name: str,
    sides: dict[str, list[Target]],
    headers: dict[str, str],
    wrk: str | None,
    args: argparse.Namespace,
    *,
    connections: int,
    body: bytes | None = None,
    script: Path | None = None,
) -> dict[str, Any]:
    for side in SIDES:  # warm-up: connections, prepared statements, caches; not counted
        for _, url in sides[side]:
            run_load(wrk, url, headers, args.warmup, connections // len(sides[side]), 1, body, script)
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for i in range(args.rounds):
        for side in SIDES:
            runs[side].append(
                measure_group(
                    sides[side], headers, wrk, args, connections=connections, body=body, script=script
                )
            )
        b, r = runs["baseline"][-1], runs["reelq"][-1]
        print(
            f"{name} round {i + 1}/{args.rounds}: baseline {b['rps']:7.0f} req/s p99 {b['p99_ms']:6.2f} ms   "
            f"reelq {r['rps']:7.0f} req/s p99 {r['p99_ms']:6.2f} ms   ratio {r['rps'] / b['rps']:.2f}",
            file=sys.stderr,
            flush=True,
        )
    keys = ("rps", "p50_ms", "p99_ms", "server_cpu_us_per_req")
    median = {
        side: {k: round(statistics.median(run[k] for run in runs[side]), 2) for k in keys} for side in SIDES
    }
    ratio = median["reelq"]["rps"] / median["baseline"]["rps"]
    return {
        "processes": len(sides["reelq"]),
        "connections": connections,
        "median": median,
        "ratio_rps": round(ratio, 3),
        "ratio_rps_paired_median": round(
            statistics.median(
                r["rps"] / b["rps"] for b, r in zip(runs["baseline"], runs["reelq"], strict=True)
            ),
            3,
        ),
        "target_ratio": TARGETS[name],
        "meets_target": ratio >= TARGETS[name],
        "runs": runs,
    }


def _claimed_task(store: TaskStore, key: str, worker: str, lease_seconds: float) -> str:
    """A new task of `key`, claimed by `worker` through the store (as a render worker would)."""
    from reelq.database import NewTask

    key_id = store.key_id_for(key)
    assert key_id is not None
    new = NewTask(model="viduq3-turbo", prompt="bench", duration=1, aspect_ratio="16:9", resolution="540p")
    task, _ = store.create_task(key_id, new)
    assert store.claim_next(worker, lease_seconds, task.id) is not None
    return task.id


def completed_tasks(database_url: str, key: str, count: int) -> list[str]:
    """`count` tasks of `key` made completed through the store (as a worker would), without rendering."""
    from reelq.database import TaskStore, make_engine

    store = TaskStore(make_engine(database_url))
    ids = []
    for _ in range(count):
        task_id = _claimed_task(store, key, "bench-setup", 60)
        assert store.complete(task_id, "bench-setup", f"{task_id}-1.mp4", 1.0, 150)
        ids.append(task_id)
    store.engine.dispose()
    return ids


@contextmanager
def churning(database_url: str, key: str, per_second: float) -> Iterator[Callable[[], float]]:
    """A thread committing progress of one processing task `per_second` times a second, through
    the store (each commit sends the notice a render worker's heartbeat sends); yields a function
    that reports the rate reached."""
    from reelq.database import TaskStore, make_engine

    store = TaskStore(make_engine(database_url))
    task_id = _claimed_task(store, key, "bench-churn", 3600)
    stop = threading.Event()
    done = [0]
    started = time.monotonic()

    def churn() -> None:
        interval = 1.0 / per_second
        next_at = time.monotonic()
        while not stop.is_set():
            store.renew(task_id, "bench-churn", 3600, done[0] % 100)
            done[0] += 1
            next_at += interval
            stop.wait(max(0.0, next_at - time.monotonic()))

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    try:
        yield lambda: done[0] / (time.monotonic() - started)
    finally:
        stop.set()
        thread.join()
        store.engine.dispose()


def run(args: argparse.Namespace) -> dict[str, Any]:
    wrk = None if args.python_load else ensure_wrk()
    phases: dict[str, dict[str, Any]] = {}
    with temp_home("rq-pgapi-") as home, fresh_database(args.postgres) as database_url, ExitStack() as stack:
        env = reelq_env(home, REELQ_DATABASE_URL=database_url, **UNLIMITED)
        subprocess.run([*REELQ, "db", "upgrade"], env=env, check=True, capture_output=True)
        key = create_key(env)
        headers = {"Authorization": f"Bearer {key}"}
        with reelq_server(home, env, workers=1) as (_, base):
            task_id = task_reaching(base, key, "completed")
            answer = httpx.get(f"{base}/v1/result/{task_id}", headers=headers)
            answer.raise_for_status()
        body_file = home / "task.json"
        body_file.write_bytes(answer.content)
        libpq_url = database_url.replace("postgresql+psycopg://", "postgresql://", 1)

        def baseline(*extra: str) -> Target:
            port = free_port()
            log = home / f"baseline-{port}.log"
            cmd = [sys.executable, str(ROOT / "benchmarks" / "baseline_app.py"), "--port", str(port)]
            proc = stack.enter_context(spawn([*cmd, "--body", str(body_file), *extra], None, log))
            wait_ready(proc, f"http://127.0.0.1:{port}/v1/result/{task_id}", log)
            return proc.pid, f"http://127.0.0.1:{port}"

        def reelq() -> Target:
            proc, base = stack.enter_context(reelq_server(home, env, workers=0))
            return proc.pid, base

        bases = [baseline(), baseline()]
        reelqs = [reelq(), reelq()]
        read = f"/v1/result/{task_id}"
        for name, count in (("reads_x1", 1), ("reads_x2", 2)):
            sides = {
                "baseline": [(pid, url + read) for pid, url in bases[:count]],
                "reelq": [(pid, url + read) for pid, url in reelqs[:count]],
            }
            phases[name] = run_phase(name, sides, headers, wrk, args, connections=args.connections)
        if wrk is not None:  # the phase walks 200 ids with a wrk script
            ids = completed_tasks(database_url, key, CHURN_TASKS)
            script = lua_script(ids, key, home / "walk.lua")  # walks the ids, as 1,000 pollers do
            sides = {
                "baseline": [(bases[0][0], bases[0][1] + "/")],
                "reelq": [(reelqs[0][0], reelqs[0][1] + "/")],
            }
            with churning(database_url, key, args.churn) as commits:
                phases["reads_churn"] = run_phase(
                    "reads_churn", sides, headers, wrk, args, connections=args.connections, script=script
                )
            phases["reads_churn"]["churn_commits_per_s"] = round(commits(), 1)
        creating = baseline("--pg", libpq_url)
        sides = {
            "baseline": [(creating[0], creating[1] + "/v1/vidu/videos")],
            "reelq": [(reelqs[0][0], reelqs[0][1] + "/v1/vidu/videos")],
        }
        phases["creates"] = run_phase(
            "creates", sides, headers, wrk, args, connections=args.create_connections, body=BODY
        )
    return {
        "benchmark": "postgres_api",
        "machine": machine(),
        "config": {
            "tool": "wrk" if wrk else "pyload",
            "rounds": args.rounds,
            "seconds": args.seconds,
            "connections": args.connections,
            "create_connections": args.create_connections,
            "churn_commits_per_s": args.churn,
        },
        "phases": phases,
        "meets_target": all(p["meets_target"] for p in phases.values()),
    }


def print_table(result: dict[str, Any]) -> None:
    cfg = result["config"]
    print(
        f"\nreelq on PostgreSQL vs bare Starlette, {cfg['tool']}, "
        f"{cfg['rounds']} rounds x {cfg['seconds']} s, medians:"
    )
    print(f"{'':34}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/req':>12}{'ratio':>8}{'target':>8}")
    for name, phase in result["phases"].items():
        print(f"{PHASE_TITLES[name]} ({phase['connections']} connections)")
        for side in SIDES:
            m = phase["median"][side]
            extra = f"{phase['ratio_rps']:>8.2f}{phase['target_ratio']:>8.1f}" if side == "reelq" else ""
            print(
                f"  {side:32}{m['rps']:>9.0f}{m['p50_ms']:>9.2f}{m['p99_ms']:>9.2f}"
                f"{m['server_cpu_us_per_req']:>12.0f}{extra}"
            )
    print("meets every target" if result["meets_target"] else "MISSES a target")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per side (default 5)")
    p.add_argument("--seconds", type=int, default=8, help="seconds of load per run (default 8)")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured seconds per side first (default 2)")
    p.add_argument("--connections", type=int, default=64, help="status reads (default 64)")
    p.add_argument("--create-connections", type=int, default=32, help="creates (default 32)")
    p.add_argument("--churn", type=float, default=100, help="progress commits/s in reads_churn (default 100)")
    p.add_argument("--threads", type=int, default=2, help="load generator threads, one process (default 2)")
    p.add_argument("--postgres", default=POSTGRES_URL, help="admin URL: a fresh database is made there")
    p.add_argument("--python-load", action="store_true", help="use the Python driver even if wrk exists")
    p.add_argument("--json", type=Path, default=RESULTS_DIR / "postgres_api.json")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_benchmark(argv, parser, run, print_table)


if __name__ == "__main__":
    main()
