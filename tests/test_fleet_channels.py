"""Relay channels against real reelq upstreams (`reelq serve` processes): two upstreams with
`max_in_flight`, one killed mid-run and started again (every task completes, each created upstream
exactly once, no upstream ever holds more than its cap), a create failing over from a dead upstream,
an upstream long-polled instead of polled, and reelq's own `/v1/videos` as an `openai` upstream.

The gateway is in process (tests/relay_front.py: a real RelayWorker over a temp SQLite store).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reelq import metrics
from tests.conftest import SCALED, Server
from tests.relay_front import RelayFront, write_models
from tests.test_metrics import scrape
from tests.test_metrics import value as metric
from tests.test_relay import png_data_uri

pytestmark = [pytest.mark.process]

MODEL = "viduq3-pro"
MakeServer = Callable[..., Server]


@pytest.fixture
def fronts() -> Iterator[list[RelayFront]]:
    started: list[RelayFront] = []
    yield started
    for front in started:
        front.stop()


def _front(tmp_path: Path, fronts: list[RelayFront], channels: list[dict], **shared: object) -> RelayFront:
    models = write_models(tmp_path / f"models-{len(fronts)}.toml", MODEL, channels, **shared)
    # With S3 (scaled) the upstreams' videos are presigned links to the test's S3 server, on loopback.
    front = RelayFront(tmp_path / f"front{len(fronts)}", models, allow_private_urls=SCALED).start()
    fronts.append(front)
    return front


def _live(server: Server) -> int:
    """Tasks the upstream holds that are not finished (what `max_in_flight` bounds)."""
    return server.query("SELECT COUNT(*) FROM tasks WHERE status IN ('queued', 'processing')")[0][0]


def _created(server: Server) -> list[str]:
    """Our task ids, as the upstream recorded them (the Idempotency-Key of each create it took)."""
    return [row[0] for row in server.query("SELECT idempotency_key FROM tasks")]


def _until(condition: Callable[[], bool], watch: Callable[[], None] = lambda: None) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        watch()
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_two_upstreams_capped_one_killed_mid_run_every_task_once(
    make_server: MakeServer, tmp_path: Path, fronts: list[RelayFront], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A's renders outlast the moment it is killed however slow this machine is (a 2 s render could end,
    # and be fetched, before the kill); restarted, it renders them quickly.
    a = make_server(workers=2, REELQ_SYNTHETIC_DELAY="120")
    b = make_server(workers=2, REELQ_SYNTHETIC_DELAY="0.5")
    monkeypatch.setenv("FLEET_KEY_A", a.keys[0])
    monkeypatch.setenv("FLEET_KEY_B", b.keys[0])
    front = _front(
        tmp_path,
        fronts,
        [
            {"upstream": "reelq", "base_url": a.base_url, "api_key_env": "FLEET_KEY_A", "max_in_flight": 2},
            {"upstream": "reelq", "base_url": b.base_url, "api_key_env": "FLEET_KEY_B", "max_in_flight": 2},
        ],
        cooldown=1,
        cooldown_after=1,
        unreachable_timeout=300,
    )
    name_a, name_b = f"reelq@{a.base_url}", f"reelq@{b.base_url}"
    peaks = {"a": 0, "b": 0}

    def watch() -> None:
        if a.process is not None:
            peaks["a"] = max(peaks["a"], _live(a))
        peaks["b"] = max(peaks["b"], _live(b))

    # Phase 1: six tasks; A takes two (and is killed with them in flight), B the other four, two at a time.
    ids = [front.create(MODEL, prompt=f"first {i}").id for i in range(6)]
    _until(lambda: len(_created(a)) == 2, watch=watch)
    a.stop(signal.SIGKILL)  # the whole upstream, its workers and its in-flight renders
    _until(lambda: len(_created(b)) == 4, watch=watch)
    held_by_a = [i for i in ids if front.store.get_task(i).upstream_channel == name_a]  # type: ignore[union-attr]
    assert len(held_by_a) == 2
    assert all(front.store.get_task(i).status == "processing" for i in held_by_a)  # type: ignore[union-attr]
    a.env["REELQ_SYNTHETIC_DELAY"] = "0.5"
    a.start(workers=2)  # back with its tasks on file: the waits resume on the same upstream ids
    rows = front.wait_all(ids, timeout=120)
    watch()
    assert [r.status for r in rows] == ["completed"] * 6, [r.error for r in rows]

    # Phase 2: A dies with nothing in flight; a new task picked for it fails over to B (created once).
    a.stop(signal.SIGKILL)
    more = [front.create(MODEL, prompt=f"second {i}").id for i in range(3)]
    rows += front.wait_all(more, timeout=120)
    assert all(r.status == "completed" for r in rows), [r.error for r in rows]
    refused = metrics.worker_metrics().upstream_errors.labels(MODEL, name_a, "unavailable")._value.get()
    assert refused >= 1  # a create went to A first and was refused before A could have accepted it

    a.start(workers=2)
    on_a, on_b = _created(a), _created(b)
    # Exactly once: each of our tasks was created on one upstream, once, where its row says.
    assert sorted(on_a + on_b) == sorted(r.id for r in rows)
    for r in rows:
        assert r.upstream_channel == (name_a if r.id in on_a else name_b)
    assert set(more) <= set(on_b)
    assert peaks["a"] <= 2 and peaks["b"] <= 2  # never more than max_in_flight at an upstream


def test_a_reelq_upstream_is_long_polled(
    make_server: MakeServer, tmp_path: Path, fronts: list[RelayFront], monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream = make_server(workers=1, REELQ_SYNTHETIC_DELAY="3")
    monkeypatch.setenv("FLEET_KEY_A", upstream.keys[0])
    channel = {"upstream": "reelq", "base_url": upstream.base_url, "api_key_env": "FLEET_KEY_A"}
    front = _front(tmp_path, fronts, [channel])
    (row,) = front.wait_all([front.create(MODEL).id])
    assert row.status == "completed", row.error
    scraped = scrape(upstream)
    # Plain reads and long-polls (`?wait=`) are separate series (api/metrics.py): count both.
    reads = sum(
        metric(scraped, "reelq_http_requests_total", method="GET", route=route, status="200")
        for route in ("/v1/result/{task_id}", "/v1/result/{task_id} (long-poll)")
    )
    # Polled every 0.2 s growing to 1 s, a 3 s render took about seven reads; one long-poll answers
    # the moment it ends (a second only if the render outlasts a long-poll's hold).
    assert 1 <= reads <= 2


def test_reelqs_own_openai_surface_as_an_openai_upstream(
    make_server: MakeServer, tmp_path: Path, fronts: list[RelayFront], monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream = make_server(workers=1, REELQ_SYNTHETIC_DELAY="0.5")
    monkeypatch.setenv("FLEET_KEY_O", upstream.keys[0])
    channel = {
        "upstream": "openai",
        "base_url": upstream.base_url,
        "api_key_env": "FLEET_KEY_O",
        "upstream_model": "viduq3-turbo",
    }
    front = _front(tmp_path, fronts, [channel])
    plain = front.create(MODEL, duration=2, resolution="720p", aspect_ratio="9:16")
    pictured = front.create(MODEL, prompt="from a picture", first_image=png_data_uri((250, 10, 10)))
    rows = front.wait_all([plain.id, pictured.id])
    assert [r.status for r in rows] == ["completed", "completed"], [r.error for r in rows]
    made = upstream.query("SELECT id, model, duration, aspect_ratio, resolution, has_first_image FROM tasks")
    by_id = {m[0]: m[1:] for m in made}
    assert by_id[rows[0].upstream_id] == ("viduq3-turbo", 2, "9:16", "720p", 0)
    assert by_id[rows[1].upstream_id][-1] == 1  # sent as the multipart `input_reference` file
    assert rows[0].actual_duration == 2  # the upstream's video, downloaded from /content with our key
