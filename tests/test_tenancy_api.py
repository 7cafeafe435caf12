"""Selling it (SPEC §6) over HTTP, in process: the admin API and who may call it, budgets (402), the model
allow-list (403), per-key rates, expiry and revocation seen at once by two API processes' worth of
services over one database, off-peak on every surface, usage's budget and the refusal metrics."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reelq.api import create_app, create_asgi
from reelq.api.app import build_services
from reelq.api.deps import Services
from reelq.config import load_settings
from reelq.database import TaskStore

pytestmark = [pytest.mark.anyio, pytest.mark.service]

GENEROUS = {"poll_rate": 1000.0, "poll_burst": 1000.0, "create_rate": 100000.0, "max_active_per_key": 10000}
GOOD = {"model": "viduq3-pro", "prompt": "a lighthouse at dusk", "duration": 5, "resolution": "720p"}
# `off_peak` as an extra body field on the OpenAI surface (the SDK's `extra_body`).
OPENAI_OFF_PEAK = {"model": "viduq3-pro", "prompt": "x", "seconds": "5", "size": "1280x720", "off_peak": True}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Api:
    """Two API processes' worth of services over one SQLite file: the fast-path app and the routed one."""

    def __init__(self, one: httpx.AsyncClient, two: httpx.AsyncClient, services: list[Services]) -> None:
        self.one, self.two, self.services = one, two, services
        self.store: TaskStore = services[0].store
        record, self.admin, _ = self.store.create_key_with({"name": "ops"}, admin=True)
        self.admin_id = record.id

    async def call(self, method: str, url: str, key: str | None, client: httpx.AsyncClient | None = None,
                   **kwargs: Any) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if key is not None:
            headers.setdefault("authorization", f"Bearer {key}")
        return await (client or self.one).request(method, url, headers=headers, **kwargs)

    async def customer(self, **settings: Any) -> tuple[str, str]:
        answer = await self.call("POST", "/v1/admin/keys", self.admin, json={"name": "customer", **settings})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        return body["id"], body["key"]


@pytest.fixture
async def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Api]:
    for name in list(os.environ):
        if name.startswith("REELQ_"):
            monkeypatch.delenv(name)
    settings = load_settings(home=tmp_path / "home", **GENEROUS)
    first, second = build_services(settings), build_services(settings)
    apps = [create_asgi(settings, first), create_app(settings, second)]
    base = "http://testserver"
    clients = [httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base) for app in apps]
    yield Api(clients[0], clients[1], [first, second])
    for client in clients:
        await client.aclose()
    for services in (first, second):
        services.close()


ADMIN_ROUTES = [
    ("POST", "/v1/admin/keys", {"name": "x"}),
    ("GET", "/v1/admin/keys", None),
    ("GET", "/v1/admin/keys/{id}", None),
    ("PATCH", "/v1/admin/keys/{id}", {"budget": 5}),
    ("POST", "/v1/admin/keys/{id}/credits", {"tokens": 5}),
    ("DELETE", "/v1/admin/keys/{id}", None),
    ("GET", "/v1/admin/usage", None),
]


async def test_a_normal_key_gets_403_on_every_admin_route(api: Api) -> None:
    target, plain = await api.customer()
    for method, path, body in ADMIN_ROUTES:
        url = path.format(id=target)
        for client in (api.one, api.two):
            answer = await api.call(method, url, plain, client, json=body)
            assert answer.status_code == 403, (method, url, answer.text)
            assert answer.json()["error"]["code"] == "forbidden"
            assert (await api.call(method, url, None, client, json=body)).status_code == 401
    assert (await api.call("GET", f"/v1/admin/keys/{target}", api.admin)).json()["revoked"] is False


async def test_admin_manages_keys_budgets_and_credits(api: Api) -> None:
    target, plain = await api.customer(budget=3000, weight=2, max_processing=1, models=["viduq3-pro"])
    shown = (await api.call("GET", f"/v1/admin/keys/{target}", api.admin)).json()
    expected = {"budget": 3000, "spent": 0, "reserved": 0, "available": 3000}
    expected |= {"weight": 2.0, "max_processing": 1}
    assert {name: shown[name] for name in expected} == expected
    assert "key" not in shown and "key_hash" not in shown
    assert (await api.call("POST", "/v1/vidu/videos", plain, json=GOOD)).status_code == 200
    assert (await api.call("POST", "/v1/vidu/videos", plain, json=GOOD)).status_code == 200
    refused = await api.call("POST", "/v1/vidu/videos", plain, json=GOOD)
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "insufficient_budget"
    assert len(api.store.list_tasks(target, 10)) == 2  # nothing stored for the refusal
    usage = (await api.call("GET", "/v1/usage", plain)).json()
    assert usage["budget"] == {"limit": 3000, "spent": 0, "reserved": 3000, "available": 0}
    top_up = {"tokens": 1500, "note": "invoice 7"}
    credited = await api.call("POST", f"/v1/admin/keys/{target}/credits", api.admin, json=top_up)
    assert credited.status_code == 200 and credited.json()["available"] == 1500
    assert (await api.call("POST", "/v1/vidu/videos", plain, json=GOOD)).status_code == 200
    ledger = (await api.call("GET", f"/v1/admin/keys/{target}", api.admin)).json()["credits"]
    assert [(c["tokens"], c["note"], c["by"]) for c in ledger] == [(1500, "invoice 7", api.admin_id)]
    clash = await api.call("PATCH", f"/v1/admin/keys/{target}", api.admin, json={"budget": 10})
    assert clash.status_code == 409
    lift = {"budget": None, "weight": None}
    lifted = await api.call("PATCH", f"/v1/admin/keys/{target}", api.admin, json=lift)
    assert lifted.status_code == 200 and (lifted.json()["budget"], lifted.json()["weight"]) == (None, 1.0)
    assert (await api.call("GET", "/v1/usage", plain)).json()["budget"]["available"] is None
    bad = await api.call("PATCH", f"/v1/admin/keys/{target}", api.admin, json={"max_active": 0})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_active"
    assert (await api.call("GET", "/v1/admin/keys/key_nope", api.admin)).status_code == 404
    listed = (await api.call("GET", "/v1/admin/keys?limit=1", api.admin)).json()
    assert listed["has_more"] is True and len(listed["data"]) == 1
    rest = (await api.call("GET", f"/v1/admin/keys?after={listed['next_cursor']}", api.admin)).json()
    assert {k["id"] for k in listed["data"] + rest["data"]} == {api.admin_id, target}


