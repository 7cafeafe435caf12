"""The web page at `/`, end to end in real headless Chromium (Debian's `chromium`, driven by Playwright
with `executable_path`; nothing is downloaded): paste a key, submit a real task with an uploaded
first image, watch it complete over server-sent events, play it, cancel and delete another. The
node serving the page is the in-process one (tests/harness.py: the same app, workers and sweeper on
threads, scaled out with REELQ_TEST_SCALED=1): nothing here is about processes. The
run with REELQ_UPDATE_SCREENSHOT=1 saves docs/screenshot.png, which docs/api.md shows (otherwise the
screenshot goes to the test's temporary directory: a test run leaves the checkout as it found it).

./scripts/test installs chromium when it is missing; under CI=true a missing browser fails the test
instead of skipping it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import Server, free_port, reelq_env
from tests.harness import AppServer

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
SCREENSHOT = REPO / "docs" / "screenshot.png"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("web")
    # Renders take a second or two more than the work: there is time to see progress and to cancel.
    env = reelq_env(home, REELQ_SYNTHETIC_DELAY="2", REELQ_POLL_RATE="5")
    srv = AppServer(home=home, port=free_port(), env=env)
    srv.new_key("web")
    srv.start(workers=1)
    yield srv
    srv.stop(signal.SIGKILL)


@pytest.mark.service  # the node in this process; no browser
@pytest.mark.scaled  # scaled out, the CSP must let the videos play from the S3 endpoint
def test_headers_keep_the_key_safe(server: Server) -> None:
    page = httpx.get(f"{server.base_url}/", timeout=60)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    if "AWS_ENDPOINT_URL" in server.env:  # scaled out: the videos play from presigned S3 links
        media_src = next(part for part in csp.split(";") if part.strip().startswith("media-src"))
        assert server.env["AWS_ENDPOINT_URL"] in media_src.split(), csp
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in page.text  # no inline script: the CSP would refuse it
    script = httpx.get(f"{server.base_url}/static/app.js", timeout=60)
    assert script.headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{server.base_url}/static/nope.js", timeout=60).status_code == 404


# The browser (a Chromium process) against the node: SSE from the store's changes, the video from the
# storage's links (presigned S3 scaled out), a cancel and a delete through the store.
@pytest.mark.scaled
def test_submit_watch_play_cancel_delete(server: Server, browser: object, tmp_path: Path) -> None:
    image = tmp_path / "first.png"
    Image.new("RGB", (640, 360), (30, 90, 200)).save(image)
    context = browser.new_context(viewport={"width": 1100, "height": 1300})  # type: ignore[attr-defined]
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    sent: list[tuple[str, bool]] = []  # (url, whether the key went with it)
    page.on("request", lambda request: sent.append((request.url, server.keys[0] in str(request.headers))))
    failures: list[str] = []
    page.on("response", lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    console_errors: list[str] = []
    page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)

    page.goto(server.base_url + "/")
    # Every control has a label (accessible names), and the form is usable from the keyboard.
    for control in ("Your API key", "Prompt", "Model", "Duration (seconds)", "Aspect ratio", "Resolution"):
        assert page.get_by_label(control, exact=True).count() == 1, control
    page.get_by_label("Your API key").fill(server.keys[0])
    page.get_by_label("Your API key").press("Enter")  # submits the key form
    page.get_by_text("No videos yet.").wait_for()

    page.get_by_label("Prompt").fill("A blue tide rolling in, seen from a pier")
    page.get_by_label("Model").select_option("viduq3-turbo")
    page.get_by_label("Duration (seconds)").fill("2")
    page.get_by_label("Resolution").select_option("540p")
    page.locator("#first-file").set_input_files(str(image))
    page.get_by_role("button", name="Create video").click()
    page.get_by_text("Created video_").wait_for()

    task = page.locator("li.task").first
    task_id = task.get_attribute("data-id")
    assert task_id and task_id.startswith("video_")
    # Live status over SSE: it passes through processing with progress, then completes.
    page.wait_for_selector(f'li.task[data-id="{task_id}"][data-status="processing"]', timeout=60_000)
    page.wait_for_selector(f'li.task[data-id="{task_id}"][data-status="completed"]', timeout=120_000)
    # The card opens the video in the player.
    task.get_by_role("button", name="Play").click()
    video = page.locator("#player-video")
    # It plays: the element loads the MP4 and reports its duration, and time moves on.
    page.wait_for_function(
        "id => { const v = document.querySelector('#player-video'); "
        "return v && v.readyState >= 1 && v.duration > 0; }",
        arg=task_id,
        timeout=30_000,
    )
    duration = video.evaluate("v => v.duration")
    assert abs(duration - 2) < 0.1, duration
    video.evaluate("v => { v.muted = true; return v.play(); }")
    page.wait_for_function(
        "id => document.querySelector('#player-video').currentTime > 0.2",
        arg=task_id,
        timeout=30_000,
    )
    download = page.locator(f'li.task[data-id="{task_id}"] a.download')
    assert download.get_attribute("download") == f"{task_id}.mp4"
    video.evaluate("v => { v.pause(); v.currentTime = 1.0; }")
    page.keyboard.press("Escape")  # closes the player
    shot = SCREENSHOT if os.environ.get("REELQ_UPDATE_SCREENSHOT") == "1" else tmp_path / "screenshot.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000  # a real page, not a blank one

    # Another task, cancelled from the page while it waits or renders, then deleted.
    page.get_by_label("Prompt").fill("Never mind this one")
    page.locator("#first-file").set_input_files([])
    page.get_by_role("button", name="Create video").click()
    page.get_by_text("Created video_").last.wait_for()
    second = page.locator("li.task").first
    second_id = second.get_attribute("data-id")
    assert second_id != task_id
    second.get_by_role("button", name="Cancel").click()
    page.wait_for_selector(f'li.task[data-id="{second_id}"][data-status="failed"]', timeout=30_000)
    assert "Cancelled by user." in second.locator(".task-error").inner_text()
    second.get_by_role("button", name="Delete").click()
    page.wait_for_selector(f'li.task[data-id="{second_id}"]', state="detached", timeout=30_000)
    with server.client() as http:
        assert http.get(f"/v1/result/{second_id}").status_code == 404
        assert http.get(f"/v1/result/{task_id}").json()["status"] == "completed"

    # The key never left for anywhere else: every request went to this server, but for the video's
    # own presigned links when the videos are in S3 (those carry no key).
    # (blob: URLs of this origin are the image previews: the browser's own memory, no request out.)
    s3 = server.env.get("AWS_ENDPOINT_URL") or server.base_url
    origins = (server.base_url, f"blob:{server.base_url}/", s3)
    assert requests and all(url.startswith(origins) for url in requests), requests
    assert not [url for url, key_sent in sent if key_sent and not url.startswith(server.base_url)], sent
    assert not failures, failures
    assert not console_errors, console_errors
    context.close()
