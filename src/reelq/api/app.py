"""The API application factory."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
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

    app.add_middleware(BodyLimitMiddleware)
    if settings.root_path:
        app.add_middleware(RootPathMiddleware, root_path=settings.root_path)
    return app


def create_asgi(settings: Settings | None = None, services: Services | None = None) -> ASGIApp:
    """What uvicorn serves: the app behind the status-read fast path (api/fastpath.py).

    The fast path wraps the FastAPI app from outside, so a status read skips FastAPI's
    own per-request layers too, not only the router.
    """
    app = create_app(settings, services)
    return FastStatusReads(app, app.state.services)
