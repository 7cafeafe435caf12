"""Run every benchmark, print one table and write benchmarks/results/summary.json.

    python -m benchmarks [--quick]
        [--only status_reads,creates,dispatch_latency,render_speed,load_pollers,hostile_inputs,
                postgres_api,scaled_latency]

Each benchmark also runs alone (`python -m benchmarks.status_reads --help`, …) and writes its own
JSON under benchmarks/results/. A benchmark that fails is reported in the table and makes the exit
status 1; the others still run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import (
    creates,
    dispatch_latency,
    hostile_inputs,
    load_pollers,
    postgres_api,
    scaled_latency,
    status_reads,
)
from benchmarks.common import RESULTS_DIR, ROOT, install_signal_cleanup, machine, write_json

Row = tuple[str, str, str, str]  # benchmark, metric, value, target


def run_render_speed(args: argparse.Namespace) -> dict[str, Any]:
    """render_speed.py is someone else's file and prints its JSON on stdout: run it as a child."""
    out = RESULTS_DIR / "render_speed.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "render_speed.py"), "--runs", str(args.render_runs)]
    command += ["--json", str(out)]
    if args.quick:
        command.append("--no-i2v")
    # Its progress table goes to stderr, which we leave on the terminal.
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout)


def run_status_reads(args: argparse.Namespace) -> dict[str, Any]:
    argv = ["--rounds", str(args.rounds), "--seconds", str(args.seconds)]
    return status_reads.main([*argv, "--tail-rounds", str(args.tail_rounds)])


def run_creates(args: argparse.Namespace) -> dict[str, Any]:
    return creates.main(["--rounds", str(args.rounds), "--seconds", str(args.seconds)])


def run_dispatch_latency(args: argparse.Namespace) -> dict[str, Any]:
    return dispatch_latency.main(["--tasks", str(args.tasks)])


def run_load_pollers(args: argparse.Namespace) -> dict[str, Any]:
    # 3 runs x 30 s of 1,000 connections, then 1,000 idle long-polls held 15 s (about 3.5 min).
    argv = ["--runs", "1", "--seconds", "10", "--hold", "5"] if args.quick else ["--runs", "3"]
    return load_pollers.main([*argv, "--idle-long-polls", "1000"])


def run_hostile_inputs(args: argparse.Namespace) -> dict[str, Any]:
    # Prompt renders, image creates, memory and /healthz in one run (about 2.5 min; quick: 1 round).
    return hostile_inputs.main(["--rounds", "1" if args.quick else "3"])


def run_postgres_api(args: argparse.Namespace) -> dict[str, Any]:
    # Reads with one and two API processes, then creates, on PostgreSQL (about 3 min; quick: 1.5).
    return postgres_api.main(["--rounds", str(args.rounds), "--seconds", str(min(args.seconds, 8))])


def run_scaled_latency(args: argparse.Namespace) -> dict[str, Any]:
    return scaled_latency.main(["--tasks", str(args.tasks)])


BENCHMARKS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "status_reads": run_status_reads,
    "creates": run_creates,
    "dispatch_latency": run_dispatch_latency,
    "render_speed": run_render_speed,
    "load_pollers": run_load_pollers,
    "hostile_inputs": run_hostile_inputs,
    "postgres_api": run_postgres_api,
    "scaled_latency": run_scaled_latency,
}
DEFAULT_SET = tuple(BENCHMARKS)


def status_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    phases = r["phases"]
    for name, phase in phases.items():
        base, mine = phase["median"]["baseline"], phase["median"]["reelq"]
        label = f"{name} ({phase['connections']} conns)"
        rows.append(
            (
                "status_reads",
                f"{label} req/s reelq / baseline",
                f"{mine['rps']:.0f} / {base['rps']:.0f} = {phase['ratio_rps']:.2f}",
                f">= {r['target_ratio']} {_ok(phase['ratio_rps'] >= r['target_ratio'])}"
                if name == "throughput"
                else "",
            )
        )
        rows.append(
            (
                "status_reads",
                f"{label} p99 ms reelq / baseline",
                f"{mine['p99_ms']:.2f} / {base['p99_ms']:.2f} = x{phase['ratio_p99']:.2f}",
                f"<= x{r['target_p99_ratio']:g} {_ok(phase['ratio_p99'] <= r['target_p99_ratio'])}"
                if name == "tail"
                else "",
            )
        )
    return rows


def _ok(met: bool) -> str:
    return "ok" if met else "MISS"


def creates_rows(r: dict[str, Any]) -> list[Row]:
    base, mine = r["median"]["baseline"], r["median"]["reelq"]
    return [
        (
            "creates",
            "creates/s reelq / baseline insert",
            f"{mine['rps']:.0f} / {base['rps']:.0f} = {r['ratio_rps']:.2f}",
            f">= {r['target_ratio']} {_ok(r['meets_target'])}",
        ),
        ("creates", "p99 ms reelq / baseline", f"{mine['p99_ms']:.1f} / {base['p99_ms']:.1f}", ""),
    ]


def dispatch_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for name, label in (("client_ms", "client"), ("db_ms", "db")):
        s = r["stats"][name]
        target = (
            f"median < {r['target_median_ms']:g} {'ok' if s['median'] < r['target_median_ms'] else 'MISS'}"
        )
        value = f"{s['median']:.1f} / {s['p90']:.1f} / {s['max']:.1f}"
        rows.append(("dispatch_latency", f"{label} ms median/p90/max", value, target))
    return rows


