"""Knowing the moment a task ends: 1,000 open SSE streams, and the terminal -> client-knows delay.

    python -m benchmarks.events [--streams 1000] [--hold 10] [--samples 20] [--json PATH]

Bounded and loopback-only; every server lives in its own process group, killed with it.

Streams (a fresh `reelq serve --workers 2`, REELQ_SYNTHETIC_DELAY=2): a render backlog keeps both
workers busy the whole time, so their heartbeats move the change counter about twice a second and
every stream is woken that often (the realistic case, not an idle database). Then `--streams` other
tasks are created (queued behind the backlog) and one raw-socket `GET /v1/result/{id}/events` per
task is opened, each on its own task (the worst case: no two streams share a cached row). Measured:
API RSS at rest vs with every stream open (after each has its first event), the API's CPU per
second while they are held, and any stream that saw no first event or was cut.

Delay (a fresh `reelq serve --workers 1`, no synthetic delay): `--samples` tasks, one at a time;
for each, a long-poll (`?wait=30`) and an SSE stream are opened before the render ends, and each
records the wall-clock moment it learns the task is terminal. The delay is that moment minus the
row's `finished_at` (same machine, same clock). Plain polling every 30-60 s, as the Vidu
documentation suggests, learns it on average 15-30 s late (half the interval), shown beside.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    cpu_seconds,
    create_key,
    install_signal_cleanup,
    machine,
    reelq_env,
    reelq_server,
    temp_home,
    write_json,
)
from benchmarks.load_pollers import raise_nofile, rss_mb

BODY = {"model": "viduq3-turbo", "prompt": "a heron waiting", "duration": 1, "resolution": "540p"}


def create_many(base: str, key: str, count: int) -> list[str]:
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        return [
            client.post("/v1/vidu/videos", json=BODY).raise_for_status().json()["id"] for _ in range(count)
        ]


# --- 1,000 streams ---------------------------------------------------------------------------------


async def _open_stream(
    port: int, key: str, task_id: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET /v1/result/{task_id}/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    return reader, writer


async def _first_event(reader: asyncio.StreamReader) -> bool:
    data = b""
    while b"\nid: " not in data:
        chunk = await reader.read(4096)
        if not chunk:
            return False
        data += chunk
    return data.startswith(b"HTTP/1.1 200")


async def _drain(reader: asyncio.StreamReader) -> int:
    """Bytes received until the stream closes (it should not while held)."""
    total = 0
    while chunk := await reader.read(65536):
        total += len(chunk)
    return total


async def hold_streams(port: int, key: str, ids: list[str], hold: float, pid: int) -> dict[str, Any]:
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        started = time.monotonic()
        for start in range(0, len(ids), 100):
            conns += await asyncio.wait_for(
                asyncio.gather(*(_open_stream(port, key, i) for i in ids[start : start + 100])), 60
            )
        firsts = await asyncio.wait_for(asyncio.gather(*(_first_event(r) for r, _ in conns)), 120)
        open_s = time.monotonic() - started
        drains = [asyncio.create_task(_drain(r)) for r, _ in conns]
        await asyncio.sleep(1.0)
        rss_open = rss_mb(pid)
        cpu_before, t0 = cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(hold)
        cpu_per_s = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - t0)
        cut = sum(1 for d in drains if d.done())
        return {
            "streams": len(conns),
            "without_first_event": firsts.count(False),
            "cut_while_held": cut,
            "open_all_s": round(open_s, 2),
            "rss_open_mb": round(rss_open, 1),
            "cpu_per_s_held": round(cpu_per_s, 3),
        }
    finally:
        for _, writer in conns:
            writer.close()


def streams(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile(args.streams + 512)
    with temp_home("rq-sse-") as home:
        env = reelq_env(home, REELQ_SYNTHETIC_DELAY="2", REELQ_MAX_CONNECTIONS=str(args.streams + 1000))
        key = create_key(env)
        with reelq_server(home, env, workers=2) as (proc, base):
            create_many(base, key, 60)  # the backlog: both workers render throughout
            ids = create_many(base, key, args.streams)
            time.sleep(2.0)
            rss_rest = rss_mb(proc.pid)
            cpu_before, t0 = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(args.hold / 2)
            cpu_rest = (cpu_seconds(proc.pid) - cpu_before) / (time.monotonic() - t0)
            port = int(base.rsplit(":", 1)[1])
            held = asyncio.run(hold_streams(port, key, ids, args.hold, proc.pid))
    held.update(
        rss_rest_mb=round(rss_rest, 1),
        rss_added_mb=round(held["rss_open_mb"] - rss_rest, 1),
        cpu_per_s_rest=round(cpu_rest, 3),
    )
    return held


# --- terminal -> client knows ----------------------------------------------------------------------


def _long_poll(base: str, key: str, task_id: str, seen: dict[str, float]) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        while True:
            body = client.get(f"/v1/result/{task_id}", params={"wait": 30}).json()
            if body["status"] in ("completed", "failed"):
                seen["long_poll"] = time.time()
                return


def _sse(base: str, key: str, task_id: str, seen: dict[str, float], opened: threading.Event) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    with (
        httpx.Client(base_url=base, headers=headers, timeout=60) as client,
        client.stream("GET", f"/v1/result/{task_id}/events") as stream,
    ):
        opened.set()
        for line in stream.iter_lines():
            if line == "id: 1000":
                seen["sse"] = time.time()
                return


def delays(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, list[float]] = {"long_poll": [], "sse": []}
    with temp_home("rq-delay-") as home:
        env = reelq_env(home, REELQ_SYNTHETIC_DELAY="0.5")
        key = create_key(env)
        with reelq_server(home, env, workers=1) as (_proc, base):
            db = sqlite3.connect(home / "reelq.db")
            for _ in range(args.samples):
                task_id = create_many(base, key, 1)[0]
                seen: dict[str, float] = {}
                opened = threading.Event()
                threads = [
                    threading.Thread(target=_long_poll, args=(base, key, task_id, seen)),
                    threading.Thread(target=_sse, args=(base, key, task_id, seen, opened)),
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(60)
                (finished,) = db.execute("SELECT finished_at FROM tasks WHERE id = ?", (task_id,)).fetchone()
                for name in results:
                    if name in seen:
                        results[name].append((seen[name] - finished) * 1000)
            db.close()
    return {
        name: {
            "samples": len(values),
            "median_ms": round(statistics.median(values), 1) if values else None,
            "max_ms": round(max(values), 1) if values else None,
        }
        for name, values in results.items()
    } | {"polling_30_60s_mean_ms": [15000, 30000]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--hold", type=float, default=10.0)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    install_signal_cleanup()
    result = {"machine": machine(), "streams": streams(args), "delay": delays(args)}
    print(json.dumps(result, indent=2))
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
