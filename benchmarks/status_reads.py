"""Authenticated status reads: `reelq serve` against a bare Starlette endpoint, same run.

    python -m benchmarks.status_reads [--rounds 5] [--seconds 10] [--json PATH]

Both servers run side by side, one process each, same uvicorn settings; the baseline answers a
fixed copy of reelq's answer. Three phases, each in interleaved rounds (baseline, reelq, baseline,
…) so drift on a shared machine hits both sides alike, medians reported:

- throughput: req/s at 64 connections reading a `completed` task (signed video_url, tokens,
  duration), target reelq/baseline >= 0.8;
- tail: p99 latency at 256 connections, target reelq/baseline <= 2;
- rendering: req/s reading a task that a worker is rendering (its heartbeat commits progress every
  second, which drops the per-process row cache each time), against the same baseline.

The load generator shares the cores with the server on both sides.
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
    create_key,
    ensure_wrk,
    free_port,
    install_signal_cleanup,
    machine,
    measure_load,
    reelq_env,
    reelq_server,
    run_load,
    side_summary,
    spawn,
    temp_home,
    wait_ready,
    write_json,
)

TARGET_RATIO = 0.8  # reelq req/s over baseline req/s, at least
TARGET_P99_RATIO = 2.0  # reelq p99 over baseline p99 at --tail-connections, at most
SIDES = ("baseline", "reelq")


def task_reaching(base: str, key: str, status: str, prompt: str = "benchmark", timeout: float = 120) -> str:
    """Create a 1 s 540p task and wait until it reads `status`; returns its id."""
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        body = {"model": "viduq3-turbo", "prompt": prompt, "duration": 1, "resolution": "540p"}
        created = client.post("/v1/vidu/videos", json=body)
        created.raise_for_status()
        task_id: str = created.json()["id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = client.get(f"/v1/result/{task_id}").json()
            if answer["status"] == status:
                return task_id
            if answer["status"] == "failed":
                raise RuntimeError(f"benchmark task failed: {answer}")
            time.sleep(0.1)
    raise RuntimeError(f"benchmark task did not reach {status} in {timeout:g} s")


def measure(
    pid: int, url: str, key: str, args: argparse.Namespace, wrk: str | None, connections: int
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    return measure_load(
        pid, url, headers, wrk=wrk, seconds=args.seconds, connections=connections, threads=args.threads
    )


def run_rounds(
    targets: dict[str, tuple[int, str]],
    key: str,
    args: argparse.Namespace,
    wrk: str | None,
    *,
    phase: str,
    rounds: int,
    connections: int,
) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for side in SIDES:  # warm-up: first connections, lazy imports, SQLite page cache; not counted
        pid, url = targets[side]
        run_load(wrk, url, {"Authorization": f"Bearer {key}"}, args.warmup, connections, args.threads)
    for i in range(rounds):
        for side in SIDES:
            pid, url = targets[side]
            runs[side].append(measure(pid, url, key, args, wrk, connections))
        b, r = runs["baseline"][-1], runs["reelq"][-1]
        print(
            f"{phase} round {i + 1}/{rounds} ({connections} conns): baseline {b['rps']:7.0f} req/s "
            f"p99 {b['p99_ms']:6.2f} ms   reelq {r['rps']:7.0f} req/s p99 {r['p99_ms']:6.2f} ms",
            file=sys.stderr,
            flush=True,
        )
    return runs


def phase_summary(runs: dict[str, list[dict[str, Any]]], connections: int) -> dict[str, Any]:
    sides = {side: side_summary(runs[side]) for side in SIDES}
    paired = statistics.median(
        r["rps"] / b["rps"] for b, r in zip(runs["baseline"], runs["reelq"], strict=True)
    )
    return {
        "connections": connections,
        "median": sides,
        "ratio_rps": round(sides["reelq"]["rps"] / sides["baseline"]["rps"], 3),
        "ratio_rps_paired_median": round(paired, 3),
        "ratio_p99": round(sides["reelq"]["p99_ms"] / sides["baseline"]["p99_ms"], 3),
        "cpu_per_req_ratio": round(
            sides["reelq"]["server_cpu_us_per_req"] / sides["baseline"]["server_cpu_us_per_req"], 3
        ),
        "runs": runs,
    }


def report(phases: dict[str, dict[str, Any]], args: argparse.Namespace, tool: str) -> dict[str, Any]:
    throughput, tail = phases["throughput"], phases["tail"]
    return {
        "benchmark": "status_reads",
        "machine": machine(),
        "config": {
            "tool": tool,
            "rounds": args.rounds,
            "seconds": args.seconds,
            "connections": args.connections,
            "tail_connections": args.tail_connections,
            "threads": args.threads,
        },
        # The throughput phase at the top level, as before; every phase under "phases".
        "median": throughput["median"],
        "ratio_rps": throughput["ratio_rps"],
        "target_ratio": TARGET_RATIO,
        "p99_ratio_at_tail": tail["ratio_p99"],
        "target_p99_ratio": TARGET_P99_RATIO,
        "meets_target": throughput["ratio_rps"] >= TARGET_RATIO and tail["ratio_p99"] <= TARGET_P99_RATIO,
        "phases": phases,
    }


PHASE_TITLES = {
    "throughput": "completed task",
    "tail": "completed task, tail latency",
    "rendering": "task being rendered (row cache dropped by each progress commit)",
}


def print_table(result: dict[str, Any]) -> None:
    cfg = result["config"]
    print(
        f"\nGET /v1/result/{{id}}, {cfg['tool']} {cfg['threads']} threads, "
        f"{cfg['seconds']:g} s runs, medians:"
    )
    print(f"{'':22}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/req':>12}{'ratio':>8}{'p99 x':>8}")
    for name, phase in result["phases"].items():
        print(
            f"{PHASE_TITLES[name]} ({phase['connections']} connections, {len(phase['runs']['reelq'])} rounds)"
        )
        for side in SIDES:
            m = phase["median"][side]
            extra = f"{phase['ratio_rps']:>8.2f}{phase['ratio_p99']:>8.2f}" if side == "reelq" else ""
            print(
                f"  {side:20}{m['rps']:>9.0f}{m['p50_ms']:>9.2f}{m['p99_ms']:>9.2f}"
                f"{m['server_cpu_us_per_req']:>12.0f}{extra}"
            )
    verdict = "meets" if result["meets_target"] else "MISSES"
    print(
        f"reelq/baseline req/s {result['ratio_rps']:.2f} (target >= {TARGET_RATIO}); p99 at "
        f"{cfg['tail_connections']} connections x{result['p99_ratio_at_tail']:.2f} (target <= "
        f"{TARGET_P99_RATIO:g}): {verdict} the targets"
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
    phases: dict[str, dict[str, Any]] = {}
    prof = None
    with temp_home("rq-reads-") as home:
        env = reelq_env(home)
        key = create_key(env)
        with reelq_server(home, env, workers=1) as (_, base):
            task_id = task_reaching(base, key, "completed")
            answer = httpx.get(f"{base}/v1/result/{task_id}", headers={"Authorization": f"Bearer {key}"})
            answer.raise_for_status()
        body_file = home / "task.json"
        body_file.write_bytes(answer.content)
        port = free_port()
        log = home / "baseline.log"
        baseline_args = [sys.executable, str(ROOT / "benchmarks" / "baseline_app.py")]
        baseline_args += ["--port", str(port), "--body", str(body_file)]
        with spawn(baseline_args, None, log) as baseline:
            baseline_target = (baseline.pid, f"http://127.0.0.1:{port}/v1/result/{task_id}")
            wait_ready(baseline, baseline_target[1], log)
            # Without render workers: an idle worker's wake-ups would only add noise.
            with reelq_server(home, env, workers=0) as (server, base):
                targets = {"baseline": baseline_target, "reelq": (server.pid, f"{base}/v1/result/{task_id}")}
                for name, rounds, connections in (
                    ("throughput", args.rounds, args.connections),
                    ("tail", args.tail_rounds, args.tail_connections),
                ):
                    runs = run_rounds(
                        targets, key, args, wrk, phase=name, rounds=rounds, connections=connections
                    )
                    phases[name] = phase_summary(runs, connections)
                prof = profile(*targets["reelq"], key, args, wrk) if args.profile else None
            # A task kept `processing` by a worker whose heartbeat commits progress each second.
            slow_env = reelq_env(home, REELQ_SYNTHETIC_DELAY="3600")
            with reelq_server(home, slow_env, workers=1) as (server, base):
                # REELQ_SYNTHETIC_DELAY keeps it `processing` for the whole phase.
                rendering = task_reaching(base, key, "processing", "benchmark rendering", timeout=60)
                targets = {
                    "baseline": baseline_target,
                    "reelq": (server.pid, f"{base}/v1/result/{rendering}"),
                }
                runs = run_rounds(
                    targets,
                    key,
                    args,
                    wrk,
                    phase="rendering",
                    rounds=args.tail_rounds,
                    connections=args.connections,
                )
                phases["rendering"] = phase_summary(runs, args.connections)
    result = report(phases, args, "wrk" if wrk else "pyload")
    if prof is not None:
        result["profile"] = prof
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per side (default 5)")
    p.add_argument("--seconds", type=int, default=10, help="seconds of load per run (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured seconds per side first (default 2)")
    p.add_argument("--connections", type=int, default=64, help="throughput phase (default 64)")
    p.add_argument("--tail-connections", type=int, default=256, help="tail latency phase (default 256)")
    p.add_argument(
        "--tail-rounds", type=int, default=3, help="rounds of the tail and rendering phases (default 3)"
    )
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
