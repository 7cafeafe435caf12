"""What one greedy client can take from everyone else (issue 19): floods on loopback, bounded in size.

    python -m benchmarks.fairness [--json PATH]

(a) webhooks: 60 `video.processing` events of key A to a receiver that never answers, then key B's
    `processing` and `completed` to a healthy receiver; the delivery loop (webhooks/delivery.py) on a
    temporary SQLite file. Reported: seconds until B's `completed` arrived; sends A held at once.
(b) idle connections: a `reelq serve --workers 0` with REELQ_MAX_CONNECTIONS=300, 300 silent
    connections from one client, then 80 `/healthz` probes on fresh connections: how many got 503.
(c) event streams: the same server, one key opens 300 SSE streams on its own task, then 80 `/healthz`
    probes and 40 reads by another key: how many failed.
(d) worker probe port: 500 connections from 127.0.0.2, each sending a byte every 0.5 s to `reelq
    worker`'s endpoint (dispatch/probes.py, in this process): its threads after 5 s; `/healthz` from
    127.0.0.1 meanwhile.
(e) `/metrics`: its `reelq_http_*` lines before and after every method the parser accepts on 12 paths
    (routes and made-up ones), unauthenticated.

Run it against another source tree with PYTHONPATH=<tree>/src to compare (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import create_key, install_signal_cleanup, reelq_env, reelq_server, temp_home

CONNECTIONS = 500
# Methods the HTTP parser accepts (an unknown one is a 400 before the app), on real routes.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND", "PROPPATCH",
           "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "REPORT", "MKACTIVITY", "CHECKOUT", "MERGE", "NOTIFY",
           "SUBSCRIBE", "UNSUBSCRIBE", "PURGE", "SEARCH", "LINK", "UNLINK")  # fmt: skip
ROUTES = ("/healthz", "/readyz", "/metrics", "/v1/result/video_x", "/v1/result/video_x/events", "/v1/usage",
          "/v1/vidu/videos", "/v1/vidu/videos/video_x", "/v1/vidu/videos/video_x/cancel", "/v1/files/x.mp4",
          "/made/up/1", "/made/up/2")  # fmt: skip
ATTACKER = "127.0.0.2"
GOOD = {"model": "viduq3-turbo", "prompt": "a fair lighthouse", "duration": 1, "resolution": "540p"}


def webhooks() -> dict[str, Any]:
    from reelq.config import Settings
    from reelq.database import NewTask, TaskStore, make_engine, migrate
    from reelq.webhooks.delivery import WebhookDeliverer
    from tests.test_fair_webhooks import HangingReceiver
    from tests.webhook_receiver import Receiver

    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'reelq.db'}")
        migrate(engine)
        store = TaskStore(engine)
        hanging, healthy = HangingReceiver(), Receiver().start()
        greedy, other = store.create_key("a")[0], store.create_key("b")[0]
        for n in range(60):
            new = NewTask(**GOOD, aspect_ratio="16:9", callback_url=hanging.url(), seed=n)
            task, _ = store.create_task(greedy.id, new)
            store.claim_next("w", 300, task.id)
        new = NewTask(**GOOD, aspect_ratio="16:9", callback_url=healthy.url())
        task, _ = store.create_task(other.id, new)
        store.claim_next("w", 300, task.id)
        store.complete(task.id, "w", "v.mp4", 1.0, 100)
        settings = Settings(home=Path(tmp), allow_private_urls=True, webhook_timeout=10)
        deliverer = WebhookDeliverer(settings, store, lambda v, _b: {"id": v.id, "s": v.status}, "http://x")
        started = time.monotonic()
        deliverer.start()
        try:
            healthy.wait_for(lambda got: len(got) >= 2, timeout=120)
            seconds = time.monotonic() - started
            held = hanging.held()
        finally:
            deliverer.stop()
            hanging.close()
            healthy.stop()
            engine.dispose()
    return {"other_key_completed_after_s": round(seconds, 2), "greedy_sends_held": held}


def probe(base: str, count: int, headers: dict[str, str] | None = None, path: str = "/healthz") -> int:
    """How many of `count` requests on fresh connections did not get a 200."""
    failed = 0
    for _ in range(count):
        try:
            if httpx.get(base + path, headers=headers, timeout=5).status_code != 200:
                failed += 1
        except httpx.HTTPError:
            failed += 1
        time.sleep(0.02)
    return failed


def connections() -> dict[str, Any]:
    out: dict[str, Any] = {}
    with temp_home("rqfair") as home:
        env = reelq_env(home, REELQ_MAX_CONNECTIONS="300")
        greedy, other = create_key(env, "greedy"), create_key(env, "other")
        with reelq_server(home, env, workers=0) as (_proc, base):
            port = int(base.rsplit(":", 1)[1])
            silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
            time.sleep(0.5)
            out["idle_flood_healthz_failed"] = f"{probe(base, 80)}/80"
            for sock in silent:
                sock.close()
            time.sleep(0.5)

            auth = {"Authorization": f"Bearer {greedy}"}
            task = httpx.post(f"{base}/v1/vidu/videos", json=GOOD, headers=auth, timeout=10).json()["id"]
            theirs = {"Authorization": f"Bearer {other}"}
            answer = httpx.post(f"{base}/v1/vidu/videos", json=GOOD, headers=theirs, timeout=10)
            their_task = answer.json()["id"]
            streams, refused = [], 0
            request_bytes = (
                f"GET /v1/result/{task}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {greedy}\r\n\r\n"
            ).encode()
            for _ in range(300):
                try:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                    sock.sendall(request_bytes)
                    if not sock.recv(64).startswith(b"HTTP/1.1 200"):
                        refused += 1
                    streams.append(sock)
                except OSError:
                    refused += 1
            out["sse_flood_streams_refused"] = f"{refused}/300"
            out["sse_flood_healthz_failed"] = f"{probe(base, 80)}/80"
            failed = probe(base, 40, theirs, f"/v1/result/{their_task}")
            out["sse_flood_other_key_reads_failed"] = f"{failed}/40"
            for sock in streams:
                sock.close()
    return out


def probe_port() -> dict[str, Any]:
    from reelq.dispatch.probes import serve_node_endpoint

    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp())
    server, _ = serve_node_endpoint("127.0.0.1", 0)
    port = server.server_address[1]
    before = threading.active_count()
    stop = threading.Event()
    socks: list[socket.socket] = []
    for _ in range(CONNECTIONS):
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((ATTACKER, 0))  # another loopback address than the prober's
            sock.settimeout(1)
            sock.connect(("127.0.0.1", port))
            sock.setblocking(False)
            socks.append(sock)
        except OSError:
            pass  # not accepted in time (a full listen queue)

    def trickle() -> None:
        while not stop.wait(0.5):
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.send(b"G")

    threading.Thread(target=trickle, daemon=True).start()
    time.sleep(5)
    threads = threading.active_count() - before - 1
    healthz = probe(f"http://127.0.0.1:{port}", 20)
    stop.set()
    for sock in socks:
        sock.close()
    server.shutdown()
    server.server_close()
    return {
        "slowloris_connections_made": len(socks),
        "slowloris_threads_after_5s": threads,
        "slowloris_healthz_failed": f"{healthz}/20",
    }


def metrics_series() -> dict[str, Any]:
    with temp_home("rqfairm") as home:
        env = reelq_env(home)
        with reelq_server(home, env, workers=0) as (_proc, base):

            def series() -> int:
                text = httpx.get(f"{base}/metrics", timeout=10).text
                return sum(1 for line in text.splitlines() if line.startswith("reelq_http_"))

            httpx.get(f"{base}/metrics", timeout=10)
            before = series()
            with httpx.Client(base_url=base, timeout=10) as client:
                for method in METHODS:
                    for path in ROUTES:
                        client.request(method, path)
            return {"metrics_http_series_before": before, "metrics_http_series_after_flood": series()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    args.add_argument("--json", type=Path)
    options = args.parse_args(argv)
    install_signal_cleanup()
    result: dict[str, Any] = {}
    for part in (webhooks, connections, probe_port, metrics_series):
        result.update(part())
        print(json.dumps(result), flush=True)
    if options.json:
        options.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
