"""`upstream = "openai"` against a fake of SGLang Diffusion / vLLM-Omni (a third party): create (JSON,
or multipart with the first image as `input_reference`), status mapping, the `/content` download
behind the key, a task the server forgets (resubmitted at most `max_resubmits` times), a failure in
our words, a busy server waited out, and channel failover with in-flight caps over two such servers.
"""

from __future__ import annotations

import base64
import io
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from reelq.catalog import CatalogError, load_catalog
from reelq.media import probe
from tests.fake_openai_videos import FakeOpenAIVideos
from tests.fake_vidu import make_mp4
from tests.relay_front import RelayFront, write_models

pytestmark = [pytest.mark.service]

KEY = "sk-sglang-test-123"
MODEL = "wan-fast"


@pytest.fixture(scope="module")
def mp4(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_mp4(tmp_path_factory.mktemp("mp4") / "up.mp4", seconds=1.0)


@pytest.fixture
def fake(mp4: bytes) -> Iterator[FakeOpenAIVideos]:
    server = FakeOpenAIVideos(mp4, delay=0.6, require_key=KEY).start()
    yield server
    server.stop()


@pytest.fixture
def fronts() -> Iterator[list[RelayFront]]:
    started: list[RelayFront] = []
    yield started
    for front in started:
        front.stop()


def _front(tmp_path: Path, fronts: list[RelayFront], channels: list[dict], **shared: object) -> RelayFront:
    models = write_models(tmp_path / "models.toml", MODEL, channels, **shared)
    front = RelayFront(tmp_path / "home", models).start()
    fronts.append(front)
    return front


def _channel(fake: FakeOpenAIVideos, env: str = "FLEET_SGLANG_KEY", **extra: object) -> dict:
    return {"upstream": "openai", "base_url": fake.base_url, "api_key_env": env, **extra}


def _png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 36), (200, 30, 30)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _video_of(front: RelayFront, task_id: str) -> Path:
    row = front.store.get_task(task_id)
    assert row is not None and row.video_key is not None
    return front.settings.videos_dir / row.video_key


