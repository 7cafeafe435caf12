"""The API reference at `/docs` (Swagger UI) and `/redoc` (ReDoc), from assets the package ships.

FastAPI's own pages load their scripts from a CDN without integrity checks, under no CSP, on this
origin: whoever controls that CDN (or any script it serves) runs as the web page's origin and reads
the key the web page keeps in localStorage (api/web.py). They are also blank on a machine without
internet. Here the scripts come from the `fastapi-offline` package's copies of swagger-ui and redoc,
and every docs response carries `Content-Security-Policy: sandbox allow-scripts`: the browser runs
the page in an opaque origin, so even a script that misbehaves has no access to this origin's
storage, cookies or same-origin requests. The rest of the policy allows only scripts and styles
from here (redoc injects its styles, hence 'unsafe-inline' for styles, which reads nothing).

The sandboxed page fetches `/openapi.json` as a cross-origin request: that document is public and
served with `Access-Control-Allow-Origin: *` (app.py). "Try it out" is switched off: from an
opaque origin it could not send an authenticated request without CORS on the whole API.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from fastapi import APIRouter
from starlette.responses import Response

from reelq.service.errors import NotFound

router = APIRouter(include_in_schema=False)

POLICY = (
    "sandbox allow-scripts; default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src blob:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# name -> (package holding it, media type)
ASSETS = {
    "swagger-ui-bundle.js": ("fastapi_offline", "text/javascript; charset=utf-8"),
    "swagger-ui.css": ("fastapi_offline", "text/css; charset=utf-8"),
    "redoc.standalone.js": ("fastapi_offline", "text/javascript; charset=utf-8"),
    "favicon.png": ("fastapi_offline", "image/png"),
    "docs.js": ("reelq.api", "text/javascript; charset=utf-8"),
}
# Relative links: the same page works under a root path (`/prefix/docs` loads `/prefix/docs/assets/…`).
SWAGGER_PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>reelq API - Swagger UI</title>
<link rel="icon" href="docs/assets/favicon.png">
<link rel="stylesheet" href="docs/assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="docs/assets/swagger-ui-bundle.js"></script>
<script src="docs/assets/docs.js"></script>
</body></html>
"""
REDOC_PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>reelq API - ReDoc</title>
<link rel="icon" href="docs/assets/favicon.png"></head>
<body><redoc spec-url="openapi.json"></redoc>
<script src="docs/assets/redoc.standalone.js"></script>
</body></html>
"""


def headers() -> dict[str, str]:
    return {
        "Content-Security-Policy": POLICY,
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
    }


@lru_cache(maxsize=len(ASSETS))
def _asset(name: str) -> bytes:
    package, _media = ASSETS[name]
    return resources.files(package).joinpath("static", name).read_bytes()


@router.api_route("/docs", methods=["GET", "HEAD"])
async def swagger() -> Response:
    return Response(SWAGGER_PAGE, media_type="text/html; charset=utf-8", headers=headers())


@router.api_route("/redoc", methods=["GET", "HEAD"])
async def redoc() -> Response:
    return Response(REDOC_PAGE, media_type="text/html; charset=utf-8", headers=headers())


@router.api_route("/docs/assets/{name}", methods=["GET", "HEAD"])
async def asset(name: str) -> Response:
    if name not in ASSETS:
        raise NotFound("No such file.", code="not_found")
    # Versioned with the package: cached for a day, revalidated after an upgrade at worst a day late.
    extra = {"Cache-Control": "public, max-age=86400"}
    return Response(_asset(name), media_type=ASSETS[name][1], headers={**headers(), **extra})
