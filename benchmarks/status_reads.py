"""Authenticated status reads per second: `reelq serve` against a bare Starlette endpoint, same run.

    python -m benchmarks.status_reads [--rounds 5] [--seconds 10] [--json PATH]

Both servers run side by side, one process each, same uvicorn settings. One task is rendered to
`completed` first, so every read is the realistic completed shape (signed video_url, tokens,
duration); the baseline answers the same object. Rounds interleave baseline, reelq, baseline, … so
drift on a shared machine hits both sides alike; medians are reported, and the ratio
reelq/baseline (target >= 0.6). The load generator shares the cores with the server on both sides.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    RESULTS_DIR,
    ROOT,
    cpu_seconds,
    create_key,
    ensure_wrk,
    free_port,
    install_signal_cleanup,
    machine,
    reelq_env,
    reelq_server,
    run_load,
    spawn,
    temp_home,
    wait_ready,
    write_json,
)

TARGET_RATIO = 0.6
SIDES = ("baseline", "reelq")


def completed_task(base: str, key: str) -> str:
    """Create a 1 s 540p task and wait until it is completed; returns its id."""
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        body = {"model": "viduq3-turbo", "prompt": "benchmark", "duration": 1, "resolution": "540p"}
        created = client.post("/v1/vidu/videos", json=body)
        created.raise_for_status()
        task_id: str = created.json()["id"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = client.get(f"/v1/result/{task_id}").json()["status"]
            if status == "completed":
                return task_id
            if status == "failed":
                raise RuntimeError(f"benchmark task failed: {client.get(f'/v1/result/{task_id}').text}")
            time.sleep(0.1)
    raise RuntimeError("benchmark task did not complete in 120 s")


def measure(pid: int, url: str, key: str, args: argparse.Namespace, wrk: str | None) -> dict[str, Any]:
    """One load run; adds the server's CPU over it (the load generator's is in the LoadResult)."""
    cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
    load = run_load(
        wrk, url, {"Authorization": f"Bearer {key}"}, args.seconds, args.connections, args.threads
    )
    cpu = cpu_seconds(pid) - cpu_before
    wall = time.monotonic() - wall_before
    if load.errors:
        raise RuntimeError(f"{url}: {load.errors} errors or non-2xx answers in a run: numbers are void")
    return {
        **load.__dict__,
        "server_cpu_s": round(cpu, 3),
        "server_cpu_pct": round(100 * cpu / wall, 1),
        "server_cpu_us_per_req": round(1e6 * cpu / load.requests, 1) if load.requests else None,
        "load_cpu_pct": round(100 * load.load_cpu_s / wall, 1),
    }


def side_summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    keys = ("rps", "p50_ms", "p99_ms", "server_cpu_pct", "server_cpu_us_per_req", "load_cpu_pct")
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in keys}


def run_rounds(
    targets: dict[str, tuple[int, str]], key: str, args: argparse.Namespace, wrk: str | None
) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for side in SIDES:  # warm-up: first connections, lazy imports, SQLite page cache; not counted
        pid, url = targets[side]
        run_load(wrk, url, {"Authorization": f"Bearer {key}"}, args.warmup, args.connections, args.threads)
    for i in range(args.rounds):
        for side in SIDES:
            pid, url = targets[side]
            runs[side].append(measure(pid, url, key, args, wrk))
        b, r = runs["baseline"][-1]["rps"], runs["reelq"][-1]["rps"]
        print(
            f"round {i + 1}/{args.rounds}: baseline {b:9.0f} req/s   reelq {r:9.0f} req/s   "
            f"ratio {r / b:.2f}",
            file=sys.stderr,
            flush=True,
        )
    return runs


def report(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace, tool: str) -> dict[str, Any]:
    sides = {side: side_summary(runs[side]) for side in SIDES}
    ratio = sides["reelq"]["rps"] / sides["baseline"]["rps"]
    paired = statistics.median(
        r["rps"] / b["rps"] for b, r in zip(runs["baseline"], runs["reelq"], strict=True)
    )
    return {
        "benchmark": "status_reads",
        "machine": machine(),
        "config": {
            "tool": tool,
            "rounds": args.rounds,
            "seconds": args.seconds,
            "connections": args.connections,
            "threads": args.threads,
        },
        "median": sides,
        "ratio_rps": round(ratio, 3),
        "ratio_rps_paired_median": round(paired, 3),
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
        f"\nGET /v1/result/{{id}} (completed task), {cfg['tool']} {cfg['threads']} threads "
        f"{cfg['connections']} connections, {cfg['rounds']} rounds x {cfg['seconds']:g} s, medians:"
    )
    print(
        f"{'':10}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'srv CPU%':>10}{'CPU us/req':>12}{'load CPU%':>11}"
    )
    for side in SIDES:
        m = result["median"][side]
        print(
            f"{side:10}{m['rps']:>10.0f}{m['p50_ms']:>9.2f}{m['p99_ms']:>9.2f}"
            f"{m['server_cpu_pct']:>10.0f}{m['server_cpu_us_per_req']:>12.0f}{m['load_cpu_pct']:>11.0f}"
        )
    verdict = "meets" if result["meets_target"] else "BELOW"
    print(
        f"ratio reelq/baseline: {result['ratio_rps']:.2f} req/s (paired per-round median "
        f"{result['ratio_rps_paired_median']:.2f}; {verdict} target {TARGET_RATIO}); "
        f"server CPU per request x{result['cpu_per_req_ratio']:.2f}"
    )


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def profile(pid: int, url: str, key: str, args: argparse.Namespace, wrk: str | None) -> dict[str, Any]:
    """Sample the reelq server with py-spy (GIL holder only) during one extra load run."""
    spy = py_spy()
    if spy is None:
        return {"error": "py-spy not installed (.venv/bin/pip install py-spy)"}
    raw = args.json.with_name("status_reads_profile.txt")
    raw.parent.mkdir(parents=True, exist_ok=True)
    headers = {"Authorization": f"Bearer {key}"}
    load = threading.Thread(
        target=run_load, args=(wrk, url, headers, args.seconds + 2, args.connections, args.threads)
    )
    load.start()
    try:
        time.sleep(1)  # let the load reach steady state before sampling
        record = [spy, "record", "-p", str(pid), "-d", str(args.seconds), "-r", "500", "--gil"]
        subprocess.run([*record, "-f", "raw", "-o", str(raw)], check=True, capture_output=True)
    finally:
        load.join()
    return {"raw": str(raw), **top_frames(raw)}


def top_frames(raw: Path, count: int = 80) -> dict[str, Any]:
    """Share of samples per function, inclusive and self, from py-spy's collapsed stacks."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        # Aggregate by function, not line: "f (mod.py:12)" -> "f (mod.py)".
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        total += int(n)
        own[frames[-1]] += int(n)
        for frame in set(frames):
            inclusive[frame] += int(n)
    share = {"inclusive_pct": inclusive, "self_pct": own}
    return {
        "samples": total,
        **{k: {f: round(100 * n / total, 1) for f, n in c.most_common(count)} for k, c in share.items()},
    }