def test_create_poll_download_and_first_image(
    tmp_path: Path, fake: FakeOpenAIVideos, fronts: list[RelayFront], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_SGLANG_KEY", KEY)
    front = _front(tmp_path, fronts, [_channel(fake, upstream_model="Wan2.1-T2V-1.3B")])
    plain = front.create(MODEL, duration=2, aspect_ratio="9:16", resolution="720p", seed=7)
    pictured = front.create(MODEL, prompt="from a picture", first_image=_png())
    done = front.wait_all([plain.id, pictured.id])
    assert [r.status for r in done] == ["completed", "completed"], [r.error for r in done]
    assert probe(_video_of(front, plain.id)).frame_count == 24  # the upstream's MP4, re-hosted
    first, second = fake.creates
    assert first.body == {
        "model": "Wan2.1-T2V-1.3B",
        "prompt": "a relayed lake",
        "seconds": 2,
        "size": "720x1280",
        "seed": 7,
    }
    assert first.reference is None
    assert second.reference is not None and second.reference.startswith(b"\x89PNG")  # multipart upload
    assert second.body["prompt"] == "from a picture"
    assert done[0].upstream_id == first.id
    assert done[0].upstream_channel == f"openai@{fake.base_url}/Wan2.1-T2V-1.3B"


def test_a_forgotten_task_is_created_again_at_most_max_resubmits_times(
    tmp_path: Path, fake: FakeOpenAIVideos, fronts: list[RelayFront], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_SGLANG_KEY", KEY)
    fake.delay = 3.0
    front = _front(tmp_path, fronts, [_channel(fake, max_resubmits=1)])
    task = front.create(MODEL)
    _wait_for(lambda: front.store.get_task(task.id).upstream_id is not None)  # type: ignore[union-attr]
    first_id = front.store.get_task(task.id).upstream_id  # type: ignore[union-attr]
    fake.restart()  # the server restarts: its in-memory jobs are gone
    _wait_for(lambda: len(fake.creates) == 2)
    fake.delay = 0.3
    (row,) = front.wait_all([task.id])
    assert row.status == "completed", row.error
    assert row.upstream_id == fake.creates[1].id != first_id  # the row follows the new job
    # Forgotten again, with no resubmission left: the task fails in our words.
    fake.delay = 3.0
    again = front.create(MODEL)
    _wait_for(lambda: len(fake.creates) == 3)
    fake.restart()
    _wait_for(lambda: len(fake.creates) == 4)
    fake.restart()
    (lost,) = front.wait_all([again.id])
    assert lost.status == "failed" and lost.error == "Upstream lost the task after 1 resubmission(s)."
    assert len(fake.creates) == 4


def test_failures_busy_servers_and_keys(
    tmp_path: Path, fake: FakeOpenAIVideos, fronts: list[RelayFront], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_SGLANG_KEY", KEY)
    fake.busy_creates = 3  # 429s: the server is at its limit; waited out, never a failure
    front = _front(tmp_path, fronts, [_channel(fake)], unreachable_timeout=0.5)
    ok = front.create(MODEL)
    boom = front.create(MODEL, prompt="explode please")
    done = front.wait_all([ok.id, boom.id])
    assert done[0].status == "completed", done[0].error
    # The server's internals (a CUDA error and a file path) stay in our log; the client reads our words.
    assert done[1].status == "failed" and done[1].error == "Upstream generation failed."
    assert fake.busy_creates == 0
    # A wrong key: refused in our words, the task fails; no retry.
    monkeypatch.setenv("FLEET_SGLANG_KEY", "wrong")
    refused = front.create(MODEL)
    (row,) = front.wait_all([refused.id])
    assert row.error == "Upstream refused the relay's credentials (HTTP 401)."


def test_two_servers_with_in_flight_caps_and_failover(
    tmp_path: Path, mp4: bytes, fronts: list[RelayFront], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_SGLANG_KEY", KEY)
    a = FakeOpenAIVideos(mp4, delay=0.8, require_key=KEY).start()
    b = FakeOpenAIVideos(mp4, delay=0.8, require_key=KEY).start()
    try:
        a.busy_creates = 1000  # A answers every create 429: B gets every task, one cap at a time
        front = _front(
            tmp_path,
            fronts,
            [_channel(a, max_in_flight=2, name="a"), _channel(b, max_in_flight=2, name="b")],
            cooldown=60,
            cooldown_after=2,
        )
        peaks = {"a": 0, "b": 0}
        ids = [front.create(MODEL, prompt=f"task {i}").id for i in range(7)]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for ch in front.worker.channels[MODEL].channels:
                peaks[ch.name] = max(peaks[ch.name], ch.in_flight)
            live = [r for r in (front.store.get_task(i) for i in ids) if r and r.status == "processing"]
            assert len(live) <= 4  # never more claimed than both caps together: the rest stay queued
            if all(front.store.get_task(i).status in ("completed", "failed") for i in ids):  # type: ignore[union-attr]
                break
            time.sleep(0.02)
        rows = front.wait_all(ids)
        assert all(r.status == "completed" for r in rows), [r.error for r in rows]
        assert peaks["a"] <= 2 and peaks["b"] <= 2
        assert a.creates == [] and len(b.creates) == 7  # every create failed over to B, once each
        assert {r.upstream_channel for r in rows} == {"b"}
        # Two refusals in a row cool A down for the rest of the run; at most one more create was already
        # on its way to A when the second refusal came (A's cap is 2).
        assert 2 <= 1000 - a.busy_creates <= 3
    finally:
        a.stop()
        b.stop()


def _left_by_a_dead_worker(front: RelayFront, channel: str) -> str:
    """A task a worker claimed and sent a create for to `channel`, then died before the answer: its row
    notes the create's upstream (lifecycle.aim_create) and has no upstream id; it is queued again."""
    row = front.create(MODEL)
    front.store.aim_create(row.id, channel)
    return row.id


@pytest.mark.parametrize("ambiguous_create", ["fail", "retry"])
def test_a_create_of_unknown_fate_never_goes_to_a_second_upstream(
    tmp_path: Path,
    mp4: bytes,
    fronts: list[RelayFront],
    monkeypatch: pytest.MonkeyPatch,
    ambiguous_create: str,
) -> None:
    # SPEC §7: the worker that sent the create died, so its fate is unknown. With `fail` (an upstream
    # that cannot deduplicate) the task fails rather than risk a second paid video; with `retry` it is
    # sent to the same upstream again, however often that upstream refuses and cools down meanwhile,
    # and never to B, which has room all along.
    monkeypatch.setenv("FLEET_SGLANG_KEY", KEY)
    a = FakeOpenAIVideos(mp4, delay=0.3, require_key=KEY).start()
    b = FakeOpenAIVideos(mp4, delay=0.3, require_key=KEY).start()
    try:
        a.busy_creates = 3
        channels = [_channel(a, name="a", ambiguous_create=ambiguous_create), _channel(b, name="b")]
        models = write_models(tmp_path / "models.toml", MODEL, channels, cooldown=60, cooldown_after=1)
        front = RelayFront(tmp_path / "home", models)
        fronts.append(front)
        task_id = _left_by_a_dead_worker(front, "a")
        front.start()
        (row,) = front.wait_all([task_id])
        assert b.creates == []
        if ambiguous_create == "fail":
            assert row.status == "failed" and a.busy_creates == 3  # nothing sent anywhere
            assert row.error == (
                "Upstream did not answer the create; not sent again, so that the video is never paid for "
                "twice."
            )
        else:
            assert row.status == "completed", row.error
            assert a.busy_creates == 0 and len(a.creates) == 1 and row.upstream_channel == "a"
        # A new task is free to go anywhere: A is cooling down after its refusals, so B.
        fresh = front.create(MODEL, prompt="a new one")
        (done,) = front.wait_all([fresh.id])
        assert done.status == "completed" and len(b.creates) == 1
    finally:
        a.stop()
        b.stop()


def test_models_file_channels(tmp_path: Path) -> None:
    path = write_models(
        tmp_path / "m.toml",
        "m",
        [
            {"upstream": "vidu", "api_key_env": "VIDU_KEY", "max_in_flight": 5, "weight": 2},
            {"upstream": "openai", "base_url": "http://10.0.0.7:30010", "api_key_env": "SGL_KEY"},
        ],
    )
    entry = load_catalog(path)["m"]  # no key variable needed to read it
    assert entry.limits.last_image is False  # an OpenAI-shaped upstream takes one reference image
    (tmp_path / "dup.toml").write_text(
        '[models.m]\nengine = "relay"\n[[models.m.upstreams]]\nupstream = "vidu"\napi_key_env = "A"\n'
        '[[models.m.upstreams]]\nupstream = "vidu"\napi_key_env = "B"\n'
    )
    with pytest.raises(CatalogError, match=re.escape("two channels are named 'vidu@https://api.vidu.com'")):
        load_catalog(tmp_path / "dup.toml")
    (tmp_path / "bad.toml").write_text(
        '[models.m]\nengine = "relay"\n[[models.m.upstreams]]\nupstream = "openai"\napi_key_env = "A"\n'
        "poll_max = 3\n"
    )
    with pytest.raises(CatalogError, match=r"upstreams\[0\].poll_max: not a channel key"):
        load_catalog(tmp_path / "bad.toml")
    (tmp_path / "nobase.toml").write_text(
        '[models.m]\nengine = "relay"\n[[models.m.upstreams]]\nupstream = "openai"\napi_key_env = "A"\n'
    )
    with pytest.raises(CatalogError, match=r"upstreams\[0\]: base_url: required for upstream = 'openai'"):
        load_catalog(tmp_path / "nobase.toml")


def _wait_for(condition, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_a_wrong_upstream_model_is_found_at_start(
    tmp_path: Path, mp4: bytes, fronts: list[RelayFront], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_SGLANG_KEY", KEY)
    wrong = FakeOpenAIVideos(mp4, delay=0.3, require_key=KEY).start()
    right = FakeOpenAIVideos(mp4, delay=0.3, require_key=KEY).start()
    wrong.models = ["Wan2.2-TI2V-5B"]
    right.models = ["Wan2.1-T2V-1.3B"]
    try:
        front = _front(
            tmp_path,
            fronts,
            [
                _channel(wrong, upstream_model="Wan2.1-T2V-1.3B", name="wrong"),
                _channel(right, upstream_model="Wan2.1-T2V-1.3B", name="right"),
            ],
        )
        wrong_channel = front.worker.channels[MODEL].named("wrong")
        assert wrong_channel.disabled == "the upstream does not serve model 'Wan2.1-T2V-1.3B'"
        rows = front.wait_all([front.create(MODEL, prompt=f"t{i}").id for i in range(3)])
        assert all(r.status == "completed" for r in rows), [r.error for r in rows]
        assert wrong.creates == [] and len(right.creates) == 3
    finally:
        wrong.stop()
        right.stop()
