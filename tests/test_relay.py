"""The relay engine end to end: a real `reelq serve` relaying to a fake Vidu platform (a third party)
and to a second, real `reelq serve` (synthetic engine). Videos are decoded with PyAV, never trusted."""

from __future__ import annotations

import base64
import email.utils
import io
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from reelq.catalog import CatalogError, load_catalog
from reelq.engines.relay import signature
from reelq.engines.relay.upstream import retry_after_seconds
from reelq.engines.relay.vidu_upstream import failure_message
from tests.conftest import SCALED, Server, is_our_video_url, wait_terminal
from tests.fake_vidu import FakeVidu, make_mp4
from tests.test_hardening import wait_for
from tests.test_metrics import Samples, scrape, total
from tests.test_metrics import value as metric
from tests.videos import decode_frames

pytestmark = pytest.mark.e2e

VIDU_KEY = "vidu-secret-key-123"
RELAY_KEY_ENV = "RELAY_TEST_UPSTREAM_KEY"


def models_file(path: Path, upstream: str, base_url: str, **extra: object) -> Path:
    lines = [
        "[models.viduq3-pro]",
        'engine = "relay"',
        f'upstream = "{upstream}"',
        f'base_url = "{base_url}"',
        f'api_key_env = "{RELAY_KEY_ENV}"',
    ]
    for key, value in {"poll_initial": 0.3, "poll_max": 2, **extra}.items():
        lines.append(f"{key} = {value!r}".replace("'", '"') if isinstance(value, str) else f"{key} = {value}")
    lines.append("")
    lines += ["[models.viduq3-turbo]", 'engine = "synthetic"']
    path.write_text("\n".join(lines) + "\n")
    return path


def png_data_uri(color: tuple[int, int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 36), color).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def row(server: Server, task_id: str) -> dict[str, object]:
    (upstream_id, upstream_credits) = server.query(
        "SELECT upstream_id, upstream_credits FROM tasks WHERE id = :id", id=task_id
    )[0]
    return {"upstream_id": upstream_id, "upstream_credits": upstream_credits}


def check_our_video(server: Server, client: httpx.Client, body: dict) -> None:
    assert body["status"] == "completed", body
    assert is_our_video_url(server, body["id"], body["video_url"]), body["video_url"]
    video = httpx.get(body["video_url"], timeout=30)
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    frames = decode_frames(video.content)
    assert len(frames) > 0
    assert body["actualDuration"] == pytest.approx(len(frames) / 24, abs=1e-6)
    assert body["totalTokens"] == round(300 * body["actualDuration"])


