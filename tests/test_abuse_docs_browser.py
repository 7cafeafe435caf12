"""/docs and /redoc in real headless Chromium: they render from the packaged assets under their
sandboxing CSP, and a script on them cannot read the key the web page stored (issue 19 item 6).

Chromium as in test_web_page.py (Debian's `chromium`, driven by Playwright); the server is a real
`reelq serve` with no workers (nothing renders here). Nothing leaves the machine: a request for any
other host is recorded and refused.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from tests.conftest import Server, free_port, reelq_env

pytestmark = [pytest.mark.process]

STORED_KEY = "vda_the-web-pages-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("docs")
    srv = Server(home=home, port=free_port(), env=reelq_env(home))
    srv.start(workers=0)
    yield srv
    srv.stop(signal.SIGKILL)


@pytest.mark.parametrize(
    ("path", "rendered"),
    [
        # Swagger UI: one block per operation, the OpenAI and platform surfaces among them.
        ("/docs", "#operations-openai-create_video_v1_videos_post"),
        # ReDoc: the operation's heading in its menu.
        ("/redoc", "h2:has-text('Create a video (OpenAI Videos API)')"),
    ],
)
def test_docs_render_offline_and_cannot_read_the_web_pages_key(
    server: Server, browser: object, path: str, rendered: str
) -> None:
    context = browser.new_context()  # type: ignore[attr-defined]
    try:
        outside: list[str] = []

        def route(request_route: object) -> None:
            request = request_route.request  # type: ignore[attr-defined]
            if request.url.startswith(server.base_url):
                request_route.continue_()  # type: ignore[attr-defined]
            else:
                outside.append(request.url)
                request_route.abort()  # type: ignore[attr-defined]

        context.route("**/*", route)
        page = context.new_page()
        refused: list[str] = []
        page.on("console", lambda msg: refused.append(msg.text) if "Content Security" in msg.text else None)
        # The web page keeps its key in this origin's localStorage when asked to remember it.
        page.goto(f"{server.base_url}/")
        page.evaluate(f"localStorage.setItem('reelq.key', '{STORED_KEY}')")
        assert page.evaluate("localStorage.getItem('reelq.key')") == STORED_KEY

        page.goto(f"{server.base_url}{path}")
        page.wait_for_selector(rendered, state="attached", timeout=30_000)
        assert page.evaluate("window.origin") == "null"  # sandboxed: an opaque origin
        seen = page.evaluate(
            """() => {
                try { return localStorage.getItem('reelq.key'); }
                catch (e) { return 'refused: ' + e.name; }
            }"""
        )
        assert seen == "refused: SecurityError"
        cookie = page.evaluate("() => { try { return document.cookie; } catch (e) { return e.name; } }")
        assert cookie == "SecurityError"
        assert outside == [], f"the docs page asked another host: {outside}"
        # The only refusal allowed is ReDoc's "API docs by Redocly" badge, an image on its CDN: the
        # policy working as meant. A refused script, style or connection would be a broken page.
        assert all('"img-src' in message for message in refused), refused
    finally:
        context.close()
