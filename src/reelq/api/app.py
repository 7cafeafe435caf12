"""The API application factory."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import ASGIApp

from reelq import __version__
from reelq.api import files, usage, vidu
from reelq.api.errors import install_error_handlers
from reelq.api.fastpath import FastStatusReads
from reelq.api.middleware import BodyLimitMiddleware, RootPathMiddleware
from reelq.api.services import Services, ServicesDep
from reelq.api.vidu import ERROR_SCHEMA
from reelq.config import Settings, load_settings
from reelq.storage import LocalStorage
from reelq.store import TaskStore, make_engine, migrate
from reelq.store.fastread import SqliteReader

log = logging.getLogger("reelq.api")


def build_services(settings: Settings) -> Services:
    settings.home_dir.mkdir(parents=True, exist_ok=True)
    (settings.videos_dir / ".tmp").mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.sqlalchemy_url)
    migrate(engine)
    sqlite_path = settings.sqlite_path
    return Services(
        settings=settings,
        store=TaskStore(engine),
        storage=LocalStorage(settings.videos_dir, settings.secret_bytes()),
        reader=SqliteReader(sqlite_path) if sqlite_path is not None else None,
    )


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    settings = settings or (services.settings if services else load_settings())
    services = services or build_services(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        services.store.engine.dispose()

    app = FastAPI(
        title="reelq",
        version=__version__,
        summary="Self-hosted, Vidu-compatible asynchronous video generation.",
        lifespan=lifespan,
    )
    app.state.services = services
    install_error_handlers(app)
    app.include_router(vidu.router, tags=["vidu"])
    app.include_router(files.router, tags=["files"])
    app.include_router(usage.router, tags=["usage"])

    @app.get("/healthz", tags=["ops"], summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], summary="Readiness: database and storage reachable")
    async def readyz(services: ServicesDep) -> Response:
        def check() -> str | None:
            try:
                with services.store.engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
            except Exception as exc:
                return f"database unavailable: {type(exc).__name__}"
            if not services.storage.tmp_dir.is_dir():
                return "storage unavailable"
            return None

        problem = await run_in_threadpool(check)
        if problem:
            return Response(
                f'{{"status":"unavailable","reason":"{problem}"}}', 503, media_type="application/json"
            )
        return Response('{"status":"ready"}', media_type="application/json")

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(BodyLimitMiddleware)
    if settings.root_path:
        app.add_middleware(RootPathMiddleware, root_path=settings.root_path)
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, made truthful: errors are 400 in the §4 envelope, never FastAPI's 422."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    error = {
        "description": "Error (SPEC §4 envelope)",
        "content": {"application/json": {"schema": ERROR_SCHEMA}},
    }
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if responses.pop("422", None) is not None or operation.get("parameters"):
                responses.setdefault("400", {**error, "description": "Invalid parameter"})
            if path.startswith("/v1/") and not path.startswith("/v1/files/"):
                responses.setdefault(
                    "401", {**error, "description": "Missing, malformed, unknown or revoked key"}
                )
                responses.setdefault("429", {**error, "description": "Rate limit (see Retry-After)"})
    # The served models are configuration: document the ones this deployment accepts.
    create = schema.get("paths", {}).get("/v1/vidu/videos", {}).get("post", {})
    body = create.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    if "model" in body.get("properties", {}):
        body["properties"]["model"]["enum"] = list(app.state.services.settings.models)
    for name in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(name, None)
    app.openapi_schema = schema
    return schema


def create_asgi(settings: Settings | None = None, services: Services | None = None) -> ASGIApp:
    """What uvicorn serves: the app behind the status-read fast path (api/fastpath.py).

    The fast path wraps the FastAPI app from outside, so a status read skips FastAPI's
    own per-request layers too, not only the router.
    """
    app = create_app(settings, services)
    return FastStatusReads(app, app.state.services)