def render_rows(r: dict[str, Any]) -> list[Row]:
    return [
        ("render_speed", f"{c['case']} x real time", f"{c['realtime_factor']:.2f}", "")
        for c in r.get("results", [])
    ]


def load_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    if "median" in r:
        m, errors, unserved = r["median"], r["totals"]["errors"], r["totals"]["never_accepted"]
        ok = "ok" if errors == 0 and unserved == 0 else "MISS"
        rows += [
            ("load_pollers", "errors / never accepted (all runs)", f"{errors} / {unserved}", f"0 {ok}"),
            (
                "load_pollers",
                "req/s, p50 / p99 ms",
                f"{m['rps']:.0f}, {m['p50_ms']:.1f} / {m['p99_ms']:.1f}",
                "",
            ),
            (
                "load_pollers",
                "API RSS rest -> peak MB",
                f"{m['rss_rest_mb']:.0f} -> {m['rss_peak_mb']:.0f}",
                f"< +150 {'ok' if m['rss_growth_mb'] < 150 else 'MISS'}",
            ),
        ]
    if "idle_long_polls" in r:
        lp = r["idle_long_polls"]
        rows.append(
            (
                "load_pollers",
                f"{lp['long_polls']} idle long-polls, API RSS MB",
                f"{lp['rss_rest_mb']:.0f} -> {lp['rss_held_peak_mb']:.0f} (+{lp['rss_delta_mb']:.1f})",
                f"< +150 {'ok' if lp['meets_target'] else 'MISS'}",
            )
        )
    return rows


def hostile_rows(r: dict[str, Any]) -> list[Row]:
    """Its own table, one row per shape, with the bound and PASS/FAIL in the target column."""
    return [("hostile_inputs", f"{part}: {what}", value, bound) for part, what, value, bound in r["table"]]


def postgres_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for name, phase in r["phases"].items():
        base, mine = phase["median"]["baseline"], phase["median"]["reelq"]
        rows.append(
            (
                "postgres_api",
                f"{postgres_api.PHASE_TITLES[name]} req/s reelq / baseline",
                f"{mine['rps']:.0f} / {base['rps']:.0f} = {phase['ratio_rps']:.2f}",
                f">= {phase['target_ratio']} {_ok(phase['meets_target'])}",
            )
        )
    return rows


def scaled_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for name, label, target in (
        ("db_ms", "create -> processing via Celery ms median/p99", scaled_latency.CREATE_TARGET_MS),
        (
            "wake_ms",
            "completion -> long-poll on the other replica ms median/p99",
            scaled_latency.WAKE_TARGET_MS,
        ),
    ):
        s = r["stats"][name]
        value = f"{s['median']:.1f} / {s['p99']:.1f}"
        rows.append(("scaled_latency", label, value, f"median < {target:g} {_ok(s['median'] < target)}"))
    return rows


ROWS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "status_reads": status_rows,
    "creates": creates_rows,
    "dispatch_latency": dispatch_rows,
    "render_speed": render_rows,
    "load_pollers": load_rows,
    "hostile_inputs": hostile_rows,
    "postgres_api": postgres_rows,
    "scaled_latency": scaled_rows,
}


def print_summary(rows: list[Row]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    print("\n== summary ==")
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(DEFAULT_SET), help="comma-separated subset to run")
    p.add_argument(
        "--quick", action="store_true", help="shorter runs: 3 rounds x 8 s, 15 tasks, 2 renders, no i2v"
    )
    p.add_argument("--rounds", type=int, help="status_reads and creates rounds (default 5, quick 3)")
    p.add_argument("--tail-rounds", type=int, help="status_reads tail/rendering rounds (default 3, quick 1)")
    p.add_argument(
        "--seconds", type=int, help="status_reads and creates seconds per run (default 10, quick 8)"
    )
    p.add_argument("--tasks", type=int, help="dispatch_latency tasks (default 30, quick 15)")
    p.add_argument("--render-runs", type=int, help="render_speed runs per case (default 5, quick 2)")
    p.add_argument("--json", type=Path, default=RESULTS_DIR / "summary.json")
    return p


def resolve_defaults(args: argparse.Namespace) -> None:
    quick = {"rounds": 3, "tail_rounds": 1, "seconds": 8, "tasks": 15, "render_runs": 2}
    full = {"rounds": 5, "tail_rounds": 3, "seconds": 10, "tasks": 30, "render_runs": 5}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def main() -> int:
    args = parser().parse_args()
    resolve_defaults(args)
    install_signal_cleanup()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser().error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    results: dict[str, Any] = {}
    rows: list[Row] = []
    failed = False
    for name in names:
        print(f"\n== {name} ==", flush=True)
        started = time.monotonic()
        try:
            result = BENCHMARKS[name](args)
        except Exception as exc:  # one broken benchmark must not hide the others' numbers
            traceback.print_exc()
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            rows.append((name, "error", f"{type(exc).__name__}", ""))
            failed = True
            continue
        results[name] = {"seconds": round(time.monotonic() - started, 1), "result": result}
        rows.extend(ROWS[name](result))
    print_summary(rows)
    write_json(args.json, {"machine": machine(), "benchmarks": results, "table": rows})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
