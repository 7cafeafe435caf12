"""The yardsticks: bare Starlette routes doing the least work each reelq route must do.

    python benchmarks/baseline_app.py --port 8001 --body task.json [--db baseline.db | --pg URL]

- `GET /v1/result/{id}` answers a fixed task object, serialised with orjson per request.
- `POST /v1/vidu/videos` (with `--db`) parses the JSON body, inserts one row into a SQLite file
  (WAL, synchronous=NORMAL, as reelq's store) inline on the event loop, and answers the task object.
  With `--pg` instead, the row goes to PostgreSQL (table `baseline_tasks`) over one autocommit
  psycopg connection, inline too: one round trip a create, the least a PostgreSQL create costs.

Served by uvicorn with the settings `reelq serve` uses (the stdlib asyncio loop, httptools; one
process; access log off), so that the only difference measured is what reelq does per request:
auth, rate limits, validation, quotas, the store, waking the workers, rendering the task.
"""

from __future__ import annotations

import argparse
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS {table} (
    id TEXT PRIMARY KEY, model TEXT NOT NULL, prompt TEXT NOT NULL, duration INTEGER NOT NULL,
    aspect_ratio TEXT NOT NULL, resolution TEXT NOT NULL, status TEXT NOT NULL, created_at REAL NOT NULL
)
"""
COLUMNS = ("id", "model", "prompt", "duration", "aspect_ratio", "resolution", "status", "created_at")


def make_app(task: dict[str, Any], db: Path | None = None, pg: str | None = None) -> Starlette:
    async def result(request: Request) -> Response:
        # Serialised per request, as reelq does, rather than answering cached bytes.
        return Response(orjson.dumps(task), media_type="application/json")

    routes = [Route("/v1/result/{task_id}", result)]
    if db is not None or pg is not None:
        if pg is not None:
            import psycopg

            conn: Any = psycopg.connect(pg, autocommit=True)
            table, placeholders = "baseline_tasks", ", ".join(f"%({c})s" for c in COLUMNS)
        else:
            conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            table, placeholders = "tasks", ", ".join(f":{c}" for c in COLUMNS)
        conn.execute(CREATE_TABLE.format(table=table))
        insert = f"INSERT INTO {table} VALUES ({placeholders})"

        async def create(request: Request) -> Response:
            body = orjson.loads(await request.body())
            row = {
                "id": f"video_{uuid.uuid4()}",
                "model": body["model"],
                "prompt": body["prompt"],
                "duration": body.get("duration", 5),
                "aspect_ratio": body.get("aspect_ratio", "16:9"),
                "resolution": body.get("resolution", "720p"),
                "status": "queued",
                "created_at": time.time(),
            }
            conn.execute(insert, row)
            answer = {"id": row["id"], "object": "Video", "created": int(row["created_at"])}
            answer |= {"model": row["model"], "status": "queued", "video_url": None, "totalTokens": None}
            return Response(orjson.dumps(answer), media_type="application/json")

        routes.append(Route("/v1/vidu/videos", create, methods=["POST"]))
    return Starlette(routes=routes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", type=Path, required=True, help="JSON file with the task object to answer")
    parser.add_argument("--db", type=Path, help="SQLite file for the create route (omitted: no create route)")
    parser.add_argument("--pg", help="PostgreSQL URL (libpq) for the create route instead of --db")
    args = parser.parse_args()
    task = orjson.loads(args.body.read_bytes())
    # Mirrors reelq.cli.serve's uvicorn.Config; keep the two in step.
    config = uvicorn.Config(
        make_app(task, args.db, args.pg),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        proxy_headers=True,
        timeout_graceful_shutdown=5,
        loop="asyncio",
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
