"""Shared plumbing: child servers that are always cleaned up, CPU accounting, load generators, stats."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
REELQ = [sys.executable, "-m", "reelq"]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- processes -----------------------------------------------------------------------------------


# The scaled benchmarks' services (the ones every machine of this project runs).
POSTGRES_URL = os.environ.get("REELQ_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BROKER_URL = os.environ.get("REELQ_BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def reelq_env(home: Path, **extra: str) -> dict[str, str]:
    """The server's environment: no inherited REELQ_* and limits far above what a benchmark sends.

    REELQ_POLL_RATE is set even where a run polls slowly, so a poll limit added later cannot skew it.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("REELQ_")}
    env.update(
        {
            "REELQ_HOME": str(home),
            "REELQ_LOG_LEVEL": "WARNING",
            "REELQ_POLL_RATE": "100000",
            "REELQ_POLL_BURST": "100000",
            "REELQ_CREATE_RATE": "100000",
            "REELQ_MAX_ACTIVE_PER_KEY": "10000",
        }
    )
    env.update(extra)
    return env


def create_key(env: dict[str, str], name: str = "bench") -> str:
    out = subprocess.run(
        [*REELQ, "keys", "create", "--name", name], env=env, capture_output=True, text=True, check=True
    ).stdout
    return out.strip().splitlines()[-1]


def _raise_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    # SIGTERM would otherwise kill us without running `finally`, leaving servers behind.
    raise SystemExit(128 + signum)


def install_signal_cleanup() -> None:
    """Turn SIGTERM/SIGHUP into SystemExit so every `spawn` context still kills its process group."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_on_sigterm)


def kill_group(proc: subprocess.Popen[Any], timeout: float = 10) -> None:
    """SIGTERM the child's process group (the server and its workers), then SIGKILL what is left."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    # Workers may outlive a parent that died first; the group id still reaches them.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)