def print_profile(prof: dict[str, Any]) -> None:
    if "error" in prof:
        print(f"profile: {prof['error']}")
        return
    print(f"\npy-spy profile of reelq ({prof['samples']} GIL samples; raw stacks in {prof['raw']})")
    # Frames nearly every sample passes through (process start-up, the event loop) say nothing.
    inclusive = [(f, pct) for f, pct in prof["inclusive_pct"].items() if pct < 95]
    reelq = [(f, pct) for f, pct in inclusive if "(reelq/" in f]
    sections = (("inclusive", inclusive[:25]), ("inclusive, reelq code", reelq[:15]))
    for title, frames in (*sections, ("self", list(prof["self_pct"].items())[:20])):
        print(f"  {title}:")
        for frame, pct in frames:
            print(f"    {pct:5.1f}%  {frame}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    wrk = None if args.python_load else ensure_wrk()
    if wrk is None:
        print(
            "wrk unavailable: falling back to the Python load driver (benchmarks/pyload.py)", file=sys.stderr
        )
    with temp_home("rq-reads-") as home:
        env = reelq_env(home)
        key = create_key(env)
        with reelq_server(home, env, workers=1) as (_, base):
            task_id = completed_task(base, key)
        # Restarted without render workers: the idle worker's wake-ups would only add noise.
        with reelq_server(home, env, workers=0) as (server, base):
            answer = httpx.get(f"{base}/v1/result/{task_id}", headers={"Authorization": f"Bearer {key}"})
            answer.raise_for_status()
            body_file = home / "task.json"
            body_file.write_bytes(answer.content)
            port = free_port()
            log = home / "baseline.log"
            baseline_args = [sys.executable, str(ROOT / "benchmarks" / "baseline_app.py")]
            baseline_args += ["--port", str(port), "--body", str(body_file)]
            with spawn(baseline_args, None, log) as baseline:
                baseline_url = f"http://127.0.0.1:{port}/v1/result/{task_id}"
                wait_ready(baseline, baseline_url, log)
                targets = {
                    "baseline": (baseline.pid, baseline_url),
                    "reelq": (server.pid, f"{base}/v1/result/{task_id}"),
                }
                runs = run_rounds(targets, key, args, wrk)
                prof = profile(*targets["reelq"], key, args, wrk) if args.profile else None
    result = report(runs, args, "wrk" if wrk else "pyload")
    if prof is not None:
        result["profile"] = prof
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per side (default 5)")
    p.add_argument("--seconds", type=int, default=10, help="seconds of load per run (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured seconds per side first (default 2)")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="load generator threads (default 2)")
    p.add_argument("--profile", action="store_true", help="then sample reelq with py-spy for one more run")
    p.add_argument("--python-load", action="store_true", help="use the Python driver even if wrk exists")
    p.add_argument("--json", type=Path, default=RESULTS_DIR / "status_reads.json")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    install_signal_cleanup()
    result = run(args)
    print_table(result)
    if "profile" in result:
        print_profile(result["profile"])
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
