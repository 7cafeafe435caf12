"""The playground (issue 23 §2) in Debian's Chromium through Playwright: a gallery of the key's tasks
with cover posters and what each asked for, paged; a player dialog; the create form built from
GET /v1/models with a seed, image previews and "copy as curl / Python"; the key's usage; keyboard
use; no request to anyone but this server.

REELQ_UPDATE_SCREENSHOT=1 saves docs/playground-desktop.png and docs/playground-mobile.png (else
the screenshots go to the test's temporary directory).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import Server, free_port, reelq_env, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.process, pytest.mark.scaled]

REPO = Path(__file__).resolve().parent.parent
MODELS = (
    '[models.studio-fast]\nengine = "synthetic"\nmax_duration = 4\n\n'
    '[models.studio-pro]\nengine = "synthetic"\n'
)
PROMPTS = [
    "A lighthouse at dusk, waves breaking on the rocks",
    "Paper boats drifting down a rainy street",
    "A fox crossing a snowy field at dawn",
    "Neon signs reflected in puddles, slow dolly forward",
    "A hot-air balloon over terraced rice fields",
    "Time-lapse of clouds rolling over a mountain ridge",
    "A cat watching goldfish in a glass bowl",
    "Lanterns rising over a night market",
    "An old tram climbing a hill in Lisbon",
    "Sunflowers turning toward the morning sun",
    "A chef tossing noodles in a steaming wok",
    "Jellyfish pulsing in deep blue water",
    "A kite over the dunes",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("playground")
    models = home / "models.toml"
    models.write_text(MODELS)
    env = reelq_env(home, REELQ_MODELS=str(models), REELQ_SYNTHETIC_DELAY="1")
    srv = Server(home=home, port=free_port(), env=env)
    srv.new_key("playground")
    srv.start(workers=2)
    yield srv
    srv.stop(signal.SIGKILL)


def _made(server: Server) -> list[str]:
    """Thirteen finished tasks, more than a page: made through the API, waited for."""
    ids = []
    with server.client() as http:
        for n, prompt in enumerate(PROMPTS):
            body = {
                "model": "studio-pro" if n % 3 else "studio-fast",
                "prompt": prompt,
                "duration": 1 + n % 3,
                "resolution": "540p",
                "aspect_ratio": ["16:9", "9:16", "1:1"][n % 3],
            }
            ids.append(http.post("/v1/vidu/videos", json=body).json()["id"])
        for task_id in ids:
            status = http.get(f"/v1/result/{task_id}", params={"wait": 60}).json()["status"]
            while status not in ("completed", "failed"):
                status = http.get(f"/v1/result/{task_id}", params={"wait": 60}).json()["status"]
            assert status == "completed"
    return ids


def test_gallery_player_form_and_code(server: Server, browser: object, tmp_path: Path) -> None:
    ids = _made(server)
    screenshots = REPO / "docs" if os.environ.get("REELQ_UPDATE_SCREENSHOT") == "1" else tmp_path
    context = browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    failures: list[str] = []
    page.on("response", lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    console_errors: list[str] = []
    page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)

    page.goto(server.base_url + "/")
    page.get_by_label("Your API key").fill(server.keys[0])
    page.get_by_label("Your API key").press("Enter")

    # The gallery: a page of 12 cards, newest first, each saying what was asked, with a cover poster.
    cards = page.locator("li.task")
    cards.first.wait_for()
    page.wait_for_function("() => document.querySelectorAll('li.task').length === 12")
    newest = page.locator(f'li.task[data-id="{ids[-1]}"]')
    assert newest.locator(".task-prompt").inner_text() == PROMPTS[-1]
    # 13th: studio-fast (n=12: 12 % 3 == 0), 1 s, 540p 16:9, 150/s x 1 s x 0.75 = 112 tokens.
    assert newest.locator(".task-meta").inner_text() == "studio-fast · 1 s · 540p 16:9 · 112 tokens"
    assert newest.locator(".task-status").inner_text() == "completed"
    page.wait_for_function(
        "() => [...document.querySelectorAll('li.task img.cover')]"
        ".every(img => !img.hidden && img.complete && img.naturalWidth > 0)"
    )
    assert "13 videos" in page.locator("#account").inner_text()
    # Paging: the oldest is on page 2, and back.
    assert page.locator(f'li.task[data-id="{ids[0]}"]').count() == 0
    page.get_by_role("button", name="Older").click()
    page.locator(f'li.task[data-id="{ids[0]}"]').wait_for()
    assert cards.count() == 1 and page.get_by_role("button", name="Older").is_disabled()
    page.get_by_role("button", name="Newer").click()
    newest.wait_for()

    # The player: a card's Play opens it, the video plays, Escape closes it and focus returns.
    play = newest.get_by_role("button", name=f"Play “{PROMPTS[-1]}”")
    play.focus()
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => { const v = document.querySelector('#player-video'); "
        "return document.querySelector('#player').open && v.readyState >= 1 && v.duration > 0; }"
    )
    assert page.locator("#player-title").inner_text() == PROMPTS[-1]
    page.keyboard.press("Escape")
    page.wait_for_function("() => !document.querySelector('#player').open")
    assert page.evaluate("() => document.activeElement.classList.contains('play')")

    # The form follows GET /v1/models: this server's models, each one's longest duration.
    assert page.get_by_label("Model").locator("option").all_inner_texts() == ["studio-fast", "studio-pro"]
    page.get_by_label("Model").select_option("studio-fast")
    assert page.get_by_label("Duration (seconds)").get_attribute("max") == "4"
    assert "up to 4 s" in page.locator("#model-help").inner_text()
    page.get_by_label("Model").select_option("studio-pro")
    assert page.get_by_label("Duration (seconds)").get_attribute("max") == "16"

    # Seed, an image preview, and the request as curl and Python (the key never shown).
    page.get_by_label("Prompt").fill("A red kite it's windy")
    page.get_by_label("Duration (seconds)").fill("2")
    page.get_by_label("Resolution").select_option("540p")
    page.get_by_label("Seed (optional)").fill("42")
    image = tmp_path / "first.png"
    Image.new("RGB", (320, 180), (200, 60, 30)).save(image)
    page.locator("#first-file").set_input_files(str(image))
    page.wait_for_function(
        "() => { const i = document.querySelector('#first-preview'); "
        "return !i.hidden && i.complete && i.naturalWidth === 320; }"
    )
    page.get_by_text("Copy as curl / Python").click()
    curl = page.locator("#curl-code").inner_text()
    assert f"curl -s {server.base_url}/v1/vidu/videos" in curl
    assert '"seed":42' in curl and '"model":"studio-pro"' in curl and "it'\"'\"'s windy" in curl
    assert "$REELQ_API_KEY" in curl and "<first.png as base64>" in curl
    python = page.locator("#python-code").inner_text()
    assert "seed=42," in python and 'model="studio-pro",' in python
    assert 'os.environ["REELQ_API_KEY"]' in python
    assert server.keys[0] not in curl + python
    page.locator("#first-file").set_input_files([])
    page.get_by_role("button", name="Create video").click()
    page.get_by_text("Created video_").wait_for()
    created = page.locator("li.task").first
    created_id = created.get_attribute("data-id")
    page.wait_for_selector(f'li.task[data-id="{created_id}"][data-status="completed"]', timeout=60_000)
    page.wait_for_function(
        "id => { const img = document.querySelector(`li.task[data-id='${id}'] img.cover`); "
        "return img && !img.hidden && img.complete && img.naturalWidth > 0; }",
        arg=created_id,
    )
    assert created.locator(".task-meta").inner_text() == "studio-pro · 2 s · 540p 16:9 · 450 tokens · seed 42"
    with server.client() as http:
        listed = http.get("/v1/vidu/videos", params={"limit": 1}).json()["data"][0]
    assert (listed["id"], listed["seed"], listed["prompt"]) == (created_id, 42, "A red kite it's windy")
    page.evaluate("() => window.scrollTo(0, 0)")
    page.screenshot(path=str(screenshots / "playground-desktop.png"))

    # A phone's width: one column, the same page.
    page.set_viewport_size({"width": 390, "height": 844})
    wide = page.evaluate(
        "() => [...document.querySelectorAll('*')].filter(e => e.getBoundingClientRect().right > 391)"
        ".map(e => e.tagName + '#' + e.id + '.' + e.className).slice(0, 5)"
    )
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390, wide
    page.get_by_text("Copy as curl / Python").click()  # folded again
    page.evaluate("() => document.getElementById('tasks-heading').scrollIntoView()")
    page.screenshot(path=str(screenshots / "playground-mobile.png"))
    for name in ("playground-desktop.png", "playground-mobile.png"):
        assert (screenshots / name).stat().st_size > 20_000  # a real page, not a blank one

    # Nothing but this server was asked for anything (blob: URLs are the preview, in the browser).
    s3 = server.env.get("AWS_ENDPOINT_URL") or server.base_url
    origins = (server.base_url, f"blob:{server.base_url}/", s3)
    assert all(url.startswith(origins) for url in requests), requests
    assert not failures, failures
    assert not console_errors, console_errors
    context.close()


def test_the_page_still_has_a_strict_policy(server: Server) -> None:
    page = httpx.get(f"{server.base_url}/", timeout=60)
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert "img-src 'self' data: blob:" in csp  # covers from this server, previews from the browser
    assert "<script>" not in page.text and "style=" not in page.text


def test_the_page_shows_the_keys_balance(server: Server, browser: object) -> None:
    """A key with a budget (SPEC §6) sees what is left of it beside its usage; one without sees none."""
    out = run_cli(server.home, "keys", "create", "--name", "metered", "--budget", "5000", env=server.env)
    metered = out.stdout.strip().splitlines()[-1]
    context = browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page = context.new_page()
    page.goto(server.base_url + "/")
    page.get_by_label("Your API key").fill(metered)
    page.get_by_label("Your API key").press("Enter")
    page.wait_for_function("() => document.getElementById('account').textContent.includes('tokens left')")
    assert page.locator("#account").inner_text() == "0 videos · 0 tokens used · 5000 of 5000 tokens left"
    # The unmetered key of the gallery test: usage, no balance.
    page.get_by_label("Your API key").fill(server.keys[0])
    page.get_by_label("Your API key").press("Enter")
    page.wait_for_function(
        "() => { const t = document.getElementById('account').textContent;"
        " return t.includes('videos') && !t.includes('tokens left'); }"
    )
    context.close()
