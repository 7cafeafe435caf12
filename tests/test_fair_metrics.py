"""`/metrics` a user can trust and nobody can inflate (issue 19): labels bounded whatever methods and
paths clients send, long-polls apart from status reads. The real ASGI app (fast path included) on a
temporary SQLite file, scraped through its own `/metrics`."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from reelq.api import create_asgi
from reelq.api.app import build_services
from reelq.api.metrics import LONG_POLL, OTHER_METHOD, STANDARD_METHODS
from reelq.config import load_settings
from reelq.metrics import FAILURE_REASONS, failure_reason

pytestmark = [pytest.mark.service, pytest.mark.anyio]

GOOD = {"model": "viduq3-turbo", "prompt": "a lighthouse at dusk", "duration": 1, "resolution": "540p"}
RESULT = "/v1/result/{task_id}"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    for name in list(os.environ):
        if name.startswith("REELQ_"):
            monkeypatch.delenv(name)
    settings = load_settings(home=tmp_path, poll_rate=10000.0, poll_burst=10000.0, create_rate=10000.0)
    services = build_services(settings)
    plain = services.store.create_key("k")[1]
    app = create_asgi(settings, services)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client, plain
    services.close()


Series = set[tuple[str, tuple[tuple[str, str], ...]]]


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = await client.get("/metrics")
    assert answer.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


def http_series(samples: dict) -> Series:
    return {k for k in samples if k[0].startswith("reelq_http_")}


async def flood(client: httpx.AsyncClient, plain: str, tag: str) -> None:
    """Every method, made-up ones included, on real routes and on made-up paths."""
    auth = {"authorization": f"Bearer {plain}"}
    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", *(f"X{tag}{n}" for n in range(15))]
    made_up = (f"/made/up/{tag}/{n}" for n in range(15))
    paths = ["/v1/result/video_nope", "/v1/vidu/videos", "/healthz", *made_up]
    for method in methods:
        for path in paths:
            await client.request(method, path, headers=auth)


async def test_made_up_methods_and_paths_add_no_series(api: tuple[httpx.AsyncClient, str]) -> None:
    client, plain = api
    await scrape(client)  # the scrape's own route is recorded from the next scrape on
    await flood(client, plain, "a")
    first = await scrape(client)
    series = http_series(first)
    for _, labels in series:
        label = dict(labels)
        assert label["method"] in STANDARD_METHODS | {OTHER_METHOD}
        assert "/made/up" not in label["route"]
    # Requests with a method its route does not answer are counted, under one label.
    other = (("method", OTHER_METHOD), ("route", "unmatched"), ("status", "405"))
    assert first[("reelq_http_requests_total", other)] > 0

    # Another flood with new methods and new paths: the counts grow, the set of series does not.
    await flood(client, plain, "b")
    second = await scrape(client)
    assert http_series(second) == series
    assert sum(v for k, v in second.items() if k[0] == "reelq_http_requests_total") > sum(
        v for k, v in first.items() if k[0] == "reelq_http_requests_total"
    )


async def test_long_polls_have_their_own_latency_series(api: tuple[httpx.AsyncClient, str]) -> None:
    client, plain = api
    auth = {"authorization": f"Bearer {plain}"}
    created = await client.post("/v1/vidu/videos", json=GOOD, headers=auth)
    assert created.status_code == 200, created.text
    task = created.json()["id"]  # no render worker here: it stays queued, so a long-poll is held
    for _ in range(3):
        assert (await client.get(f"/v1/result/{task}", headers=auth)).status_code == 200
    for wait in ("0.05", "0.1"):
        assert (await client.get(f"/v1/result/{task}?wait={wait}", headers=auth)).status_code == 200
    assert (await client.get(f"/v1/result/{task}?wait=0", headers=auth)).status_code == 200  # not held

    samples = await scrape(client)
    count = "reelq_http_request_duration_seconds_count"
    assert samples[(count, (("method", "GET"), ("route", RESULT)))] == 4
    assert samples[(count, (("method", "GET"), ("route", RESULT + LONG_POLL)))] == 2


def failed_by_reason(samples: dict) -> dict[str, float]:
    out: dict[str, float] = {}
    for (name, labels), v in samples.items():
        if name == "reelq_tasks_failed_total":
            reason = dict(labels)["reason"]
            out[reason] = out.get(reason, 0.0) + v
    return out


async def test_cancels_and_deletes_of_unfinished_tasks_are_counted(
    api: tuple[httpx.AsyncClient, str],
) -> None:
    client, plain = api
    auth = {"authorization": f"Bearer {plain}"}
    before = failed_by_reason(await scrape(client))
    ids = []
    for _ in range(3):
        created = await client.post("/v1/vidu/videos", json=GOOD, headers=auth)
        assert created.status_code == 200, created.text
        ids.append(created.json()["id"])
    cancelled, deleted, cancelled_then_deleted = ids
    for task in (cancelled, cancelled_then_deleted):
        assert (await client.post(f"/v1/vidu/videos/{task}/cancel", headers=auth)).status_code == 200
    again = await client.post(f"/v1/vidu/videos/{cancelled}/cancel", headers=auth)
    assert again.status_code == 200
    for task in (deleted, cancelled_then_deleted):
        assert (await client.delete(f"/v1/vidu/videos/{task}", headers=auth)).status_code == 200

    after = failed_by_reason(await scrape(client))
    # Each task counted once, where it ended: a second cancel or deleting a cancelled task adds nothing.
    assert after.get("cancelled", 0) - before.get("cancelled", 0) == 2
    assert after.get("deleted", 0) - before.get("deleted", 0) == 1
    assert set(after) <= set(FAILURE_REASONS)


def test_every_failure_message_the_code_writes_has_its_reason() -> None:
    from reelq.engines.relay.vidu_upstream import failure_message
    from reelq.fetch import FetchError
    from reelq.worker.heartbeat import deadline_error

    cases = {
        "Content policy violation: prompt contains restricted content.": "content_policy",
        failure_message("AuditSubmitIllegal"): "content_policy",
        deadline_error(30): "deadline",
        "Render failed: the engine produced an empty video": "render_error",
        # database/lifecycle.sweep's message when it gives up on a task
        "Render failed after 3 attempts: the worker stopped responding or crashed.": "worker_lost",
        failure_message("InternalError"): "upstream",
        failure_message(None): "upstream",
        "Relay failed: internal error.": "upstream",
        str(FetchError("first_image", "HTTP 404")): "fetch",
        "Storage error: could not write the video (No space left on device).": "storage",
        "Cancelled by user.": "cancelled",
        "something nobody wrote": "other",
        "": "other",
    }
    assert {message: failure_reason(message) for message in cases} == cases
