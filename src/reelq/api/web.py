"""The web page at `/`: static HTML, JS and CSS from api/static/, no build step.

The page is a client of the Vidu reseller surface like any other (its key pasted by the user, kept
in the browser's sessionStorage, or localStorage when asked to remember it). What keeps that key
safe is served with every file: a Content-Security-Policy allowing nothing but this origin (no
third-party script, style, font, frame or connection; no inline script), no referrer, no framing,
no MIME sniffing. Video links may point elsewhere only where the operator set
REELQ_PUBLIC_BASE_URL, or where the videos are in S3 (presigned links to the bucket's endpoint): that
origin is then allowed as a media source too.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from urllib.parse import urlsplit

from fastapi import APIRouter
from starlette.responses import Response

from reelq.api.deps import ServicesDep
from reelq.service.errors import NotFound

router = APIRouter(include_in_schema=False)

FILES = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "index.html": "text/html; charset=utf-8",
}


@lru_cache(maxsize=len(FILES))
def _read(name: str) -> bytes:
    return resources.files("reelq.api").joinpath("static", name).read_bytes()


def security_headers(public_base_url: str | None, link_origin: str | None = None) -> dict[str, str]:
    media = "'self' blob:"
    if public_base_url:
        parts = urlsplit(public_base_url)
        media += f" {parts.scheme}://{parts.netloc}"
    if link_origin:
        media += f" {link_origin}"
    policy = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        f"media-src {media}; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; "
        "base-uri 'none'"
    )
    return {
        "Content-Security-Policy": policy,
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-cache",
    }


def _file(name: str, services: ServicesDep) -> Response:
    headers = security_headers(services.settings.public_base_url, services.storage.link_origin())
    return Response(_read(name), media_type=FILES[name], headers=headers)


@router.api_route("/", methods=["GET", "HEAD"])
async def index(services: ServicesDep) -> Response:
    return _file("index.html", services)


@router.api_route("/static/{name}", methods=["GET", "HEAD"])
async def static(name: str, services: ServicesDep) -> Response:
    if name not in FILES or name == "index.html":
        raise NotFound("No such file.", code="not_found")
    return _file(name, services)