@pytest.fixture(scope="module")
def mp4(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_mp4(tmp_path_factory.mktemp("mp4") / "upstream.mp4", seconds=1.0)


@pytest.fixture
def fake_vidu(mp4: bytes) -> Iterator[FakeVidu]:
    fake = FakeVidu(VIDU_KEY, mp4, delay=1.5).start()
    yield fake
    fake.stop()


@pytest.fixture
def vidu_relay(
    make_server: Callable[..., Server], fake_vidu: FakeVidu, tmp_path: Path
) -> Callable[..., Server]:
    def start(public: bool = False, workers: int = 1, **options: object) -> Server:
        path = models_file(
            tmp_path / f"models-{uuid.uuid4().hex}.toml", "vidu", fake_vidu.base_url, **options
        )
        server = make_server(start=False, REELQ_MODELS=str(path), **{RELAY_KEY_ENV: VIDU_KEY})
        if public:
            server.env["REELQ_PUBLIC_BASE_URL"] = server.base_url
        server.start(workers=workers)
        return server

    return start


# ---- pure parts ---------------------------------------------------------------------------------


def test_signature_matches_the_documented_signing_string() -> None:
    # platform.vidu.com/docs/callback-signature: the worked example's signing string.
    date = "Tue, 06 May 2025 12:09:42 GMT"
    nonce = "123e4567-e89b-12d3-a456-426614174000"
    text = signature.signing_string(
        "post", "/vidu/callback", "name=james&age=36", date, [("Date", date), ("x-request-nonce", nonce)]
    )
    assert text == (
        f"POST\n/vidu/callback\nname=james&age=36\nvidu\n{date}\nDate:{date}\nx-request-nonce:{nonce}\n"
    )
    now = email.utils.parsedate_to_datetime(date).timestamp()
    headers = signature.signed_callback_headers("k", "/vidu/callback", "name=james&age=36", date, nonce)
    lower = {k.lower(): v for k, v in headers.items()}
    assert signature.verify("k", "POST", "/vidu/callback", "name=james&age=36", lower, now) is None
    assert signature.verify("other", "POST", "/vidu/callback", "name=james&age=36", lower, now) == (
        "signature mismatch"
    )
    assert "too far" in (
        signature.verify("k", "POST", "/vidu/callback", "name=james&age=36", lower, now + 900)
    )
    unsigned_nonce = {**lower, "x-hmac-signed-headers": "Date"}
    assert "must include" in signature.verify("k", "POST", "/vidu/callback", "", unsigned_nonce, now)


def test_err_codes_and_retry_after() -> None:
    assert failure_message("CreationPolicyViolation").startswith("Content policy violation:")
    assert failure_message("AuditSubmitIllegal").startswith("Content policy violation:")
    assert failure_message("UserCancelled") == "Cancelled by user."
    assert "insufficient credits" in failure_message("CreditInsufficient")
    assert failure_message("") == "Upstream generation failed (no reason given)."
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("nonsense") is None
    assert retry_after_seconds(email.utils.formatdate(time.time() + 60, usegmt=True)) == pytest.approx(
        60, abs=2
    )


def test_models_file_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RELAY_KEY_ENV, raising=False)
    path = models_file(tmp_path / "m.toml", "vidu", "https://api.vidu.com")
    # Reading the models file needs no upstream secret (`reelq keys create` reads it); a relay worker,
    # `reelq serve` and `reelq worker` check the keys when they start (test_serve_refuses_...).
    load_catalog(path)
    monkeypatch.setenv(RELAY_KEY_ENV, "k")
    entry = load_catalog(path)["viduq3-pro"]
    assert entry.engine == "relay" and entry.limits.last_image
    (tmp_path / "bad.toml").write_text(
        '[models.x]\nengine = "relay"\nupstream = "reelq"\napi_key_env = "K"\n'
    )
    with pytest.raises(CatalogError, match="base_url: required"):
        load_catalog(tmp_path / "bad.toml")
    (tmp_path / "bad2.toml").write_text(
        '[models.x]\nengine = "relay"\nupstream = "vidu"\napi_key_env = "sk-live-123"\n'
    )
    with pytest.raises(CatalogError, match="not an environment variable name"):
        load_catalog(tmp_path / "bad2.toml")


def test_serve_refuses_to_start_without_the_key(make_server: Callable[..., Server], tmp_path: Path) -> None:
    path = models_file(tmp_path / "m.toml", "vidu", "https://api.vidu.com")
    server = make_server(start=False, REELQ_MODELS=str(path))
    with pytest.raises(RuntimeError, match=f"environment variable {RELAY_KEY_ENV} is unset") as info:
        server.start(workers=0)
    assert "Traceback" not in str(info.value)


# ---- the Vidu platform ---------------------------------------------------------------------------