@contextlib.contextmanager
def spawn(args: Sequence[str], env: dict[str, str] | None, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Start `args` in its own session (so the whole group can be killed) and always clean it up."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            list(args), env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        kill_group(proc)


def wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited early:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s:\n{log.read_text(errors='replace')}")


@contextlib.contextmanager
def reelq_server(
    home: Path, env: dict[str, str], workers: int
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A running `reelq serve` on a free port; yields (process, base_url)."""
    port = free_port()
    log = home / f"serve-{port}.log"
    args = [*REELQ, "serve", "--port", str(port), "--workers", str(workers)]
    with spawn(args, env, log) as proc:
        base = f"http://127.0.0.1:{port}"
        wait_ready(proc, f"{base}/readyz", log)
        yield proc, base


@contextlib.contextmanager
def temp_home(prefix: str) -> Iterator[Path]:
    # Kept short: the doorbell's Unix socket path must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new PostgreSQL database on `admin_url`'s server, dropped afterwards; yields its SQLAlchemy URL."""
    from sqlalchemy import create_engine, make_url, text

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"reelq_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (all its threads), from /proc; children are not included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the ")" that closes comm, utime and stime are the 12th and 13th fields.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


# --- load generation -----------------------------------------------------------------------------


@dataclass
class LoadResult:
    tool: str
    seconds: float
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors and non-2xx answers together: any is a broken run
    load_cpu_s: float  # CPU the load generator itself burnt (it shares the cores with the server)


def ensure_wrk() -> str | None:
    """Path of wrk, installing the Debian package when missing; None when that is impossible."""
    found = shutil.which("wrk")
    if found or not shutil.which("apt-get") or os.geteuid() != 0:
        return found
    print("wrk missing: apt-get install -y wrk", file=sys.stderr, flush=True)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    if subprocess.run(["apt-get", "install", "-y", "wrk"], **quiet).returncode != 0:
        subprocess.run(["apt-get", "update"], **quiet)
        subprocess.run(["apt-get", "install", "-y", "wrk"], **quiet)
    return shutil.which("wrk")


def _run_measured(args: Sequence[str]) -> tuple[str, float]:
    """Run a load generator to completion; its stdout and the CPU it used (from wait4's rusage)."""
    proc = subprocess.Popen(list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    try:
        out = proc.stdout.read().decode(errors="replace")
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:  # Ctrl-C or SIGTERM mid-run: stop and reap it, then let the caller clean up
        proc.kill()
        proc.wait()
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({proc.returncode}):\n{out}")
    return out, usage.ru_utime + usage.ru_stime


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"unexpected wrk duration {text!r}")
    return float(match[1]) * _UNITS_MS[match[2]]


def parse_wrk(out: str, seconds: float, cpu: float) -> LoadResult:
    def grab(pattern: str, default: str | None = None) -> str:
        match = re.search(pattern, out, re.MULTILINE)
        if match:
            return match[1]
        if default is None:
            raise ValueError(f"no {pattern!r} in wrk output:\n{out}")
        return default

    errors = int(grab(r"Non-2xx or 3xx responses: (\d+)", "0"))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    return LoadResult(
        tool="wrk",
        seconds=seconds,
        requests=int(grab(r"^\s*(\d+) requests in")),
        rps=float(grab(r"^Requests/sec:\s+([\d.]+)")),
        p50_ms=_ms(grab(r"^\s+50%\s+(\S+)")),
        p99_ms=_ms(grab(r"^\s+99%\s+(\S+)")),
        errors=errors,
        load_cpu_s=cpu,
    )


def run_load(
    wrk: str | None,
    url: str,
    headers: dict[str, str],
    seconds: int,
    connections: int,
    threads: int,
    body: bytes | None = None,
    script: Path | None = None,
) -> LoadResult:
    """`seconds` of closed-loop load on one URL with wrk, or with the Python driver when wrk is absent.

    With `body`, every request is a POST of that JSON body; otherwise a GET. `script`: a wrk Lua
    script that shapes the requests instead (wrk only).
    """
    with tempfile.TemporaryDirectory(prefix="rq-load-") as tmp:
        body_file = Path(tmp) / "body.json"
        if body is not None:
            body_file.write_bytes(body)
        if wrk:
            args = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
            for name, value in headers.items():
                args += ["-H", f"{name}: {value}"]
            if body is not None:
                script = Path(tmp) / "post.lua"
                script.write_text(_wrk_post_script(body))
            if script is not None:
                args += ["-s", str(script)]
            out, cpu = _run_measured([*args, url])
            return parse_wrk(out, seconds, cpu)
        if script is not None:
            raise RuntimeError("a wrk script needs wrk (apt-get install wrk)")
        args = [sys.executable, str(ROOT / "benchmarks" / "pyload.py"), url, "--seconds", str(seconds)]
        args += ["--connections", str(connections), "--processes", str(threads)]
        for name, value in headers.items():
            args += ["--header", f"{name}: {value}"]
        if body is not None:
            args += ["--post", str(body_file)]
        out, cpu = _run_measured(args)
    data = json.loads(out.strip().splitlines()[-1])
    return LoadResult(tool="pyload", load_cpu_s=cpu, **data)


def _wrk_post_script(body: bytes) -> str:
    text = body.decode()
    if "]==]" in text:
        raise ValueError("body cannot be quoted for wrk's Lua")
    return (
        f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [==[{text}]==]\n'
    )


def measure_load(
    pid: int,
    url: str,
    headers: dict[str, str],
    *,
    wrk: str | None,
    seconds: int,
    connections: int,
    threads: int,
    body: bytes | None = None,
) -> dict[str, Any]:
    """One load run against the server `pid`, with the server's CPU over it added.

    Any error or non-2xx answer voids the run (raises): a server answering errors fast
    would otherwise look good.
    """
    cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
    load = run_load(wrk, url, headers, seconds, connections, threads, body)
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


# --- stats and output ----------------------------------------------------------------------------


def side_summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Medians over the runs of one side of a `measure_load` comparison."""
    keys = ("rps", "p50_ms", "p99_ms", "server_cpu_pct", "server_cpu_us_per_req", "load_cpu_pct")
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in keys}


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): an observed value, honest for small samples."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "p90": percentile(values, 90),
        "max": max(values),
        "min": min(values),
    }


def run_benchmark(
    argv: list[str] | None,
    parser: Callable[[], argparse.ArgumentParser],
    run: Callable[[argparse.Namespace], dict[str, Any]],
    print_table: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """The `main` of a benchmark: parse, run (children cleaned up on SIGTERM), print, write `--json`."""
    args = parser().parse_args(argv)
    install_signal_cleanup()
    result = run(args)
    print_table(result)
    write_json(args.json, result)
    return result


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)


def machine() -> dict[str, Any]:
    import platform

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
