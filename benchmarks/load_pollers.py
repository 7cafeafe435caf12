"""1,000 concurrent pollers against one embedded server while renders run: errors, latency, API RSS.

    python -m benchmarks.load_pollers [--pollers 1000] [--seconds 30] [--runs 3] [--json PATH]

Bounded and loopback-only: wrk holds `--pollers` keep-alive connections for `--seconds`, each
request reading one of 200 tasks (a Lua script rotates the ids), while a background creator keeps
renders in flight so the two workers are busy the whole time. The API process's RSS (the `serve`
process only; render workers are its children) is sampled every 0.5 s: at rest, then the peak.
Rate limits are lifted (REELQ_POLL_RATE etc.) so the limiter never refuses a poll.
"""

from __future__ import annotations

import argparse
import re
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    RESULTS_DIR,
    create_key,
    ensure_wrk,
    install_signal_cleanup,
    machine,
    parse_wrk,
    reelq_env,
    reelq_server,
    temp_home,
    write_json,
)

TASKS = 200
RENDER_BODY = {"model": "viduq3-turbo", "prompt": "load drill", "duration": 1, "resolution": "540p"}
TARGET_RSS_GROWTH_MB = 150


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0.0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.5):
            self.peak = max(self.peak, rss_mb(self.pid))

    def stop(self) -> float:
        self._stop_event.set()
        self.join(timeout=2)
        return self.peak


class Creator(threading.Thread):
    """Keeps a few renders in flight for the whole run (bounded by the deadline)."""

    def __init__(self, base: str, key: str, deadline: float, in_flight: int = 4) -> None:
        super().__init__(daemon=True)
        self.base, self.key, self.deadline, self.in_flight = base, key, deadline, in_flight
        self.created = 0
        self.failures = 0

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        pending: list[str] = []
        with httpx.Client(base_url=self.base, headers=headers, timeout=30) as client:
            while time.monotonic() < self.deadline:
                pending = [
                    t
                    for t in pending
                    if client.get(f"/v1/result/{t}").json()["status"] not in ("completed", "failed")
                ]
                while len(pending) < self.in_flight:
                    response = client.post("/v1/vidu/videos", json=RENDER_BODY)
                    if response.status_code != 200:
                        self.failures += 1
                        break
                    pending.append(response.json()["id"])
                    self.created += 1
                time.sleep(0.2)


def lua_script(ids: list[str], key: str, path: Path) -> Path:
    quoted = ",".join(f'"{task_id}"' for task_id in ids)
    path.write_text(
        f"""
local ids = {{{quoted}}}
local n = 0
wrk.headers["Authorization"] = "Bearer {key}"
request = function()
  n = n + 1
  return wrk.format("GET", "/v1/result/" .. ids[(n % #ids) + 1])
end
"""
    )
    return path


def one_run(wrk: str, pollers: int, seconds: int) -> dict[str, Any]:
    with temp_home("rq-load-") as home:
        env = reelq_env(home, REELQ_SYNTHETIC_DELAY="1")
        key = create_key(env)
        with reelq_server(home, env, workers=2) as (proc, base):
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
                ids = [c.post("/v1/vidu/videos", json=RENDER_BODY).json()["id"] for _ in range(TASKS)]
            time.sleep(1.0)
            rest = rss_mb(proc.pid)
            sampler = RssSampler(proc.pid)
            sampler.start()
            creator = Creator(base, key, time.monotonic() + seconds)
            creator.start()
            script = lua_script(ids, key, home / "poll.lua")
            started_cpu = time.monotonic()
            out = subprocess.run(
                [wrk, "-t2", f"-c{pollers}", f"-d{seconds}s", "--latency", "--timeout", "10s", "-s",
                 str(script), base],
                capture_output=True, text=True, timeout=seconds + 60,
            ).stdout  # fmt: skip
            load = parse_wrk(out, seconds, time.monotonic() - started_cpu)
            socket_errors = re.search(r"Socket errors: .*", out)
            non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
            creator.join(timeout=30)
            peak = max(sampler.stop(), rss_mb(proc.pid))
            return {
                "requests": load.requests,
                "rps": load.rps,
                "p50_ms": load.p50_ms,
                "p99_ms": load.p99_ms,
                "errors": load.errors,
                "socket_errors": socket_errors[0] if socket_errors else "none",
                "non_2xx": int(non_2xx[1]) if non_2xx else 0,
                "renders_created": creator.created,
                "render_create_failures": creator.failures,
                "rss_rest_mb": round(rest, 1),
                "rss_peak_mb": round(peak, 1),
                "rss_growth_mb": round(peak - rest, 1),
            }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pollers", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "load_pollers.json")
    args = parser.parse_args(argv)
    install_signal_cleanup()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.pollers * 4 + 1024)), hard))
    wrk = ensure_wrk()
    if wrk is None:
        raise SystemExit("wrk is needed to hold 1,000 connections (apt-get install wrk)")
    runs = []
    for n in range(args.runs):
        result = one_run(wrk, args.pollers, args.seconds)
        runs.append(result)
        print(f"run {n + 1}/{args.runs}: {result}", flush=True)
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "socket_errors"}
    print(
        f"\n{args.pollers} pollers x {args.seconds} s, renders running, medians of {args.runs} runs:\n"
        f"  errors {median['errors']:.0f}, {median['rps']:.0f} req/s, p50 {median['p50_ms']:.1f} ms, "
        f"p99 {median['p99_ms']:.1f} ms\n"
        f"  API RSS at rest {median['rss_rest_mb']:.0f} MB, peak {median['rss_peak_mb']:.0f} MB "
        f"(+{median['rss_growth_mb']:.0f} MB; target < +{TARGET_RSS_GROWTH_MB} MB)"
    )
    data = {
        "benchmark": "load_pollers",
        "machine": machine(),
        "config": {"pollers": args.pollers, "seconds": args.seconds, "runs": args.runs, "tasks": TASKS},
        "median": median,
        "runs": runs,
    }
    write_json(args.json, data)
    return data


if __name__ == "__main__":
    main()