# The relay worker claims through the store, stores the fetched videos (S3 scaled out) and counts its tasks.
@pytest.mark.scaled
def test_vidu_relay_end_to_end(vidu_relay: Callable[..., Server], fake_vidu: FakeVidu) -> None:
    server = vidu_relay()
    with server.client() as client:
        plain = client.post(
            "/v1/vidu/videos", json={"model": "viduq3-pro", "prompt": "a red fox", "duration": 1}
        )
        one = client.post(
            "/v1/vidu/videos",
            json={"model": "viduq3-pro", "prompt": "one image", "first_image": png_data_uri((255, 0, 0))},
        )
        two = client.post(
            "/v1/vidu/videos",
            json={
                "model": "viduq3-pro",
                "prompt": "two images",
                "first_image": png_data_uri((255, 0, 0)),
                "last_image": png_data_uri((0, 0, 255)),
            },
        )
        policy = client.post("/v1/vidu/videos", json={"model": "viduq3-pro", "prompt": "policyfail please"})
        bad = client.post("/v1/vidu/videos", json={"model": "viduq3-pro", "prompt": "badrequest"})
        lost = client.post("/v1/vidu/videos", json={"model": "viduq3-pro", "prompt": "lose it"})
        elsewhere = client.post("/v1/vidu/videos", json={"model": "viduq3-pro", "prompt": "elsewhere"})
        ids = {name: r.json()["id"] for name, r in locals().items() if isinstance(r, httpx.Response)}
        results = {name: wait_terminal(client, task_id, timeout=60) for name, task_id in ids.items()}

        for name in ("plain", "one", "two"):
            check_our_video(server, client, results[name])
        assert results["policy"]["status"] == "failed"
        assert results["policy"]["error"].startswith("Content policy violation:")
        assert "CreationPolicyViolation" in results["policy"]["error"]
        assert results["bad"]["error"].startswith("Upstream refused the request (HTTP 400 FieldInvalid")
        assert results["lost"]["error"].startswith("Upstream lost the task")
        assert "not allowed (loopback)" in results["elsewhere"]["error"]
        for name in ("policy", "bad", "lost", "elsewhere"):
            assert results[name]["totalTokens"] is None and results[name]["video_url"] is None

    calls = {c["payload"]: c for c in fake_vidu.create_calls}
    assert len(fake_vidu.create_calls) == len(ids)  # one create per task, the refused one included
    assert calls[ids["plain"]]["route"] == "text2video" and calls[ids["plain"]]["duration"] == 1
    assert calls[ids["one"]]["route"] == "img2video" and len(calls[ids["one"]]["images"]) == 1
    assert calls[ids["two"]]["route"] == "start-end2video"
    assert calls[ids["two"]]["images"] == [png_data_uri((255, 0, 0)), png_data_uri((0, 0, 255))]
    assert "callback_url" not in calls[ids["plain"]]  # no REELQ_PUBLIC_BASE_URL: polling only
    stored = row(server, ids["plain"])
    assert stored["upstream_id"] == next(
        t.id for t in fake_vidu.tasks.values() if t.body["payload"] == ids["plain"]
    )
    assert stored["upstream_credits"] == 10
    # The upstream key never reaches the logs.
    assert VIDU_KEY not in server.log()
    # The relay worker counts its tasks like a render worker does (GET /metrics, engine "relay"): just
    # after each row turns terminal, and its in-flight gauge once the task's coroutine is done, so wait
    # for the last of those writes rather than scraping at the moment the statuses are seen.
    labels = {"model": "viduq3-pro", "engine": "relay"}

    def settled() -> Samples | None:
        found = scrape(server)
        ended = sum(total(found, f"reelq_tasks_{end}_total", **labels) for end in ("completed", "failed"))
        idle = metric(found, "reelq_worker_renders_running", **labels) == 0
        return found if ended >= len(ids) and idle else None

    samples = wait_for(settled, 10)
    assert metric(samples, "reelq_tasks_completed_total", **labels) == 3
    assert total(samples, "reelq_tasks_failed_total", **labels) == 4
    assert metric(samples, "reelq_render_seconds_count", **labels) == 3
    assert metric(samples, "reelq_queue_wait_seconds_count", **labels) == len(ids)
    assert metric(samples, "reelq_worker_renders_running", **labels) == 0


def test_vidu_429_retry_after_and_5xx(vidu_relay: Callable[..., Server], fake_vidu: FakeVidu) -> None:
    server = vidu_relay()
    fake_vidu.fail_5xx = 2  # the first two creates fail with 500: retried, one task made
    with server.client() as client:
        task_id = client.post("/v1/vidu/videos", json={"model": "viduq3-pro", "prompt": "retry me"}).json()[
            "id"
        ]
        deadline = time.monotonic() + 30
        while not fake_vidu.tasks and time.monotonic() < deadline:
            time.sleep(0.05)
        fake_vidu.retry_after, fake_vidu.burst_429 = 2, 2
        body = wait_terminal(client, task_id, timeout=60)
    check_our_video(server, client, body)
    assert len(fake_vidu.create_calls) == 3 and len(fake_vidu.tasks) == 1
    times = fake_vidu.query_times
    throttled = [i for i, (_, status) in enumerate(times) if status == 429]
    assert len(throttled) == 2
    for i in throttled:
        assert times[i + 1][0] - times[i][0] >= 1.9, "Retry-After was not honoured"


