"""The API application factory."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import ASGIApp

from reelq import __version__
from reelq.api import (
    admin,
    deliveries,
    docs,
    files,
    metrics,
    models,
    openai,
    relay,
    usage,
    vidu,
    vidu_platform,
    web,
)
from reelq.api.deps import Services, ServicesDep
from reelq.api.errors import install_error_handlers
from reelq.api.fastpath import FastRoutes
from reelq.api.middleware import BodyLimitMiddleware, RootPathMiddleware
from reelq.api.surface_docs import TOKEN_AUTH, TOKEN_SCHEME
from reelq.api.vidu import (
    RETRY_AFTER_HEADER,
    WWW_AUTHENTICATE_HEADER,
    error_response_doc,
)
from reelq.config import Settings, load_settings
from reelq.database import TaskStore, ensure_schema, make_engine
from reelq.database.fastread import CachedReader, PgReader, SqliteReader
from reelq.database.pgnotify import PgChangeListener, listen_conninfo
from reelq.database.quotas import QuotaCounts
from reelq.ratelimit import MemoryRateLimiter, RateLimiter
from reelq.storage import build_storage
from reelq.storage.local import room_problem

log = logging.getLogger("reelq.api")

BEARER = "bearerAuth"
HEALTHZ_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The process answers",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"status": {"type": "string", "enum": ["ok"]}},
                    "required": ["status"],
                }
            }
        },
    }
}
READYZ_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Database and storage reachable",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"status": {"type": "string", "enum": ["ready"]}},
                    "required": ["status"],
                }
            }
        },
    },
    503: {
        "description": "Database or storage unavailable",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "status": {"type": "string", "enum": ["unavailable"]},
                        "reason": {"type": "string"},
                    },
                    "required": ["status", "reason"],
                }
            }
        },
    },
}
_USAGE_TOTALS = {
    "videos": {"type": "integer", "minimum": 0},
    "seconds": {"type": "number", "minimum": 0},
    "totalTokens": {"type": "integer", "minimum": 0},
}
USAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "object": {"type": "string", "enum": ["usage"]},
        "key_id": {"type": "string"},
        "since": {"type": ["string", "null"], "format": "date"},
        "until": {"type": ["string", "null"], "format": "date"},
        **_USAGE_TOTALS,
        "by_model": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": _USAGE_TOTALS,
                "required": list(_USAGE_TOTALS),
            },
        },
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"date": {"type": "string"}, "model": {"type": "string"}, **_USAGE_TOTALS},
                "required": ["date", "model", *_USAGE_TOTALS],
            },
        },
    },
    "required": ["object", "key_id", "since", "until", *_USAGE_TOTALS, "by_model", "data"],
}


def build_services(settings: Settings) -> Services:
    settings.home_dir.mkdir(parents=True, exist_ok=True)
    (settings.videos_dir / ".tmp").mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.sqlalchemy_url)
    ensure_schema(engine)
    sqlite_path = settings.sqlite_path
    limiter: RateLimiter = MemoryRateLimiter()
    counts: QuotaCounts | None = None
    if settings.redis_url:
        from reelq.sharedlimits import RedisLink, RedisRateLimiter, SharedQuotaCounts

        link = RedisLink(settings.redis_url, settings.redis_prefix)
        limiter, counts = RedisRateLimiter(link), SharedQuotaCounts(link)
    store = TaskStore(engine, counts)
    reader: CachedReader | None = None
    if sqlite_path is not None:
        reader = SqliteReader(sqlite_path)
    elif isinstance(store.changes, PgChangeListener):
        # Listen for change notices from the start, so the first long-poll is woken too, and read
        # through the same cache as on SQLite, dropped by those notices (database/fastread.py).
        store.changes.value()
        reader = PgReader(listen_conninfo(engine), store.changes)
    return Services(
        settings=settings,
        store=store,
        storage=build_storage(settings),
        reader=reader,
        limiter=limiter,
    )


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    settings = settings or (services.settings if services else load_settings())
    services = services or build_services(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        services.close()

    app = FastAPI(
        title="reelq",
        version=__version__,
        summary="Self-hosted, Vidu-compatible asynchronous video generation.",
        lifespan=lifespan,
        # FastAPI's pages load CDN scripts on this origin; ours are served from the package (api/docs.py).
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    # No 307 from `/v1/usage/` to `/v1/usage`: Starlette builds that Location from the client's Host
    # header, before authentication. A path that is not a route answers 404 in the §4 envelope.
    app.router.redirect_slashes = False
    app.state.services = services
    install_error_handlers(app)
    app.include_router(vidu.router, tags=["vidu"])
    app.include_router(files.router, tags=["files"])
    app.include_router(usage.router, tags=["usage"])
    app.include_router(models.router, tags=["models"])
    app.include_router(admin.router, tags=["admin"])
    app.include_router(metrics.router, tags=["ops"])
    app.include_router(relay.router, tags=["relay"])
    app.include_router(deliveries.router, tags=["webhooks"])
    # The same tasks through other front doors: OpenAI's Videos API, the Vidu platform's
    # own API, and the web page at `/`.
    app.include_router(openai.router)
    app.include_router(vidu_platform.router)
    app.include_router(web.router)
    app.include_router(docs.router)

    @app.api_route("/openapi.json", methods=["GET", "HEAD"], include_in_schema=False)
    async def openapi_document() -> Response:
        # Public, and fetched cross-origin by the sandboxed /docs and /redoc pages (opaque origin).
        body = orjson.dumps(app.openapi())
        return Response(body, media_type="application/json", headers={"Access-Control-Allow-Origin": "*"})

    @app.get("/healthz", tags=["ops"], summary="Liveness", responses=HEALTHZ_RESPONSES)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["ops"],
        summary="Readiness: database and storage reachable",
        response_class=Response,
        responses=READYZ_RESPONSES,
    )
    async def readyz(services: ServicesDep) -> Response:
        def check() -> str | None:
            problem = services.store.problem()
            # A full disk (or an unreachable bucket) fails every render and every create: not ready,
            # so a balancer sends traffic elsewhere and an operator sees why.
            if problem is None:
                problem = services.storage.problem()
            if problem is None and services.publisher is not None:
                problem = services.publisher.problem()  # creates would queue with nobody told
            if problem is None and services.workers_problem is not None:
                problem = services.workers_problem()  # a GPU node's workers still loading their models
            sqlite_path = services.settings.sqlite_path
            if problem is None and sqlite_path is not None:
                problem = room_problem(sqlite_path.parent, "the database")
            return problem

        problem = await run_in_threadpool(check)
        if problem:
            body = orjson.dumps({"status": "unavailable", "reason": problem})
            return Response(body, 503, media_type="application/json")
        return Response('{"status":"ready"}', media_type="application/json")

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(metrics.RoutedMetrics, stats=services.http_stats)  # innermost: sees the route
    app.add_middleware(BodyLimitMiddleware)
    if settings.root_path:
        app.add_middleware(RootPathMiddleware, root_path=settings.root_path)
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, made truthful.

    Errors are 400 in the §4 envelope (never FastAPI's 422); every authenticated `/v1` operation
    declares the bearer scheme, its 401 (with WWW-Authenticate) and its 429 (with Retry-After);
    GET and HEAD of a download share one route but get distinct operationIds.
    """
    if app.openapi_schema:
        return app.openapi_schema
    with warnings.catch_warnings():
        # GET and HEAD of /v1/files share a route, hence an operationId: suffixed with the method below.
        warnings.filterwarnings("ignore", message="Duplicate Operation ID", category=UserWarning)
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})[BEARER] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key from `reelq keys create`",
    }
    components["securitySchemes"][TOKEN_AUTH] = TOKEN_SCHEME  # the Vidu platform's `Token <key>`
    ids = Counter(op.get("operationId") for ops in schema.get("paths", {}).values() for op in ops.values())
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            if ids[operation.get("operationId")] > 1:
                operation["operationId"] = f"{operation['operationId']}_{method}"
            responses = operation.setdefault("responses", {})
            if responses.pop("422", None) is not None or operation.get("parameters"):
                responses.setdefault("400", error_response_doc("Invalid parameter"))
            if path.startswith("/v1/") and not path.startswith("/v1/files/"):
                operation.setdefault("security", [{BEARER: []}])
                responses.setdefault(
                    "401",
                    error_response_doc(
                        "Missing, malformed, unknown or revoked key",
                        {"WWW-Authenticate": WWW_AUTHENTICATE_HEADER},
                    ),
                )
                responses.setdefault(
                    "429",
                    error_response_doc("Rate limit (see Retry-After)", {"Retry-After": RETRY_AFTER_HEADER}),
                )
            if path.startswith("/v1/admin/"):  # SPEC §6: admin keys only; a key or ledger it names
                responses.setdefault("403", error_response_doc("Not an admin key (`forbidden`)"))
                responses.setdefault("404", error_response_doc("No such key"))
                responses.setdefault("409", error_response_doc("The change conflicts with the key's state"))
    usage_ok = schema.get("paths", {}).get("/v1/usage", {}).get("get", {}).get("responses", {}).get("200", {})
    usage_json = usage_ok.get("content", {}).get("application/json")
    if usage_json is not None and not usage_json.get("schema"):
        usage_json["schema"] = USAGE_SCHEMA
    # The served models are configuration: document the ones this deployment accepts.
    create = schema.get("paths", {}).get("/v1/vidu/videos", {}).get("post", {})
    body = create.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    if "model" in body.get("properties", {}):
        body["properties"]["model"]["enum"] = list(app.state.services.settings.models)
    for name in ("HTTPValidationError", "ValidationError"):
        components.get("schemas", {}).pop(name, None)
    if not components.get("schemas"):
        components.pop("schemas", None)
    app.openapi_schema = schema
    return schema


def create_asgi(settings: Settings | None = None, services: Services | None = None) -> ASGIApp:
    """What uvicorn serves: the app behind the status-read fast path (api/fastpath.py).

    The fast path wraps the FastAPI app from outside, so a status read skips FastAPI's
    own per-request layers too, not only the router.
    """
    app = create_app(settings, services)
    return FastRoutes(app, app.state.services)
