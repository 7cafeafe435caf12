"""Fallback load generator for when wrk cannot be installed: closed-loop HTTP/1.1 keep-alive requests.

    python benchmarks/pyload.py URL [--seconds 10] [--connections 64] [--processes 2] [--header 'K: V']
                                    [--post BODY.json]

Prints one JSON line (requests, rps, p50_ms, p99_ms, errors). Much more CPU per request than wrk, so
it takes a bigger share of the cores from the server; the ratio against the baseline stays meaningful
because both sides are driven by the same tool in the same run, but absolute req/s are lower.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import time
from pathlib import Path
from urllib.parse import urlsplit

try:
    import uvloop
except ImportError:  # plain asyncio is fine, only slower
    uvloop = None


async def _connection(host: str, port: int, request: bytes, deadline: float, out: list[float]) -> int:
    """Send requests back to back on one connection until the deadline; returns the error count."""
    reader, writer = await asyncio.open_connection(host, port)
    errors = 0
    try:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            out.append(time.perf_counter() - start)
            if not head.startswith(b"HTTP/1.1 2"):
                errors += 1
    finally:
        writer.close()
    return errors


async def _drive(
    url: str, headers: list[str], body: bytes | None, seconds: float, connections: int
) -> tuple[list[float], int]:
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    method = "GET" if body is None else "POST"
    if body is not None:
        headers = [*headers, "Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}", *headers, "", ""]
    request = "\r\n".join(lines).encode() + (body or b"")
    deadline = time.perf_counter() + seconds
    latencies: list[float] = []
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    results = await asyncio.gather(
        *(_connection(host, port, request, deadline, latencies) for _ in range(connections)),
        return_exceptions=True,  # a dropped connection counts as an error, not a crash
    )
    errors = sum(r if isinstance(r, int) else 1 for r in results)
    return latencies, errors


def _worker(args: tuple[str, list[str], bytes | None, float, int]) -> tuple[list[float], int]:
    if uvloop is not None:
        uvloop.install()
    return asyncio.run(_drive(*args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--post", help="POST this file's bytes as JSON instead of GET")
    args = parser.parse_args()
    body = Path(args.post).read_bytes() if args.post else None
    share = [max(1, args.connections // args.processes)] * args.processes
    with multiprocessing.Pool(args.processes) as pool:
        parts = pool.map(_worker, [(args.url, args.header, body, args.seconds, n) for n in share])
    latencies = sorted(lat for part, _ in parts for lat in part)
    errors = sum(e for _, e in parts)
    count = len(latencies)

    def pct(q: float) -> float:
        return latencies[min(count - 1, int(count * q))] * 1000 if count else 0.0

    report = {
        "seconds": args.seconds,
        "requests": count,
        "rps": count / args.seconds,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "errors": errors,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