@pytest.mark.scaled  # an accepted callback reaches the relay worker through the backend's notifications
def test_vidu_signed_callbacks(vidu_relay: Callable[..., Server], fake_vidu: FakeVidu) -> None:
    # Polls are 600 s apart: only an accepted callback can finish the task within wait_terminal's bound
    # (a slow machine's start-up fits in it many times over); the read count says the same.
    server = vidu_relay(public=True, poll_initial=600, poll_max=600)
    with server.client() as client:
        task_id = client.post("/v1/vidu/videos", json={"model": "viduq3-pro", "prompt": "call me"}).json()[
            "id"
        ]
        body = wait_terminal(client, task_id, timeout=240)
    check_our_video(server, client, body)
    call = fake_vidu.create_calls[0]
    assert call["callback_url"] == f"{server.base_url}/callbacks/vidu/{task_id}"
    assert "success" in {state for _, state, status in fake_vidu.callbacks if status == 200}
    assert len(fake_vidu.query_times) <= 3  # read on the callbacks, not on a timer

    # Forged: wrong key, stale date, no signature, another task's signature -> refused, nothing read.
    url = call["callback_url"]
    path = httpx.URL(url).path
    date = email.utils.formatdate(usegmt=True)
    reads = len(fake_vidu.query_times)
    forged = signature.signed_callback_headers("not-the-key", path, "", date, "n1")
    stale = signature.signed_callback_headers(
        VIDU_KEY, path, "", email.utils.formatdate(time.time() - 3600, usegmt=True), "n2"
    )
    other = signature.signed_callback_headers(VIDU_KEY, "/callbacks/vidu/video_other", "", date, "n3")
    for headers in (forged, stale, {}, other):
        answer = httpx.post(url, json={"id": "x", "state": "success"}, headers=headers, timeout=60)
        assert answer.status_code == 403, answer.text
        assert answer.json()["error"]["code"] == "invalid_signature"
    unknown = f"{server.base_url}/callbacks/vidu/video_{uuid.uuid4()}"
    assert httpx.post(unknown, json={}, headers=forged, timeout=60).status_code == 404
    time.sleep(0.5)
    assert len(fake_vidu.query_times) == reads


@pytest.mark.scaled  # the upstream id kept in the store is what the restarted relay worker resumes
def test_vidu_kill_9_while_waiting_creates_once(
    vidu_relay: Callable[..., Server], fake_vidu: FakeVidu
) -> None:
    fake_vidu.delay = 6
    server = vidu_relay()
    with server.client() as client:
        task_id = client.post("/v1/vidu/videos", json={"model": "viduq3-pro", "prompt": "survive"}).json()[
            "id"
        ]
        deadline = time.monotonic() + 120  # a bound on a slow start, not an expectation
        while row(server, task_id)["upstream_id"] is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert row(server, task_id)["upstream_id"] is not None
        server.stop(signal.SIGKILL)
        server.start(workers=1)
        body = wait_terminal(client, task_id, timeout=60)
    check_our_video(server, client, body)
    assert len(fake_vidu.create_calls) == 1 and len(fake_vidu.tasks) == 1


# ---- a server of this API ------------------------------------------------------------------------


@pytest.mark.scaled
def test_reelq_upstream_full_chain_and_kill_9(make_server: Callable[..., Server], tmp_path: Path) -> None:
    upstream = make_server(workers=1, REELQ_SYNTHETIC_DELAY="4")
    path = models_file(tmp_path / "relay.toml", "reelq", upstream.base_url)
    front = make_server(start=False, REELQ_MODELS=str(path), **{RELAY_KEY_ENV: upstream.keys[0]})
    if SCALED:  # the upstream's videos are presigned links to the test's S3 server, on loopback
        front.env["REELQ_ALLOW_PRIVATE_URLS"] = "true"
    front.start(workers=1)
    first, last = png_data_uri((250, 10, 10)), png_data_uri((10, 10, 250))
    with front.client() as client:
        task_id = client.post(
            "/v1/vidu/videos",
            json={
                "model": "viduq3-pro",
                "prompt": "a relayed lighthouse",
                "duration": 2,
                "resolution": "540p",
                "first_image": first,
                "last_image": last,
            },
        ).json()["id"]
        deadline = time.monotonic() + 120  # a bound on a slow start, not an expectation
        while row(front, task_id)["upstream_id"] is None and time.monotonic() < deadline:
            time.sleep(0.05)
        upstream_id = row(front, task_id)["upstream_id"]
        assert upstream_id is not None
        front.stop(signal.SIGKILL)  # the whole front server, relay worker included, mid-wait
        front.start(workers=1)
        body = wait_terminal(client, task_id, timeout=90)
    assert body["status"] == "completed", body
    assert is_our_video_url(front, task_id, body["video_url"]), body["video_url"]
    frames = decode_frames(httpx.get(body["video_url"], timeout=30).content)
    assert len(frames) == 48 and frames[0].shape == (540, 960, 3)
    assert body["actualDuration"] == 2
    assert body["totalTokens"] == round(300 * 2 * 0.75)
    # Exactly one upstream task, made with our images, under our task id as its idempotency key.
    tasks = upstream.query("SELECT id, idempotency_key, has_first_image, has_last_image FROM tasks")
    assert tasks == [(upstream_id, task_id, 1, 1)]
    assert row(front, task_id)["upstream_credits"] == round(300 * 2 * 0.75)
    assert upstream.keys[0] not in front.log()


