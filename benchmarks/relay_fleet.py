"""Relay channels (SPEC §7): the relay's own overhead per task, and one relay worker holding 1,000
tasks spread over 4 channels.

`overhead`: a real gateway (`reelq serve --workers 0`, its model relayed) in front of a real reelq
upstream (`reelq serve`, synthetic engine, `--delay` seconds a render). Tasks are created one after
another; for each, the gateway's create -> completed minus the upstream's own create -> completed is
what the relay adds: the claim, the create call, learning of the end (long-poll), the download, probe
and commit of the video. Target: under 100 ms.

`fanout`: a gateway with one relayed model over 4 channels - two fake Vidu accounts
(tests/fake_vidu.py) and two fake OpenAI-shaped servers (tests/fake_openai_videos.py: SGLang
Diffusion's shapes), `--cap` in flight each - given `--tasks` tasks at once. Reports the relay
worker's RSS and CPU, each channel's share and its peak in flight (never above the cap), and the lag
from each upstream task's end to ours.

    python -m benchmarks.relay_fleet [--parts overhead,fanout] [--tasks 1000] [--cap 250]
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
from benchmarks.relay_inflight import create_all, relay_worker_pid, rss_mb
from tests.fake_openai_videos import FakeOpenAIVideos
from tests.fake_vidu import FakeVidu, make_mp4

MODEL = "viduq3-pro"


def _relay_models(path: Path, channels: list[dict[str, Any]]) -> Path:
    lines = [f"[models.{MODEL}]", 'engine = "relay"', "poll_initial = 1", "poll_max = 5"]
    for channel in channels:
        lines.append(f"[[models.{MODEL}.upstreams]]")
        for k, v in channel.items():
            lines.append(f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {str(v).lower()}")
    path.write_text("\n".join(lines) + "\n")
    return path


def overhead(tasks: int, delay: float) -> dict[str, Any]:
    with temp_home("rq-up-") as up_home, temp_home("rq-gw-") as gw_home:
        up_env = reelq_env(up_home, REELQ_SYNTHETIC_DELAY=str(delay))
        up_key = create_key(up_env)
        up_port, gw_port = free_port(), free_port()
        up_base, gw_base = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{gw_port}"
        channel = {"upstream": "reelq", "base_url": up_base, "api_key_env": "BENCH_UP_KEY"}
        models = _relay_models(gw_home / "models.toml", [channel])
        gw_env = reelq_env(gw_home, REELQ_MODELS=str(models), BENCH_UP_KEY=up_key)
        gw_key = create_key(gw_env)
        up_log, gw_log = up_home / "serve.log", gw_home / "serve.log"
        with (
            spawn([*REELQ, "serve", "--port", str(up_port), "--workers", "1"], up_env, up_log) as up,
            spawn([*REELQ, "serve", "--port", str(gw_port), "--workers", "0"], gw_env, gw_log) as gw,
        ):
            wait_ready(up, f"{up_base}/readyz", up_log)
            wait_ready(gw, f"{gw_base}/readyz", gw_log)
            auth = {"Authorization": f"Bearer {gw_key}"}
            with httpx.Client(base_url=gw_base, headers=auth, timeout=60) as client:
                for i in range(tasks):
                    body = {"model": MODEL, "prompt": f"overhead {i}", "duration": 1, "resolution": "540p"}
                    task_id = client.post("/v1/vidu/videos", json=body).json()["id"]
                    deadline = time.monotonic() + delay + 60
                    while client.get(f"/v1/result/{task_id}?wait=30").json()["status"] not in (
                        "completed",
                        "failed",
                    ):
                        if time.monotonic() > deadline:
                            raise RuntimeError("a relayed task did not finish")
        with sqlite3.connect(gw_home / "reelq.db") as conn:
            ours = conn.execute(
                "SELECT upstream_id, created_at, finished_at, status FROM tasks ORDER BY created_at"
            ).fetchall()
        with sqlite3.connect(up_home / "reelq.db") as conn:
            theirs = {r[0]: r[1:] for r in conn.execute("SELECT id, created_at, finished_at FROM tasks")}
    # The first task is the warm-up (the gateway's relay worker may still be starting): not counted.
    done = [(up, created, fin) for up, created, fin, status in ours if status == "completed"][1:]
    added = [((fin - created) - (theirs[up][1] - theirs[up][0])) * 1000 for up, created, fin in done]
    # Where it goes: our create -> the upstream's (claim, create call), the upstream's end -> ours
    # (learning of it, download, probe, commit).
    before = [(theirs[up][0] - created) * 1000 for up, created, _ in done]
    after = [(fin - theirs[up][1]) * 1000 for up, _, fin in done]
    return {
        "part": "overhead",
        "tasks": tasks - 1,
        "upstream_render_s": delay,
        "completed": len(added),
        "relay_overhead_ms": {k: round(v, 1) for k, v in summary(added).items()},
        "per_task_ms": [round(v, 1) for v in added],
        "create_to_upstream_ms": {k: round(v, 1) for k, v in summary(before).items()},
        "upstream_end_to_ours_ms": {k: round(v, 1) for k, v in summary(after).items()},
        "target_ms": 100,
    }


def fanout(tasks: int, cap: int, delay: float, mp4: bytes) -> dict[str, Any]:
    vidus = [FakeVidu(f"vidu-key-{i}", mp4, delay=delay).start() for i in range(2)]
    servers = [FakeOpenAIVideos(mp4, delay=delay, require_key=f"sgl-key-{i}").start() for i in range(2)]
    try:
        with temp_home("rq-fan-") as home:
            channels: list[dict[str, Any]] = []
            env_keys: dict[str, str] = {}
            for i, fake in enumerate(vidus):
                channels.append(
                    {"upstream": "vidu", "base_url": fake.base_url, "api_key_env": f"BENCH_VIDU_{i}",
                     "max_in_flight": cap, "name": f"vidu-{i}", "callbacks": False}
                )
                env_keys[f"BENCH_VIDU_{i}"] = fake.key
            for i, fake in enumerate(servers):
                channels.append(
                    {"upstream": "openai", "base_url": fake.base_url, "api_key_env": f"BENCH_SGL_{i}",
                     "max_in_flight": cap, "name": f"sglang-{i}"}
                )
                env_keys[f"BENCH_SGL_{i}"] = f"sgl-key-{i}"
            models = _relay_models(home / "models.toml", channels)
            env = reelq_env(home, REELQ_MODELS=str(models), REELQ_MAX_QUEUE="100000", **env_keys)
            key = create_key(env)
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            log = home / "serve.log"
            with spawn([*REELQ, "serve", "--port", str(port), "--workers", "0"], env, log) as proc:
                wait_ready(proc, f"{base}/readyz", log)
                worker = relay_worker_pid(proc.pid)
                time.sleep(1.0)
                rss_idle = rss_mb(worker)
                cpu_start = cpu_seconds(worker)
                started = time.monotonic()
                asyncio.run(create_all(base, key, tasks))
                created_s = time.monotonic() - started
                peak_rss, peaks = rss_idle, dict.fromkeys((c["name"] for c in channels), 0)
                db = home / "reelq.db"
                deadline = time.monotonic() + delay * (1 + tasks / (4 * cap)) + 600
                while time.monotonic() < deadline:
                    peak_rss = max(peak_rss, rss_mb(worker))
                    with sqlite3.connect(db) as conn:
                        held = conn.execute(
                            "SELECT upstream_channel, count(*) FROM tasks WHERE status = 'processing' "
                            "AND upstream_id IS NOT NULL GROUP BY upstream_channel"
                        ).fetchall()
                        done = conn.execute(
                            "SELECT count(*) FROM tasks WHERE status IN ('completed', 'failed')"
                        ).fetchone()[0]
                    for name, n in held:
                        if name in peaks:
                            peaks[name] = max(peaks[name], n)
                    if done >= tasks:
                        break
                    time.sleep(0.5)
                wall = time.monotonic() - started
                cpu = cpu_seconds(worker) - cpu_start
                with sqlite3.connect(db) as conn:
                    rows = conn.execute(
                        "SELECT status, finished_at, upstream_id, upstream_channel FROM tasks"
                    ).fetchall()
                errors = log.read_text(errors="replace").count("ERROR")
        ended: dict[str, float] = {}
        for fake in vidus:
            ended.update({t.id: t.completed_at for t in fake.tasks.values() if t.completed_at})
        for server in servers:
            ended.update({j.id: j.created + server.delay for j in server.creates})
        lags = [fin - ended[up] for status, fin, up, _ in rows if status == "completed" and up in ended]
        share: dict[str, int] = {}
        for _status, _fin, _up, name in rows:
            share[name] = share.get(name, 0) + 1
        return {
            "part": "fanout",
            "tasks": tasks,
            "channels": 4,
            "cap_per_channel": cap,
            "upstream_delay_s": delay,
            "creates_s": round(created_s, 2),
            "completed": sum(1 for r in rows if r[0] == "completed"),
            "failed": sum(1 for r in rows if r[0] == "failed"),
            "tasks_per_channel": share,
            "peak_in_flight_per_channel": peaks,
            "upstream_creates": sum(len(f.create_calls) for f in vidus)
            + sum(len(s.creates) for s in servers),
            "relay_rss_idle_mb": round(rss_idle, 1),
            "relay_rss_peak_mb": round(peak_rss, 1),
            "relay_cpu_s": round(cpu, 2),
            "wall_s": round(wall, 1),
            "lag_s": {k: round(v, 3) for k, v in summary(lags).items()} if lags else None,
            "errors_in_log": errors,
        }
    finally:
        for fake in vidus:
            fake.stop()
        for server in servers:
            server.stop()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", default="overhead,fanout")
    parser.add_argument("--overhead-tasks", type=int, default=20)
    parser.add_argument("--overhead-delay", type=float, default=2.0, help="seconds an upstream render takes")
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--cap", type=int, default=250, help="max_in_flight of each of the 4 channels")
    parser.add_argument("--delay", type=float, default=20.0, help="seconds each fanned-out task takes")
    args = parser.parse_args(argv)
    install_signal_cleanup()
    parts = [p.strip() for p in args.parts.split(",")]
    results: dict[str, Any] = {"runs": []}
    if "overhead" in parts:
        results["runs"].append(overhead(args.overhead_tasks, args.overhead_delay))
    if "fanout" in parts:
        with temp_home("rq-mp4-") as tmp:
            mp4 = make_mp4(tmp / "v.mp4", seconds=1.0)
        results["runs"].append(fanout(args.tasks, args.cap, args.delay, mp4))
    write_json(RESULTS_DIR / "relay_fleet.json", results)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
