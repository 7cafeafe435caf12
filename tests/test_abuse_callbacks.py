"""`POST /callbacks/vidu/{id}` under abuse (issue 19, items 1 and 12): anyone can post there, so
nothing is read before it is worth reading, a valid callback cannot be replayed, forgeries cost one
log line per interval, and a Date the clock cannot hold is a 403, not a 500.

Requests go straight to the real ASGI app (both transports) with a `receive` we control
(tests/test_abuse_bodies.py's Exchange), over a real SQLite store holding a relayed task.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from reelq.api import create_app, create_asgi
from reelq.api.app import build_services
from reelq.config import load_settings
from reelq.database import NewTask
from reelq.engines.relay import signature
from reelq.service.relay import MAX_CALLBACK_BODY, SeenSignatures
from tests.test_abuse_bodies import Exchange, send_request

pytestmark = [pytest.mark.service, pytest.mark.anyio]

KEY_ENV = "ABUSE_RELAY_VIDU_KEY"
VIDU_KEY = "vidu-secret-for-callbacks"
PUBLIC = "http://relay.example"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def models(path: Path, callbacks: bool = True) -> Path:
    path.write_text(
        "[models.viduq3-pro]\n"
        'engine = "relay"\n'
        'upstream = "vidu"\n'
        'base_url = "http://127.0.0.1:9"\n'
        f'api_key_env = "{KEY_ENV}"\n'
        f"callbacks = {'true' if callbacks else 'false'}\n"
        "\n[models.viduq3-turbo]\n"
        'engine = "synthetic"\n'
    )
    return path


@pytest.fixture
def relay_apps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., dict[str, Any]]]:
    import os

    for name in list(os.environ):
        if name.startswith("REELQ_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv(KEY_ENV, VIDU_KEY)
    made: list[Any] = []

    def build(public: bool = True, callbacks: bool = True) -> dict[str, Any]:
        home = tmp_path / f"home{len(made)}"
        home.mkdir()
        settings = load_settings(
            home=home,
            models_file=models(home / "models.toml", callbacks),
            public_base_url=PUBLIC if public else None,
        )
        fast, routed = build_services(settings), build_services(settings)
        made.extend([fast, routed])
        store = fast.store
        key_id = store.key_id_for(store.create_key("k")[1])
        assert key_id is not None
        new = NewTask(
            model="viduq3-pro", prompt="relayed", duration=1, aspect_ratio="16:9", resolution="540p"
        )
        row, _ = store.create_task(key_id, new)
        return {"fast": create_asgi(settings, fast), "routed": create_app(settings, routed), "task": row.id}

    yield build
    for services in made:
        services.close()


def signed(task_id: str, nonce: str, date: str | None = None, secret: str = VIDU_KEY) -> dict[str, str]:
    date = date or email.utils.formatdate(usegmt=True)
    return signature.signed_callback_headers(secret, f"/callbacks/vidu/{task_id}", "", date, nonce)


def post(body: bytes, headers: dict[str, str], length: bool = True) -> tuple[dict[str, str], Exchange]:
    sent = {**headers, "content-type": "application/json"}
    if length:
        sent["content-length"] = str(len(body))
    return sent, Exchange([body])


CALLBACK = orjson.dumps({"state": "success"})


@pytest.mark.parametrize("transport", ["fast", "routed"])
@pytest.mark.parametrize("setup", ["no-public-url", "callbacks-off"])
async def test_where_no_relay_asks_for_callbacks_the_route_is_404_and_reads_nothing(
    relay_apps: Callable[..., dict[str, Any]], transport: str, setup: str
) -> None:
    built = relay_apps(public=setup != "no-public-url", callbacks=setup != "callbacks-off")
    task = built["task"]
    headers, exchange = post(CALLBACK, signed(task, "n1"))
    answer = await send_request(built[transport], f"/callbacks/vidu/{task}", headers, exchange)
    assert answer.status == 404, answer.body
    assert answer.asked == 0


@pytest.mark.parametrize("transport", ["fast", "routed"])
async def test_a_forged_callback_is_refused_from_its_headers_alone(
    relay_apps: Callable[..., dict[str, Any]], transport: str
) -> None:
    built = relay_apps()
    task = built["task"]
    for headers in (signed(task, "n1", secret="not-the-key"), {}):
        sent, exchange = post(b"x" * 60_000, headers)
        answer = await send_request(built[transport], f"/callbacks/vidu/{task}", sent, exchange)
        assert answer.status == 403, answer.body
        assert orjson.loads(answer.body)["error"]["code"] == "invalid_signature"
        assert answer.asked == 0


@pytest.mark.parametrize("transport", ["fast", "routed"])
async def test_callback_bodies_are_capped_at_64_kib(
    relay_apps: Callable[..., dict[str, Any]], transport: str
) -> None:
    built = relay_apps()
    task, app = built["task"], built[transport]
    big = b'{"state": "success", "pad": "' + b"x" * MAX_CALLBACK_BODY + b'"}'
    # Announced: refused before anything else, unread.
    sent, exchange = post(big, signed(task, "n1"))
    answer = await send_request(app, f"/callbacks/vidu/{task}", sent, exchange)
    assert answer.status == 413 and answer.asked == 0
    # Not announced (chunked), validly signed: refused once it passes the cap.
    sent, _ = post(big, signed(task, "n2"), length=False)
    chunks = [big[i : i + 16384] for i in range(0, len(big), 16384)]
    answer = await send_request(app, f"/callbacks/vidu/{task}", sent, Exchange(chunks))
    assert answer.status == 413, answer.body
    assert answer.asked <= MAX_CALLBACK_BODY // 16384 + 1


@pytest.mark.parametrize("transport", ["fast", "routed"])
async def test_a_valid_callback_cannot_be_replayed(
    relay_apps: Callable[..., dict[str, Any]], transport: str
) -> None:
    built = relay_apps()
    task, app = built["task"], built[transport]
    headers = signed(task, "once")
    sent, exchange = post(CALLBACK, headers)
    first = await send_request(app, f"/callbacks/vidu/{task}", sent, exchange)
    assert first.status == 200, first.body
    assert orjson.loads(first.body) == {"status": "accepted"}
    sent, exchange = post(CALLBACK, headers)
    replay = await send_request(app, f"/callbacks/vidu/{task}", sent, exchange)
    assert replay.status == 403, replay.body
    assert "replayed" in orjson.loads(replay.body)["error"]["message"]
    assert replay.asked == 0
    # A new nonce (a new callback from the platform) is accepted.
    sent, exchange = post(CALLBACK, signed(task, "twice"))
    assert (await send_request(app, f"/callbacks/vidu/{task}", sent, exchange)).status == 200


@pytest.mark.parametrize("transport", ["fast", "routed"])
async def test_a_date_with_a_huge_year_is_a_403_not_a_500(
    relay_apps: Callable[..., dict[str, Any]], transport: str
) -> None:
    built = relay_apps()
    task = built["task"]
    for date in ("Mon, 01 Jan 9999999999999999999999 00:00:00 GMT", "Mon, 01 Jan 99999 00:00:00 GMT"):
        sent, exchange = post(CALLBACK, signed(task, "n1", date=date))
        answer = await send_request(built[transport], f"/callbacks/vidu/{task}", sent, exchange)
        assert answer.status == 403, (date, answer.body)
        assert "not an HTTP date" in orjson.loads(answer.body)["error"]["message"]


async def test_forged_callbacks_are_logged_once_per_interval(
    relay_apps: Callable[..., dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    built = relay_apps()
    task, app = built["task"], built["routed"]
    caplog.set_level(logging.WARNING, logger="reelq.relay")
    for n in range(25):
        sent, exchange = post(CALLBACK, signed(task, f"n{n}", secret="forged"))
        assert (await send_request(app, f"/callbacks/vidu/{task}", sent, exchange)).status == 403
    refusals = [r for r in caplog.records if "callback refused" in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in refusals]


def test_seen_signatures_are_bounded_and_expire() -> None:
    seen = SeenSignatures(limit=3)
    now = time.time()
    assert seen.first_time("a", now, now) and not seen.first_time("a", now, now)
    for key in "bcde":
        assert seen.first_time(key, now, now)
    assert len(seen._until) == 3  # the oldest forgotten first, memory bounded
    later = now + signature.MAX_CLOCK_SKEW + 1
    assert seen.first_time("e", now, later)  # its window passed: forgotten (the clock check refuses it)
    assert len(seen._until) == 1
