"""1,000 concurrent pollers against one embedded server while renders run: errors, latency, RSS, CPU.

    python -m benchmarks.load_pollers [--pollers 1000] [--seconds 30] [--runs 3]
                                      [--idle-long-polls 1000 [--hold 15]] [--json PATH]

Bounded and loopback-only (127.0.0.1); every loop has a count or a deadline and every process it
starts lives in its own process group, killed with it (also on Ctrl-C / SIGTERM).

Pollers (each run on a fresh REELQ_HOME and a fresh `reelq serve --workers 2`,
REELQ_SYNTHETIC_DELAY=1): 200 tasks (1 s, 540p) are created first. They are the poll targets and
also the render backlog: at about 1.5 renders per second for two workers they take well over the
run to drain, so both workers render the whole time and the pollers see the real mix of queued,
processing and completed answers. A background creator also submits one more render per second
during the run (the create path under load; every create must answer 200). Then
`wrk -t2 -c<pollers> --latency --timeout 10s` holds the keep-alive connections for `--seconds`; a
generated Lua script spreads the requests over the 200 ids and counts every non-200 status.
Rate limits are lifted (REELQ_POLL_RATE/POLL_BURST/CREATE_RATE/MAX_ACTIVE_PER_KEY = 1,000,000) so
the limiter never refuses a poll: this measures the server, not the limiter.

Sampled every 0.5 s from /proc: VmRSS of the API (`serve`) process and, separately, of its render
workers (its child processes), and the listening socket's accept queue (/proc/net/tcp): a
connection still queued there has had no answer at all, which wrk counts nowhere (its `timeout`
errors are answers slower than 10 s), so the connections never accepted are reported as errors
too. CPU from /proc/<pid>/stat (server, workers) and wait4 (wrk). The TCP counters of /proc/net
(listen overflows, retransmits, timeouts) are read around each run, so a latency tail can be told
apart from a dropped handshake. `--runs` runs, medians reported. `--loop asyncio|uvloop` (a
diagnostic) starts the same `reelq serve` with uvicorn's event loop forced through a shim.

Idle long-polls (`--idle-long-polls N`, a fresh `reelq serve --workers 0` so tasks stay queued):
N raw sockets each send `GET /v1/result/{id}?wait=60` for a queued task and hold it for `--hold`
seconds (< 60, so no answer is due); API RSS at rest vs while all N are held (target < +150 MB for
1,000), the server's CPU at rest / holding / just after the clients hang up, and any early answer.
`--runs 0` runs only this mode.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import select
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    RESULTS_DIR,
    cpu_seconds,
    create_key,
    ensure_wrk,
    free_port,
    install_signal_cleanup,
    machine,
    parse_wrk,
    reelq_env,
    reelq_server,
    spawn,
    temp_home,
    wait_ready,
    write_json,
)

TASKS = 200
RENDER_BODY = {"model": "viduq3-turbo", "prompt": "load drill", "duration": 1, "resolution": "540p"}
TARGET_RSS_GROWTH_MB = 150
WRK_TIMEOUT_S = 10
SAMPLE_INTERVAL_S = 0.5
LIFTED = "1000000"
LIMITS = {
    "REELQ_POLL_RATE": LIFTED,
    "REELQ_POLL_BURST": LIFTED,
    "REELQ_CREATE_RATE": LIFTED,
    "REELQ_MAX_ACTIVE_PER_KEY": LIFTED,
}
TERMINAL = ("completed", "failed")
TCP_COUNTERS = {  # /proc/net/netstat TcpExt and /proc/net/snmp Tcp fields worth seeing around a run
    "TcpExt": ("ListenOverflows", "ListenDrops", "TCPTimeouts", "TCPSynRetrans", "TCPAbortOnData"),
    "Tcp": ("RetransSegs", "AttemptFails", "EstabResets"),
}


# --- /proc ---------------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    """VmRSS of one process in MB (0 when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    return int(match[1]) / 1024 if match else 0.0


def children(pid: int) -> list[int]:
    """Direct children of `pid` (the render workers of a `serve`), from /proc/*/stat."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:  # field 4 (ppid) is the 2nd after the ")" closing comm
            found.append(int(entry.name))
    return found


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += cpu_seconds(pid)
    return total


def open_sockets(pid: int) -> int:
    count = 0
    for fd in os.scandir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            count += os.readlink(fd.path).startswith("socket:")
    return count


def tcp_counters() -> dict[str, int]:
    values: dict[str, int] = {}
    for name in ("/proc/net/netstat", "/proc/net/snmp"):
        lines = Path(name).read_text().splitlines()
        for header, data in zip(lines[::2], lines[1::2], strict=False):
            prefix, *keys = header.split()
            wanted = TCP_COUNTERS.get(prefix.rstrip(":"), ())
            for key, value in zip(keys, data.split()[1:], strict=False):
                if key in wanted:
                    values[key] = int(value)
    return values


def listen_state(port: int) -> tuple[int, int]:
    """(accept queue, accepted) of the server listening on 127.0.0.1:`port`, from /proc/net/tcp.

    For a LISTEN socket rx_queue is the accept queue: connections the kernel has completed that
    the server has not accept()ed yet. Established sockets on the port count both kinds.
    """
    local = f"0100007F:{port:04X}"
    queued = 0
    peers = set()  # the file is not a snapshot: under churn a socket can be listed twice
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split(None, 5)
            if fields[1] != local:
                continue
            if fields[3] == "0A":
                queued = int(fields[4].split(":")[1], 16)
            elif fields[3] == "01":
                peers.add(fields[2])
    return queued, max(0, len(peers) - queued)


class Sample(NamedTuple):
    t: float  # time.monotonic()
    rss: float  # the API (serve) process, MB
    workers_rss: float  # its children (render workers) together, MB
    accept_queue: int  # connections completed by the kernel, not yet accepted by the server
    accepted: int  # connections the server has accepted and still holds


class Sampler(threading.Thread):
    """RSS and the listen socket every 0.5 s until stopped (a daemon: never outlives us)."""

    def __init__(self, pid: int, port: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.port = pid, port
        self.samples: list[Sample] = []
        self._stop_event = threading.Event()

    def sample(self) -> Sample:
        t, rss, workers = time.monotonic(), rss_mb(self.pid), sum(rss_mb(c) for c in children(self.pid))
        return Sample(t, rss, workers, *listen_state(self.port))

    def run(self) -> None:
        while True:
            self.samples.append(self.sample())
            if self._stop_event.wait(SAMPLE_INTERVAL_S):
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)

    def window(self, start: float, end: float = float("inf")) -> list[Sample]:
        return [s for s in self.samples if start <= s.t <= end]


@contextlib.contextmanager
def sampling(pid: int, port: int) -> Iterator[Sampler]:
    sampler = Sampler(pid, port)
    sampler.start()
    try:
        yield sampler
    finally:
        sampler.stop()


def raise_nofile(needed: int) -> dict[str, int]:
    """Raise the soft RLIMIT_NOFILE for us and every child we spawn (wrk, the server) to `needed`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        raise SystemExit(f"ulimit -n is {soft} (hard {hard}): {needed} sockets are needed")
    return {"soft": soft, "hard": hard}


# --- the server ----------------------------------------------------------------------------------

# `--loop asyncio|uvloop`, a diagnostic: the same `reelq serve`, with uvicorn.Config's `loop` replaced
# (reelq sets "asyncio": docs/performance.md). src/ is untouched; only the child is patched.
LOOP_SHIM = """
import sys, uvicorn
loop = sys.argv.pop(1)
init = uvicorn.Config.__init__
def patched(self, *args, **kwargs):
    kwargs["loop"] = loop
    init(self, *args, **kwargs)
uvicorn.Config.__init__ = patched
from reelq.cli import app
sys.argv[0] = "reelq"
app()
"""


def event_loop(choice: str) -> str:
    if choice != "auto":
        return f"{choice} (forced through a shim, diagnostic)"
    return "asyncio (reelq serve's own setting)"


@contextlib.contextmanager
def server(
    home: Path, env: dict[str, str], workers: int, loop: str
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`reelq serve` on a free 127.0.0.1 port in its own process group; yields (process, base_url)."""
    if loop == "auto":
        with reelq_server(home, env, workers) as served:
            yield served
        return
    port = free_port()
    log = home / f"serve-{port}.log"
    args = [sys.executable, "-c", LOOP_SHIM, loop, "serve", "--port", str(port), "--workers", str(workers)]
    with spawn(args, env, log) as proc:
        base = f"http://127.0.0.1:{port}"
        wait_ready(proc, f"{base}/readyz", log)
        yield proc, base


def server_log_report(home: Path) -> dict[str, Any]:
    """Error lines of the server's log, its first traceback, and the tasks uvicorn cancelled on exit."""
    lines = []
    for log in home.glob("serve-*.log"):
        lines += log.read_text(errors="replace").splitlines()
    problems = [i for i, line in enumerate(lines) if re.search(r"Traceback|ERROR|CRITICAL|WARNING", line)]
    first = next((i for i, line in enumerate(lines) if line.startswith("Traceback")), None)
    traceback = []
    if first is not None:
        for line in lines[first : first + 400]:
            if traceback and not line.startswith((" ", "Traceback", "\t", "During", "The above")):
                traceback.append(line)
                break
            traceback.append(line)
    cancelled = [int(m[1]) for line in lines if (m := re.search(r"Cancel (\d+) running task", line))]
    return {
        "problem_lines": len(problems),
        "tracebacks": sum(line.startswith("Traceback") for line in lines),
        "first_problems": [lines[i].strip()[:300] for i in problems[:8]],
        "first_traceback_tail": traceback[-6:],
        "tasks_cancelled_at_shutdown": sum(cancelled),
    }


def sampler_window(samples: list[Sample], start: float, end: float) -> list[Sample]:
    return [s for s in samples if start <= s.t <= end] or samples[:1]


def accept_report(samples: list[Sample], started: float, pollers: int) -> dict[str, Any]:
    """How fast the server took the pollers' connections off the kernel's accept queue."""
    all_in = next((s.t - started for s in samples if s.accepted >= pollers), None)
    return {
        "accept_queue_max": max(s.accept_queue for s in samples),
        "accept_queue_end": samples[-1].accept_queue,
        "accepted_end": samples[-1].accepted,
        "seconds_to_accept_all": None if all_in is None else round(all_in, 1),
        "accept_timeline": [
            (round(s.t - started, 1), s.accept_queue, s.accepted)
            for s in samples[:: int(2 / SAMPLE_INTERVAL_S)]
        ],
    }


# --- pollers -------------------------------------------------------------------------------------


class Creator(threading.Thread):
    """Submits one render per `interval` until the deadline (at most `deadline / interval` creates)."""

    def __init__(self, base: str, key: str, seconds: float, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.base, self.key, self.interval = base, key, interval
        self.deadline = time.monotonic() + seconds
        self.max_creates = int(seconds / interval) + 1
        self.ids: list[str] = []
        self.failures: list[str] = []
        self.latencies_ms: list[float] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.base, headers=headers, timeout=WRK_TIMEOUT_S) as client:
            first = time.monotonic()
            for n in range(self.max_creates):
                if self.stopped.wait(max(0.0, first + n * self.interval - time.monotonic())):
                    return
                if time.monotonic() >= self.deadline:
                    return
                started = time.monotonic()
                try:
                    response = client.post("/v1/vidu/videos", json=RENDER_BODY)
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                self.latencies_ms.append(1000 * (time.monotonic() - started))
                if response.status_code == 200:
                    self.ids.append(response.json()["id"])
                else:
                    self.failures.append(f"{response.status_code}: {response.text[:200]}")


def create_tasks(base: str, key: str, count: int) -> list[str]:
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        ids = []
        for _ in range(count):
            response = client.post("/v1/vidu/videos", json=RENDER_BODY)
            response.raise_for_status()
            ids.append(response.json()["id"])
        for task_id in ids:  # warm the read path (lazy imports, SQLite pages) before "at rest"
            client.get(f"/v1/result/{task_id}").raise_for_status()
    return ids


def statuses(base: str, key: str, ids: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        for task_id in ids:
            status = client.get(f"/v1/result/{task_id}").json()["status"]
            counts[status] = counts.get(status, 0) + 1
    return counts


def lua_script(ids: list[str], key: str, path: Path) -> Path:
    """wrk script: each thread walks the ids from its own offset; non-200 statuses are counted."""
    quoted = ",".join(f'"{task_id}"' for task_id in ids)
    path.write_text(
        f"""
local ids = {{{quoted}}}
local threads = {{}}
function setup(thread)
  table.insert(threads, thread)
  thread:set("offset", #threads * 97)
end
function init(args)
  n = offset
  statuses = {{}}
  wrk.headers["Authorization"] = "Bearer {key}"
end
function request()
  n = n + 1
  return wrk.format("GET", "/v1/result/" .. ids[(n % #ids) + 1])
end
function response(status, headers, body)
  if status ~= 200 then
    statuses[status] = (statuses[status] or 0) + 1
  end
end
function done(summary, latency, requests)
  local merged = {{}}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      merged[tostring(status)] = (merged[tostring(status)] or 0) + count
    end
  end
  local parts = {{}}
  for status, count in pairs(merged) do
    table.insert(parts, string.format('"%s": %d', status, count))
  end
  io.write("STATUSES {{" .. table.concat(parts, ", ") .. "}}\\n")
end
"""
    )
    return path


def run_wrk(args: list[str], limit: float) -> tuple[str, float]:
    """Run wrk in its own process group; its output and the CPU it burnt (wait4). Killed past `limit`.

    The output is read in 0.5 s slices, not one blocking read: a SIGTERM delivered to another of
    our threads only runs its Python handler (SystemExit, cleanup) once the main thread wakes.
    """
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + limit
    chunks: list[bytes] = []
    reaped = False
    try:
        fd = proc.stdout.fileno()
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        else:
            raise RuntimeError(f"wrk still running after {limit:.0f} s")
        _, status, usage = os.wait4(proc.pid, 0)
        reaped = True
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        proc.stdout.close()
        if not reaped:  # Ctrl-C, SIGTERM, the deadline or an error mid-run: stop and reap it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out = b"".join(chunks).decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{out}")
    return out, usage.ru_utime + usage.ru_stime


def wrk_details(out: str) -> dict[str, Any]:
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    kinds = ("connect", "read", "write", "timeout")
    percentiles = {
        f"p{q}_ms": value for q, value in re.findall(r"^\s+(\d+)%\s+(\S+)", out, re.MULTILINE)
    }  # fmt: skip
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    statuses_line = re.search(r"^STATUSES (\{.*\})$", out, re.MULTILINE)
    return {
        "socket_errors": dict(zip(kinds, map(int, socket_errors.groups()), strict=True))
        if socket_errors
        else dict.fromkeys(kinds, 0),
        "non_2xx": int(non_2xx[1]) if non_2xx else 0,
        "non_200_statuses": json.loads(statuses_line[1]) if statuses_line else None,
        "latency_percentiles": percentiles,
    }


def one_run(wrk: str, args: argparse.Namespace, n: int) -> dict[str, Any]:
    with temp_home("rq-load-") as home:
        env = reelq_env(home, REELQ_SYNTHETIC_DELAY="1", **LIMITS)
        key = create_key(env)
        with server(home, env, args.workers, args.loop) as (proc, base):
            port = int(base.rsplit(":", 1)[1])
            ids = create_tasks(base, key, args.tasks)
            before = statuses(base, key, ids)
            time.sleep(2.0)  # let the creates' garbage and first renders settle
            with sampling(proc.pid, port) as sampler:
                time.sleep(2.0)  # four samples at rest
                rest = sampler.window(0.0)
                workers = children(proc.pid)
                script = lua_script(ids, key, home / "poll.lua")
                command = [wrk, f"-t{args.threads}", f"-c{args.pollers}", f"-d{args.seconds}s", "--latency"]
                command += ["--timeout", f"{WRK_TIMEOUT_S}s", "-s", str(script), base]
                tcp_before = tcp_counters()
                cpu_before = cpu_seconds(proc.pid), cpu_of(workers)
                started = time.monotonic()
                creator = Creator(base, key, args.seconds)
                creator.start()
                try:
                    out, wrk_cpu = run_wrk(command, args.seconds + 2 * WRK_TIMEOUT_S + 30)
                except BaseException:  # SIGTERM, Ctrl-C or a failure: stop the creator now (a daemon)
                    creator.stopped.set()
                    creator.join(timeout=1)
                    raise
                creator.join(timeout=WRK_TIMEOUT_S + 5)
                ended = time.monotonic()
                server_cpu = cpu_seconds(proc.pid) - cpu_before[0]
                workers_cpu = cpu_of(workers) - cpu_before[1]
                tcp = {k: v - tcp_before.get(k, 0) for k, v in tcp_counters().items()}
                loaded = sampler.window(started, ended)
            after = statuses(base, key, ids)
            created_after = statuses(base, key, creator.ids)
            workers_after = children(proc.pid)
        log = server_log_report(home)
    wall = ended - started
    load = parse_wrk(out, args.seconds, wrk_cpu)
    details = wrk_details(out)
    statuses_seen = details["non_200_statuses"] or {}
    rest_mb = statistics.median(s.rss for s in rest)
    peak_mb = max(s.rss for s in loaded)
    creates = creator.latencies_ms
    finished = sum(after.get(k, 0) - before.get(k, 0) for k in TERMINAL)
    result = {
        "requests": load.requests,
        "rps": load.rps,
        "p50_ms": load.p50_ms,
        "p99_ms": load.p99_ms,
        "errors": load.errors,
        **details,
        "server_5xx": sum(c for code, c in statuses_seen.items() if code.startswith("5")),
        # While wrk still holds its connections (after it exits, established ones vanish).
        **accept_report(sampler_window(loaded, started, started + args.seconds), started, args.pollers),
        "server_cpu_pct": round(100 * server_cpu / wall, 1),
        "server_cpu_us_per_req": round(1e6 * server_cpu / load.requests, 1) if load.requests else None,
        "workers_cpu_pct": round(100 * workers_cpu / wall, 1),
        "wrk_cpu_pct": round(100 * wrk_cpu / wall, 1),
        "rss_rest_mb": round(rest_mb, 1),
        "rss_peak_mb": round(peak_mb, 1),
        "rss_growth_mb": round(peak_mb - rest_mb, 1),
        "rss_end_mb": round(loaded[-1].rss, 1),
        "workers_rss_rest_mb": round(statistics.median(s.workers_rss for s in rest), 1),
        "workers_rss_peak_mb": round(max(s.workers_rss for s in loaded), 1),
        "samples": len(loaded),
        "targets_before": before,
        "targets_after": after,
        "renders_finished_in_run": finished,
        "backlog_left": after.get("queued", 0) + after.get("processing", 0),
        "renders_created": len(creator.ids),
        "render_create_failures": creator.failures,
        "create_ms_median": round(statistics.median(creates), 1) if creates else None,
        "create_ms_max": round(max(creates), 1) if creates else None,
        "created_status_after": created_after,
        "workers_restarted": sorted(workers) != sorted(workers_after),
        "tcp": tcp,
        "server_log": log,
        "wrk_output": out,
    }
    print(
        f"run {n}/{args.runs}: {result['requests']} requests, {result['rps']:.0f} req/s, "
        f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, errors {result['errors']} "
        f"{result['socket_errors']} non-200 {statuses_seen}; accept queue max {result['accept_queue_max']} "
        f"end {result['accept_queue_end']}, accepted {result['accepted_end']}/{args.pollers}; API RSS "
        f"{result['rss_rest_mb']:.0f} -> {result['rss_peak_mb']:.0f} MB; CPU server "
        f"{result['server_cpu_pct']:.0f}% workers {result['workers_cpu_pct']:.0f}% wrk "
        f"{result['wrk_cpu_pct']:.0f}%; renders finished {finished}, created {result['renders_created']}; "
        f"server log problems {log['problem_lines']}",
        file=sys.stderr,
        flush=True,
    )
    return result


MEDIAN_KEYS = (
    "requests", "rps", "p50_ms", "p99_ms", "errors", "non_2xx", "server_5xx", "server_cpu_pct",
    "server_cpu_us_per_req", "workers_cpu_pct", "wrk_cpu_pct", "rss_rest_mb", "rss_peak_mb",
    "rss_growth_mb", "workers_rss_rest_mb", "workers_rss_peak_mb", "renders_finished_in_run",
    "backlog_left", "renders_created", "accept_queue_max", "accept_queue_end", "accepted_end",
    "create_ms_median",
)  # fmt: skip


def median_of(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def pollers(wrk: str, args: argparse.Namespace) -> dict[str, Any]:
    runs = [one_run(wrk, args, n + 1) for n in range(args.runs)]
    median = {k: median_of(r[k] for r in runs) for k in MEDIAN_KEYS}
    totals = {
        "errors": sum(r["errors"] for r in runs),
        "socket_errors": {k: sum(r["socket_errors"][k] for r in runs) for k in runs[0]["socket_errors"]},
        "server_5xx": sum(r["server_5xx"] for r in runs),
        "render_create_failures": sum(len(r["render_create_failures"]) for r in runs),
        "server_log_problem_lines": sum(r["server_log"]["problem_lines"] for r in runs),
        "runs_with_every_poller_accepted": sum(r["seconds_to_accept_all"] is not None for r in runs),
        "never_accepted": sum(r["accept_queue_end"] for r in runs),
    }
    return {"median": median, "totals": totals, "runs": runs}


# --- idle long-polls -----------------------------------------------------------------------------


async def _open_long_poll(port: int, request: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    return reader, writer


async def _first_bytes(reader: asyncio.StreamReader) -> bytes:
    return await reader.read(64)


async def hold_long_polls(
    port: int, key: str, ids: list[str], count: int, hold: float, after: float, pid: int
) -> dict[str, Any]:
    """Open `count` long-polls (batches of 100), hold them `hold` s, hang up, watch `after` s more."""
    requests = [
        (
            f"GET /v1/result/{ids[i % len(ids)]}?wait=60 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {key}\r\n\r\n"
        ).encode()
        for i in range(count)
    ]
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    readers: list[asyncio.Task[bytes]] = []
    open_started = time.monotonic()
    try:
        for start in range(0, count, 100):
            batch = requests[start : start + 100]
            opened = await asyncio.wait_for(
                asyncio.gather(*(_open_long_poll(port, r) for r in batch), return_exceptions=True), 30
            )
            for item in opened:
                if isinstance(item, BaseException):
                    raise RuntimeError(f"opening long-poll {len(conns) + 1}: {item!r}")
                conns.append(item)
        readers = [asyncio.create_task(_first_bytes(r)) for r, _ in conns]
        open_s = time.monotonic() - open_started
        await asyncio.sleep(2.0)  # the server reads and parks every request
        held_from = time.monotonic()
        cpu_before = cpu_seconds(pid)
        sockets_held = open_sockets(pid)
        await asyncio.sleep(hold)
        held_cpu = cpu_seconds(pid) - cpu_before
        held_until = time.monotonic()
        sockets_end = open_sockets(pid)
        early = [t.result() for t in readers if t.done() and not t.cancelled() and t.exception() is None]
    finally:
        for task in readers:
            task.cancel()
        for _, writer in conns:
            writer.transport.abort()  # hang up without waiting for the answer
        await asyncio.gather(*readers, return_exceptions=True)
    hung_up = time.monotonic()
    cpu_before = cpu_seconds(pid)
    await asyncio.sleep(after)
    after_cpu = cpu_seconds(pid) - cpu_before
    return {
        "opened": len(conns),
        "open_s": round(open_s, 2),
        "server_sockets_held": sockets_held,
        "server_sockets_end_of_hold": sockets_end,
        "server_sockets_after_hangup": open_sockets(pid),
        "early_answers": len(early),
        "early_answer_heads": sorted({e.split(b"\r\n", 1)[0].decode(errors="replace") for e in early}),
        "held_from": held_from,
        "held_until": held_until,
        "hung_up": hung_up,
        "server_cpu_pct_held": round(100 * held_cpu / (held_until - held_from), 1),
        "server_cpu_pct_after_hangup": round(100 * after_cpu / (time.monotonic() - hung_up), 1),
    }


def idle_long_polls(args: argparse.Namespace) -> dict[str, Any]:
    count = args.idle_long_polls
    with temp_home("rq-lpoll-") as home:
        env = reelq_env(home, **LIMITS)
        key = create_key(env)
        with server(home, env, 0, args.loop) as (proc, base):
            port = int(base.rsplit(":", 1)[1])
            ids = create_tasks(base, key, min(count, args.tasks))
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=10) as c:
                c.get(f"/v1/result/{ids[0]}", params={"wait": 0.1}).raise_for_status()  # long-poll path warm
            time.sleep(2.0)
            with sampling(proc.pid, port) as sampler:
                cpu_before, rest_started = cpu_seconds(proc.pid), time.monotonic()
                time.sleep(3.0)
                rest_cpu = cpu_seconds(proc.pid) - cpu_before
                rest_wall = time.monotonic() - rest_started
                held = asyncio.run(
                    hold_long_polls(port, key, ids, count, args.hold, args.after_hangup, proc.pid)
                )
                time.sleep(0.5)
            after = statuses(base, key, ids[:5])  # still answering, tasks still queued
        log = server_log_report(home)
    rest = [s.rss for s in sampler.window(0.0, rest_started + rest_wall)]
    holding = [s.rss for s in sampler.window(held.pop("held_from"), held.pop("held_until"))]
    after_hangup = [s.rss for s in sampler.window(held.pop("hung_up"))]
    rest_mb = statistics.median(rest)
    result = {
        "long_polls": count,
        "hold_s": args.hold,
        "after_hangup_s": args.after_hangup,
        **held,
        "rss_rest_mb": round(rest_mb, 1),
        "rss_held_median_mb": round(statistics.median(holding), 1),
        "rss_held_peak_mb": round(max(holding), 1),
        "rss_delta_mb": round(max(holding) - rest_mb, 1),
        "rss_kb_per_long_poll": round(1024 * (max(holding) - rest_mb) / count, 1),
        "rss_after_hangup_mb": round(after_hangup[-1], 1) if after_hangup else None,
        "server_cpu_pct_rest": round(100 * rest_cpu / rest_wall, 1),
        "statuses_after": after,
        "server_log": log,
        "target_delta_mb": TARGET_RSS_GROWTH_MB,
        "meets_target": max(holding) - rest_mb < TARGET_RSS_GROWTH_MB * count / 1000,
    }
    print(
        f"idle long-polls: {result['opened']} held {args.hold:g} s (server sockets "
        f"{result['server_sockets_held']}, early answers {result['early_answers']}); "
        f"API RSS {result['rss_rest_mb']:.0f} -> "
        f"{result['rss_held_peak_mb']:.0f} MB (+{result['rss_delta_mb']:.1f}); CPU rest "
        f"{result['server_cpu_pct_rest']:.0f}% held {result['server_cpu_pct_held']:.0f}% after hang-up "
        f"{result['server_cpu_pct_after_hangup']:.0f}% "
        f"(server sockets {result['server_sockets_after_hangup']}); "
        f"tasks cancelled at shutdown {log['tasks_cancelled_at_shutdown']}",
        file=sys.stderr,
        flush=True,
    )
    return result


# --- report --------------------------------------------------------------------------------------


def print_table(result: dict[str, Any]) -> None:
    cfg = result["config"]
    if "median" in result:
        m, t = result["median"], result["totals"]
        print(
            f"\n{cfg['pollers']} keep-alive pollers (wrk -t{cfg['threads']}) x {cfg['seconds']} s over "
            f"{cfg['tasks']} tasks, `reelq serve --workers {cfg['workers']}` rendering, event loop "
            f"{cfg['event_loop']}, rate limits lifted to {LIFTED}; medians of {cfg['runs']} runs:"
        )
        accepted = f"{t['runs_with_every_poller_accepted']}/{cfg['runs']} runs"
        rows = [
            ("errors (non-2xx + socket), all runs", f"{t['errors']}", "0"),
            ("  socket errors, all runs", " ".join(f"{k} {v}" for k, v in t["socket_errors"].items()), ""),
            ("5xx, all runs", f"{t['server_5xx']}", "0"),
            ("connections never accepted, all runs", f"{t['never_accepted']}", "0"),
            ("requests per run", f"{m['requests']:.0f}", ""),
            ("req/s", f"{m['rps']:.0f}", ""),
            ("latency p50 / p99 ms", f"{m['p50_ms']:.1f} / {m['p99_ms']:.1f}", ""),
            (
                "accept queue max / at end",
                f"{m['accept_queue_max']:.0f} / {m['accept_queue_end']:.0f} "
                f"(all {cfg['pollers']} accepted in {accepted})",
                "0 at end",
            ),
            (
                "API RSS rest -> peak MB",
                f"{m['rss_rest_mb']:.1f} -> {m['rss_peak_mb']:.1f} (+{m['rss_growth_mb']:.1f})",
                f"< +{TARGET_RSS_GROWTH_MB}",
            ),
            (
                "workers RSS rest -> peak MB",
                f"{m['workers_rss_rest_mb']:.0f} -> {m['workers_rss_peak_mb']:.0f}",
                "",
            ),
            (
                "CPU % server / workers / wrk",
                f"{m['server_cpu_pct']:.0f} / {m['workers_cpu_pct']:.0f} / {m['wrk_cpu_pct']:.0f}",
                "",
            ),
            ("server CPU us/req", f"{m['server_cpu_us_per_req']:.0f}", ""),
            (
                "renders finished / created in run",
                f"{m['renders_finished_in_run']:.0f} / {m['renders_created']:.0f} "
                f"({m['backlog_left']:.0f} queued or processing at the end)",
                "",
            ),
            (
                "creates: median ms, failed (all runs)",
                f"{'n/a' if m['create_ms_median'] is None else round(m['create_ms_median'])}, "
                f"{t['render_create_failures']}",
                "0 failed",
            ),
            ("server log error/warning lines", f"{t['server_log_problem_lines']}", "0"),
        ]
        for label, value, target in rows:
            print(f"  {label:38}{value:52}{target}".rstrip())
    if "idle_long_polls" in result:
        lp = result["idle_long_polls"]
        print(
            f"\n{lp['long_polls']} idle long-polls (?wait=60 on queued tasks, held {lp['hold_s']:g} s), "
            f"`reelq serve --workers 0`:\n"
            f"  API RSS rest -> held {lp['rss_rest_mb']:.1f} -> {lp['rss_held_peak_mb']:.1f} MB "
            f"(+{lp['rss_delta_mb']:.1f} MB, {lp['rss_kb_per_long_poll']:.0f} KB each; target < "
            f"+{TARGET_RSS_GROWTH_MB} MB per 1,000); {lp['after_hangup_s']:g} s after hang-up "
            f"{lp['rss_after_hangup_mb']} MB\n"
            f"  server sockets held {lp['server_sockets_held']}, after hang-up "
            f"{lp['server_sockets_after_hangup']}; early answers {lp['early_answers']}\n"
            f"  server CPU rest / held / after hang-up: {lp['server_cpu_pct_rest']:.0f}% / "
            f"{lp['server_cpu_pct_held']:.0f}% / {lp['server_cpu_pct_after_hangup']:.0f}%; "
            f"tasks uvicorn cancelled at shutdown: {lp['server_log']['tasks_cancelled_at_shutdown']}"
        )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--pollers", type=int, default=1000, help="concurrent keep-alive connections (default 1000)"
    )
    p.add_argument("--seconds", type=int, default=30, help="seconds of load per run (default 30)")
    p.add_argument("--runs", type=int, default=3, help="poller runs, fresh server each (default 3; 0: none)")
    p.add_argument(
        "--tasks", type=int, default=TASKS, help=f"tasks the pollers spread over (default {TASKS})"
    )
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    p.add_argument("--workers", type=int, default=2, help="render workers of the server (default 2)")
    p.add_argument("--idle-long-polls", type=int, default=0, metavar="N", help="also hold N idle long-polls")
    p.add_argument(
        "--hold", type=float, default=15, help="seconds the long-polls are held (default 15, < 55)"
    )
    p.add_argument(
        "--after-hangup", type=float, default=5, help="seconds watched after the hang-up (default 5)"
    )
    p.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="diagnostic: force uvicorn's event loop in the server (default auto: reelq serve unchanged)",
    )
    p.add_argument("--json", type=Path, default=RESULTS_DIR / "load_pollers.json")
    return p  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    if not 0 < args.hold < 55 or not 0 <= args.after_hangup <= 60:
        parser().error("--hold must be in (0, 55) s (the long-polls wait 60 s), --after-hangup in [0, 60]")
    if args.runs < 1 and args.idle_long_polls < 1:
        parser().error("nothing to do: --runs 0 and no --idle-long-polls")
    install_signal_cleanup()
    nofile = raise_nofile(2 * max(args.pollers, args.idle_long_polls) + 1024)
    result: dict[str, Any] = {
        "benchmark": "load_pollers",
        "machine": machine(),
        "config": {
            "pollers": args.pollers,
            "seconds": args.seconds,
            "runs": args.runs,
            "tasks": args.tasks,
            "threads": args.threads,
            "workers": args.workers,
            "wrk_timeout_s": WRK_TIMEOUT_S,
            "synthetic_delay_s": 1,
            "render": RENDER_BODY,
            "limits": LIMITS,
            "nofile": nofile,
            "sample_interval_s": SAMPLE_INTERVAL_S,
            "event_loop": event_loop(args.loop),
        },
    }
    if args.runs > 0:
        wrk = ensure_wrk()
        if wrk is None:
            raise SystemExit("wrk is needed to hold 1,000 connections (apt-get install -y wrk)")
        result.update(pollers(wrk, args))
        m = result["median"]
        # A connection still in the accept queue at the end was never answered, and wrk counts it
        # nowhere (it only times out answers that do come): it is an error too.
        result["meets_target"] = (
            result["totals"]["errors"] == 0
            and result["totals"]["never_accepted"] == 0
            and m["rss_growth_mb"] < TARGET_RSS_GROWTH_MB
        )
    if args.idle_long_polls > 0:
        result["idle_long_polls"] = idle_long_polls(args)
    print_table(result)
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
