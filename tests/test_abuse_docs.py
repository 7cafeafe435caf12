"""The API reference pages cannot reach the web page's key, work offline, and describe every surface
(issue 19 item 6).

In process through `create_asgi`. The browser half (Swagger UI and ReDoc really render under their
policy, in an opaque origin) is in test_abuse_docs_browser.py.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute
from openapi_spec_validator import validate

from reelq.api import create_asgi
from reelq.config import load_settings

pytestmark = [pytest.mark.service, pytest.mark.anyio]

PAGES = ("/docs", "/redoc")
# Served, but not API operations: the web page, these docs, the document itself.
NOT_OPERATIONS = re.compile(r"^/(|static/\{name\}|docs|redoc|docs/assets/\{name\}|openapi\.json)$")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_asgi(load_settings(home=tmp_path / "home"))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://reelq.test") as http:
        http.app = app.app  # type: ignore[attr-defined]
        yield http
    app.app.state.services.close()  # type: ignore[attr-defined]


def directives(policy: str) -> dict[str, list[str]]:
    parsed = {}
    for part in policy.split(";"):
        words = part.split()
        if words:
            parsed[words[0]] = words[1:]
    return parsed


@pytest.mark.parametrize("page", PAGES)
async def test_docs_pages_run_sandboxed_in_an_opaque_origin(client: httpx.AsyncClient, page: str) -> None:
    answer = await client.get(page)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    policy = directives(answer.headers["content-security-policy"])
    # `sandbox` without allow-same-origin: the page's origin is opaque, so no script on it can read
    # this origin's localStorage (where the web page keeps its key) or send same-origin requests.
    assert policy["sandbox"] == ["allow-scripts"]
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize("page", PAGES)
async def test_docs_pages_load_only_assets_this_server_ships(client: httpx.AsyncClient, page: str) -> None:
    html = (await client.get(page)).text
    assert "http://" not in html and "https://" not in html and "//" not in html.replace("<!doctype", "")
    scripts = re.findall(r"<script\b([^>]*)>", html)
    assert scripts and all('src="' in attrs for attrs in scripts), "an inline script (the CSP refuses it)"
    links = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert links
    for link in links:
        asset = await client.get(httpx.URL(f"http://reelq.test{page}").join(link))
        assert asset.status_code == 200, link
        assert len(asset.content) > 100, link
        assert "sandbox allow-scripts" in asset.headers["content-security-policy"]
        assert asset.headers["x-content-type-options"] == "nosniff"
        kind = asset.headers["content-type"]
        assert kind.split(";")[0] in ("text/javascript", "text/css", "image/png"), (link, kind)
    assert (await client.get("/docs/assets/../app.py")).status_code == 404
    assert (await client.get("/docs/assets/nope.js")).status_code == 404


async def test_the_openapi_document_describes_every_surface(client: httpx.AsyncClient) -> None:
    answer = await client.get("/openapi.json")
    assert answer.status_code == 200
    # Fetched by the sandboxed docs pages, whose origin is opaque: a cross-origin read of a public file.
    assert answer.headers["access-control-allow-origin"] == "*"
    document = answer.json()
    validate(document)
    described = {(path, method) for path, ops in document["paths"].items() for method in ops}
    served = set()
    stack = list(client.app.router.routes)  # type: ignore[attr-defined]
    while stack:
        route = stack.pop()
        inner = getattr(route, "original_router", None)
        if inner is not None:
            stack.extend(inner.routes)
        elif isinstance(route, APIRoute) and not NOT_OPERATIONS.match(route.path):
            served |= {(route.path, method.lower()) for method in route.methods}
    assert served - described == set(), "served but not in /openapi.json"
    surfaces = ("/v1/videos", "/v1/videos/{video_id}", "/v1/videos/{video_id}/content", "/ent/v2/text2video")
    for path in surfaces:
        assert path in document["paths"], path
    create = document["paths"]["/v1/videos"]["post"]
    assert create["security"] == [{"bearerAuth": []}]
    error = create["responses"]["400"]["content"]["application/json"]["schema"]
    assert "type" in error["properties"]["error"]["properties"]  # OpenAI's envelope, not §4's
    platform = document["paths"]["/ent/v2/img2video"]["post"]
    assert platform["security"] == [{"tokenAuth": []}]
    assert "reason" in platform["responses"]["400"]["content"]["application/json"]["schema"]["properties"]
    body = platform["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["images"]["minItems"] == 1


async def test_the_docs_pages_work_under_a_root_path(tmp_path: Path) -> None:
    app = create_asgi(load_settings(home=tmp_path / "home", root_path="/gateway"))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://reelq.test") as http:
        html = (await http.get("/gateway/docs")).text
        for link in re.findall(r'(?:src|href)="([^"]+)"', html):
            url = httpx.URL("http://reelq.test/gateway/docs").join(link)
            assert url.path.startswith("/gateway/"), url
            assert (await http.get(url)).status_code == 200, url
        assert (await http.get("/gateway/openapi.json")).status_code == 200
    app.app.state.services.close()  # type: ignore[attr-defined]
