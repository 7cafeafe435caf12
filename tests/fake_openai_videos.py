"""A local stand-in for an OpenAI-Videos-shaped open-model server (SGLang Diffusion, vLLM-Omni), for
tests and benchmarks: the one place a fake is right, a third party.

Written from SGLang Diffusion's published request/response models
(python/sglang/multimodal_gen/runtime/entrypoints/openai/{video_api,protocol}.py) and OpenAI's Videos
API reference, which vLLM-Omni follows:
- `POST /v1/videos`: JSON `{prompt, model, seconds (int or numeric string), size "WxH", seed}`, or
  multipart form with the same fields and an `input_reference` file (multipart without the file is a
  400, as SGLang has it). Answers the `video` object: `{id, object: "video", model, status: "queued",
  progress: 0, created_at, size, seconds (a string), quality}`.
- `GET /v1/videos/{id}`: the object, `status` queued -> in_progress -> completed | failed, with
  `error: {"message": ...}` when failed; 404 `{"detail": "Video not found"}` for an unknown id.
- `GET /v1/videos/{id}/content`: the MP4 (404 while in progress).
- `DELETE /v1/videos/{id}`: drops the job (SGLang does not abort it), answers it with status "deleted".
- Jobs live in memory: `restart()` forgets them all, as a restarted server does.

Knobs: `delay` (seconds to completion), `require_key` (the bearer key, or None: no auth, as SGLang
runs by default), `busy_creates` (the next N creates answer 429), prompt word "explode" fails the job.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass
class Job:
    id: str
    body: dict[str, Any]
    created: float
    reference: bytes | None = None
    deleted: bool = False
    reads: int = field(default=0)


class FakeOpenAIVideos:
    def __init__(self, video: bytes, delay: float = 1.0, require_key: str | None = None) -> None:
        self.video = video
        self.delay = delay
        self.require_key = require_key
        self.jobs: dict[str, Job] = {}
        self.creates: list[Job] = []  # every accepted create, forgotten or not
        self.busy_creates = 0
        # `GET /v1/models` (vLLM-Omni's OpenAI list) answers these ids; None: no such route (SGLang).
        self.models: list[str] | None = None
        self.lock = threading.Lock()
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeOpenAIVideos:
        app = Starlette(
            routes=[
                Route("/v1/videos", self._create, methods=["POST"]),
                Route("/v1/videos/{id}", self._retrieve, methods=["GET"]),
                Route("/v1/videos/{id}", self._delete, methods=["DELETE"]),
                Route("/v1/videos/{id}/content", self._content, methods=["GET"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True, name="fake-openai-videos")
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake OpenAI videos server did not start")
            time.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def restart(self) -> None:
        """What a restart of an in-memory job store does: every job is forgotten."""
        with self.lock:
            self.jobs.clear()

    # ---- the API --------------------------------------------------------------------------------
    def _refused(self, request: Request) -> Response | None:
        if self.require_key is None:
            return None
        if request.headers.get("authorization") != f"Bearer {self.require_key}":
            return JSONResponse({"detail": "Unauthorized"}, status_code=401)
        return None

    async def _create(self, request: Request) -> Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        with self.lock:
            if self.busy_creates > 0:
                self.busy_creates -= 1
                return JSONResponse({"detail": "server busy"}, status_code=429)
        reference = None
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            body: dict[str, Any] = {k: v for k, v in form.items() if isinstance(v, str)}
            upload = form.get("input_reference")
            if upload is None or isinstance(upload, str):
                return JSONResponse({"detail": "input_reference file is required"}, status_code=400)
            reference = await upload.read()
        else:
            body = await request.json()
        if not body.get("prompt"):
            return JSONResponse({"detail": "prompt is required"}, status_code=400)
        try:
            seconds = int(body.get("seconds") or 4)  # SGLang's model: an int (pydantic takes "4" too)
        except ValueError:
            return JSONResponse({"detail": "Invalid request body: seconds"}, status_code=400)
        body["seconds"] = seconds
        job = Job(id=uuid.uuid4().hex, body=body, created=time.time(), reference=reference)
        with self.lock:
            self.jobs[job.id] = job
            self.creates.append(job)
        return JSONResponse(self._object(job))

    def _status(self, job: Job) -> tuple[str, int]:
        elapsed = time.time() - job.created
        if elapsed >= self.delay:
            return ("failed", 0) if "explode" in str(job.body.get("prompt")) else ("completed", 100)
        if elapsed < self.delay / 4:
            return "queued", 0
        return "in_progress", int(100 * elapsed / self.delay)

    def _object(self, job: Job) -> dict[str, Any]:
        status, progress = self._status(job)
        obj: dict[str, Any] = {
            "id": job.id,
            "object": "video",
            "model": job.body.get("model") or "sora-2",
            "status": status,
            "progress": progress,
            "created_at": int(job.created),
            "size": job.body.get("size") or "1280x720",
            "seconds": str(job.body["seconds"]),
            "quality": "standard",
        }
        if status == "failed":
            obj["error"] = {"message": "CUDA error: an illegal memory access at /opt/sglang/worker.py:812"}
        return obj

    async def _models(self, request: Request) -> Response:
        if self.models is None:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "vllm-omni"} for m in self.models]
        return JSONResponse({"object": "list", "data": data})

    async def _retrieve(self, request: Request) -> Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        with self.lock:
            job = self.jobs.get(request.path_params["id"])
            if job is not None:
                job.reads += 1
        if job is None:
            return JSONResponse({"detail": "Video not found"}, status_code=404)
        return JSONResponse(self._object(job))

    async def _delete(self, request: Request) -> Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        with self.lock:
            job = self.jobs.pop(request.path_params["id"], None)
        if job is None:
            return JSONResponse({"detail": "Video not found"}, status_code=404)
        job.deleted = True
        return JSONResponse({**self._object(job), "status": "deleted"})

    async def _content(self, request: Request) -> Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        with self.lock:
            job = self.jobs.get(request.path_params["id"])
        if job is None or self._status(job)[0] != "completed":
            return JSONResponse({"detail": "Generation is still in-progress"}, status_code=404)
        return Response(self.video, media_type="video/mp4")