async def test_forty_simultaneous_creates_against_room_for_ten(api: Api) -> None:
    _, plain = await api.customer(budget=15000)
    answers = await asyncio.gather(
        *(
            api.call("POST", "/v1/vidu/videos", plain, api.one if i % 2 else api.two, json=GOOD)
            for i in range(40)
        )
    )
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] * 10 + [402] * 30


async def test_model_allow_list_and_refusal_metrics(api: Api) -> None:
    _, plain = await api.customer(models=["viduq3-turbo"])
    refused = await api.call("POST", "/v1/vidu/videos", plain, json=GOOD)
    assert refused.status_code == 403
    assert refused.json()["error"] == {
        "code": "model_not_allowed", "message": refused.json()["error"]["message"], "param": "model"
    }
    turbo = {**GOOD, "model": "viduq3-turbo"}
    assert (await api.call("POST", "/v1/vidu/videos", plain, json=turbo)).status_code == 200
    metrics = (await api.call("GET", "/metrics", None)).text
    assert 'reelq_creates_refused_total{reason="model_not_allowed"} 1.0' in metrics
    assert "key_" not in metrics.split("reelq_creates_refused")[1].split("# HELP")[0]


async def test_per_key_create_rate(api: Api) -> None:
    _, slow = await api.customer(create_rate=2)
    _, fast = await api.customer()
    codes = [(await api.call("POST", "/v1/vidu/videos", slow, json=GOOD)).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    assert (await api.call("POST", "/v1/vidu/videos", fast, json=GOOD)).status_code == 200
    metrics = (await api.call("GET", "/metrics", None)).text
    assert 'reelq_creates_refused_total{reason="create_rate"} 1.0' in metrics


async def test_revoked_or_expired_keys_answer_401_at_once_on_every_surface(api: Api) -> None:
    for how in ("revoke", "expire"):
        target, plain = await api.customer()
        task = (await api.call("POST", "/v1/vidu/videos", plain, json=GOOD)).json()["id"]
        reads = [("GET", f"/v1/result/{task}", None), ("GET", "/v1/vidu/videos", None),
                 ("POST", "/v1/vidu/videos", GOOD), ("GET", "/v1/videos", None), ("GET", "/v1/usage", None)]
        for client in (api.one, api.two):  # both have the key cached now
            assert (await api.call("GET", f"/v1/result/{task}", plain, client)).status_code == 200
        if how == "revoke":
            answer = await api.call("DELETE", f"/v1/admin/keys/{target}", api.admin)
            assert answer.status_code == 200 and answer.json()["revoked"] is True
        else:
            answer = await api.call("PATCH", f"/v1/admin/keys/{target}", api.admin,
                                    json={"expires_at": time.time() + 0.3})
            assert answer.status_code == 200
            for client in (api.one, api.two):  # still valid until it expires
                assert (await api.call("GET", f"/v1/result/{task}", plain, client)).status_code == 200
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and time.time() < answer.json()["expires_at"] + 1:
                await asyncio.sleep(0.05)
        for client in (api.one, api.two):
            for method, url, body in reads:
                got = await api.call(method, url, plain, client, json=body)
                assert got.status_code == 401, (how, method, url, got.text)
            token = {"authorization": f"Token {plain}"}
            platform = await client.get(f"/ent/v2/tasks/{task}/creations", headers=token)
            assert platform.status_code == 401


async def test_off_peak_on_every_surface_reserves_the_lower_price(api: Api) -> None:
    target, plain = await api.customer(budget=100000)
    made = [
        (await api.call("POST", "/v1/vidu/videos", plain, json={**GOOD, "off_peak": True})).json()["id"],
        (await api.call("POST", "/v1/videos", plain, json=OPENAI_OFF_PEAK)).json()["id"],
    ]
    platform = await api.one.post(
        "/ent/v2/text2video",
        headers={"authorization": f"Token {plain}"},
        json={"model": "viduq3-pro", "prompt": "x", "duration": 5, "resolution": "720p", "off_peak": True},
    )
    assert platform.status_code == 200, platform.text
    made.append(platform.json()["task_id"])
    rows = [api.store.get_task(task_id) for task_id in made]
    assert all(row is not None and row.off_peak for row in rows)
    assert [row.reserved_tokens for row in rows if row is not None] == [750, 750, 750]
    assert api.store.key_record(target).reserved == 2250  # type: ignore[union-attr]
    bad = await api.call("POST", "/v1/vidu/videos", plain, json={**GOOD, "off_peak": "yes"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "off_peak"
