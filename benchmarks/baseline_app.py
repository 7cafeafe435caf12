"""The yardstick for status reads: one bare Starlette route that answers a fixed task object with orjson.

    python benchmarks/baseline_app.py --port 8001 --body task.json

Served by uvicorn with the settings `reelq serve` uses (loop and HTTP implementation left on "auto",
so uvloop and httptools when installed; one process; access log off), so that the only difference
measured is what reelq does per request: auth, rate limit, the SQLite reads, rendering the task.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def make_app(task: dict[str, Any]) -> Starlette:
    async def result(request: Request) -> Response:
        # Serialised per request, as reelq does, rather than answering cached bytes.
        return Response(orjson.dumps(task), media_type="application/json")

    return Starlette(routes=[Route("/v1/result/{task_id}", result)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", type=Path, required=True, help="JSON file with the task object to answer")
    args = parser.parse_args()
    task = orjson.loads(args.body.read_bytes())
    # Mirrors reelq.cli.serve's uvicorn.Config; keep the two in step.
    config = uvicorn.Config(
        make_app(task),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        proxy_headers=True,
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