# ---- the row's rules for relayed tasks -----------------------------------------------------------


def test_resumes_spend_no_attempt_and_are_never_failed_for_attempts(tmp_path: Path) -> None:
    from reelq.database import NewTask, TaskStore, make_engine, migrate

    engine = make_engine(f"sqlite:///{tmp_path / 'r.db'}")
    migrate(engine)
    store = TaskStore(engine)
    key = store.ensure_local_key()
    relayed, rendered = (
        store.create_task(
            key, NewTask(model=m, prompt="p", duration=1, aspect_ratio="16:9", resolution="720p")
        )[0]
        for m in ("viduq3-pro", "viduq3-turbo")
    )
    # A render worker never takes a relayed model; the relay worker takes only relayed ones.
    assert store.claim_next("render", 30, exclude_models=["viduq3-pro"]).id == rendered.id
    assert store.claim_next("render", 30, exclude_models=["viduq3-pro"]) is None
    claimed = store.claim_relayed("relay-1", 30, ["viduq3-pro"], 10)
    assert [t.id for t in claimed] == [relayed.id] and claimed[0].attempts == 1
    assert store.record_upstream(relayed.id, "up-1", 7)
    assert not store.record_upstream(relayed.id, "up-2")  # a known id is never replaced
    assert store.renew_all("relay-1", 30) == {relayed.id}
    for attempt in range(5):  # the worker dies again and again: more than REELQ_MAX_ATTEMPTS times
        store.expire_leases_of("relay-")
        result = store.sweep(max_attempts=3, queued_stale_seconds=60)
        assert result.failed == [] and result.requeued == [relayed.id]
        again = store.claim_relayed(f"relay-{attempt + 2}", 30, ["viduq3-pro"], 10)
        assert [t.upstream_id for t in again] == ["up-1"] and again[0].attempts == 1
    assert store.release(relayed.id, "relay-6", refund=False)
    assert store.get_task(relayed.id).attempts == 1
    assert store.get_task(relayed.id).upstream_credits == 7


@pytest.mark.scaled  # the cancel reaches the relay worker through the store
def test_an_owners_cancel_stops_the_upstream_generation_too(
    make_server: Callable[..., Server], tmp_path: Path
) -> None:
    upstream = make_server(workers=1, REELQ_SYNTHETIC_DELAY="30")
    path = models_file(tmp_path / "relay.toml", "reelq", upstream.base_url)
    front = make_server(
        start=False, REELQ_MODELS=str(path), REELQ_LEASE_SECONDS="3", **{RELAY_KEY_ENV: upstream.keys[0]}
    )
    front.start(workers=1)
    with front.client() as client:
        task_id = client.post("/v1/vidu/videos", json={"model": "viduq3-pro", "prompt": "never mind"}).json()[
            "id"
        ]
        deadline = time.monotonic() + 120  # a bound on a slow start, not an expectation
        while row(front, task_id)["upstream_id"] is None and time.monotonic() < deadline:
            time.sleep(0.05)
        upstream_id = row(front, task_id)["upstream_id"]
        assert upstream_id is not None
        cancelled = client.post(f"/v1/vidu/videos/{task_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["error"] == "Cancelled by user."
    with upstream.client() as client:
        body = wait_terminal(client, upstream_id, timeout=20)  # well before its 30 s render ends
    assert (body["status"], body["error"]) == ("failed", "Cancelled by user.")
