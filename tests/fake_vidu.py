"""A local stand-in for the Vidu platform API (platform.vidu.com/docs), for tests and benchmarks.

The one place a fake is right: the platform is a third party. Written from its documented shapes:
`Authorization: Token <key>`; `POST /ent/v2/{text2video,img2video,start-end2video}` answers
`{task_id, state: "created", credits, ...}`; `GET /ent/v2/tasks/{id}/creations` answers
`{id, state, err_code, credits, creations: [{id, url, cover_url}]}`; `POST /ent/v2/tasks/{id}/cancel`;
errors as `{"reason": <err code>, "message": ...}` with the documented HTTP codes; state-change
callbacks POSTed to `callback_url`, signed as documented (engines/relay/signature.py).

Behaviour by prompt word: "policyfail" fails with CreationPolicyViolation, "badrequest" is refused at
create (400 FieldInvalid), "lose" makes the task vanish (404), "elsewhere" serves the video from
`localhost` instead of this server's own address. Knobs: `delay` (seconds to success), `burst_429`
(the next N requests answer 429 with `retry_after`), `fail_5xx` (the next N creates answer 500).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from reelq.engines.relay.signature import signed_callback_headers
from reelq.media import encode_frames

ROUTES = ("text2video", "img2video", "start-end2video")


def make_mp4(path: Path, seconds: float = 1.0, width: int = 320, height: int = 180, fps: int = 24) -> bytes:
    frames = (np.full((height, width, 3), (i * 7) % 255, dtype=np.uint8) for i in range(int(seconds * fps)))
    encode_frames(frames, path, width, height, fps)
    return path.read_bytes()


@dataclass
class FakeTask:
    id: str
    route: str
    body: dict[str, Any]
    created: float
    state: str = "created"
    err_code: str = ""
    credits: int = 10
    sent_states: set[str] = field(default_factory=set)
    completed_at: float | None = None


class FakeVidu:
    def __init__(self, key: str, video: bytes, delay: float = 2.0, port: int = 0) -> None:
        self.key = key
        self.video = video
        self.delay = delay
        self.tasks: dict[str, FakeTask] = {}
        self.create_calls: list[dict[str, Any]] = []  # every create request that reached us
        self.query_times: list[tuple[float, int]] = []  # (when, HTTP status) of each status read
        self.callbacks: list[tuple[str, str, int]] = []  # (task id, state, our answer's status)
        self.burst_429 = 0
        self.retry_after = 2
        self.fail_5xx = 0
        self.lock = threading.Lock()
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeVidu:
        app = Starlette(
            routes=[
                *(Route(f"/ent/v2/{name}", self._create, methods=["POST"]) for name in ROUTES),
                Route("/ent/v2/tasks/{id}/creations", self._query, methods=["GET"]),
                Route("/ent/v2/tasks/{id}/cancel", self._cancel, methods=["POST"]),
                Route("/files/{id}.mp4", self._file, methods=["GET"]),
            ],
            lifespan=self._lifespan,
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True, name="fake-vidu")
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake Vidu did not start")
            time.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        ticker = asyncio.get_running_loop().create_task(self._ticker())
        yield
        ticker.cancel()

    # ---- the platform ---------------------------------------------------------------------------
    def _auth(self, request: Request) -> Response | None:
        if request.headers.get("authorization") != f"Token {self.key}":
            return JSONResponse({"reason": "Unauthorized", "message": "unauthorized"}, 401)
        return None

    def _throttled(self) -> Response | None:
        with self.lock:
            if self.burst_429 > 0:
                self.burst_429 -= 1
                return JSONResponse(
                    {"reason": "TooManyRequests", "message": "too many requests"},
                    429,
                    headers={"Retry-After": str(self.retry_after)},
                )
        return None

    async def _create(self, request: Request) -> Response:
        refused = self._auth(request) or self._throttled()
        if refused is not None:
            return refused
        body = await request.json()
        route = request.url.path.rsplit("/", 1)[-1]
        with self.lock:
            self.create_calls.append({"route": route, **body})
            if self.fail_5xx > 0:
                self.fail_5xx -= 1
                return JSONResponse({"reason": "InternalServiceFailure", "message": "boom"}, 500)
        if not body.get("model") or not body.get("prompt"):
            return JSONResponse({"reason": "FieldLacking", "message": "field is missing: model"}, 400)
        expected = {"text2video": 0, "img2video": 1, "start-end2video": 2}[route]
        if len(body.get("images") or []) != expected:
            return JSONResponse({"reason": "FieldItemCountOutOfRange", "message": "images"}, 400)
        if "badrequest" in body["prompt"]:
            return JSONResponse({"reason": "FieldInvalid", "message": "invalid field: duration"}, 400)
        task = FakeTask(id=str(uuid.uuid4().int)[:18], route=route, body=body, created=time.time())
        with self.lock:
            self.tasks[task.id] = task
        return JSONResponse(
            {
                "task_id": task.id,
                "state": "created",
                "model": body["model"],
                "prompt": body["prompt"],
                "duration": body.get("duration", 5),
                "credits": task.credits,
                "created_at": "2026-11-27T10:00:00Z",
            }
        )

    def _answer(self, task: FakeTask) -> dict[str, Any]:
        creations = []
        if task.state == "success":
            host = "localhost" if "elsewhere" in task.body["prompt"] else "127.0.0.1"
            creations = [
                {
                    "id": f"c{task.id}",
                    "url": f"http://{host}:{self.port}/files/{task.id}.mp4?token=short-lived",
                    "cover_url": "",
                }
            ]
        return {
            "id": task.id,
            "state": task.state,
            "err_code": task.err_code,
            "credits": task.credits,
            "payload": task.body.get("payload", ""),
            "creations": creations,
        }

    async def _query(self, request: Request) -> Response:
        refused = self._auth(request) or self._throttled()
        if refused is not None:
            with self.lock:
                self.query_times.append((time.time(), refused.status_code))
            return refused
        task = self.tasks.get(request.path_params["id"])
        if task is None or "lose" in task.body["prompt"]:
            with self.lock:
                self.query_times.append((time.time(), 404))
            return JSONResponse({"reason": "TaskNotFound", "message": "task not found"}, 404)
        with self.lock:
            self.query_times.append((time.time(), 200))
        return JSONResponse(self._answer(task))

    async def _cancel(self, request: Request) -> Response:
        refused = self._auth(request)
        if refused is not None:
            return refused
        task = self.tasks.get(request.path_params["id"])
        if task is None:
            return JSONResponse({"reason": "TaskNotFound", "message": "task not found"}, 404)
        if task.state not in ("success", "failed"):
            task.state, task.err_code = "failed", "UserCancelled"
        return JSONResponse({})

    async def _file(self, request: Request) -> Response:
        if request.path_params["id"] not in self.tasks:
            return Response(status_code=404)
        return Response(self.video, media_type="video/mp4")

    # ---- time passes ----------------------------------------------------------------------------
    async def _ticker(self) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            while True:
                await asyncio.sleep(0.05)
                now = time.time()
                for task in list(self.tasks.values()):
                    if task.state in ("success", "failed"):
                        continue
                    age = now - task.created
                    if age >= self.delay:
                        if "policyfail" in task.body["prompt"]:
                            task.state, task.err_code, task.credits = "failed", "CreationPolicyViolation", 0
                        else:
                            task.state = "success"
                        task.completed_at = now
                    elif age >= self.delay / 2:
                        task.state = "processing"
                    elif age >= 0.2:
                        task.state = "queueing"
                    url = task.body.get("callback_url")
                    # Each state change is called back once (queueing aside, as the platform lists it).
                    fresh = task.state != "queueing" and task.state not in task.sent_states
                    if url and fresh:
                        task.sent_states.add(task.state)
                        asyncio.get_running_loop().create_task(self._callback(client, task, url))

    async def _callback(self, client: httpx.AsyncClient, task: FakeTask, url: str) -> None:
        parts = httpx.URL(url)
        date = email.utils.formatdate(usegmt=True)
        headers = signed_callback_headers(self.key, parts.path, parts.query.decode(), date, str(uuid.uuid4()))
        try:
            response = await client.post(url, json=self._answer(task), headers=headers)
            status = response.status_code
        except httpx.HTTPError:
            status = 0
        with self.lock:
            self.callbacks.append((task.id, task.state, status))
