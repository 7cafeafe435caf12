"""The one link signer and the one place for a task's links, expiry and shown status (service/links.py)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from reelq.database.views import TaskView
from reelq.service.links import COVER, VIDEO, Links, LinkSigner, request_base, server_base
from reelq.storage import LocalStorage

pytestmark = pytest.mark.unit

SECRET = b"k" * 32
TASK = f"video_{uuid.uuid4()}"


def _view(status: str = "completed", **fields: object) -> TaskView:
    values: dict[str, object] = {
        "id": TASK,
        "key_id": "key_1",
        "model": "viduq1",
        "status": status,
        "started_at": 10.0 if status != "queued" else None,
        "progress": 40,
        "created_at": 5.0,
        "finished_at": 20.0 if status in ("completed", "failed") else None,
        "video_deleted": False,
        "video_key": f"{TASK}-1.mp4" if status == "completed" else None,
        "actual_duration": None,
        "total_tokens": None,
        "error": None,
    }
    values.update(fields)
    return TaskView(**values)  # type: ignore[arg-type]


def test_a_cover_signature_never_opens_a_video_nor_the_reverse() -> None:
    signer = LinkSigner(SECRET)
    cover = signer.signature(COVER, TASK, 100)
    video = signer.signature(VIDEO, TASK, 100)
    assert cover != video
    assert signer.verify(COVER, TASK, 100, cover) and signer.verify(VIDEO, TASK, 100, video)
    assert not signer.verify(VIDEO, TASK, 100, cover)
    assert not signer.verify(COVER, TASK, 100, video)


def test_a_tampered_link_is_refused() -> None:
    signer = LinkSigner(SECRET)
    good = signer.signature(VIDEO, TASK, 100)
    assert not signer.verify(VIDEO, TASK, 101, good)  # a later expiry
    assert not signer.verify(VIDEO, f"video_{uuid.uuid4()}", 100, good)  # another task
    assert not LinkSigner(b"j" * 32).verify(VIDEO, TASK, 100, good)  # another server's secret
    for bad in ("é", "\udcff", good[:-1] + "é", good.upper(), "", good + "0", "\x00" * 64):
        assert not signer.verify(VIDEO, TASK, 100, bad)


def test_links_keep_the_signature_rule_they_were_always_signed_with() -> None:
    """HMAC-SHA256 over `<route path>\\n<expires>`: links handed out before stay valid."""
    import hashlib
    import hmac

    signer = LinkSigner(SECRET)
    for purpose, path in ((VIDEO, f"/v1/files/{TASK}.mp4"), (COVER, f"/v1/files/covers/{TASK}.jpg")):
        expected = hmac.new(SECRET, f"{path}\n100".encode(), hashlib.sha256).hexdigest()
        assert signer.signature(purpose, TASK, 100) == expected
        assert signer.url(purpose, "https://x.test", TASK, 100) == (
            f"https://x.test{path}?expires=100&signature={expected}"
        )


def test_an_expired_link_is_refused_by_the_clock(tmp_path: Path) -> None:
    now = [1000.0]
    links = Links(LocalStorage(tmp_path), SECRET, ttl=60, clock=lambda: now[0])
    assert not links.expired(1000)
    now[0] = 1000.5
    assert links.expired(1000)


def test_shown_status_progress_expiry_and_links(tmp_path: Path) -> None:
    links = Links(LocalStorage(tmp_path), SECRET, ttl=60)
    queued = links.shown(_view("queued"), "https://x.test")
    assert (queued.status, queued.progress, queued.expires_at, queued.video_url) == ("queued", 0, None, None)
    # A row requeued after it started never steps back to `queued`.
    requeued = links.shown(_view("queued", started_at=10.0))
    assert (requeued.status, requeued.progress) == ("processing", 40)
    failed = links.shown(_view("failed"), "https://x.test")
    assert (failed.status, failed.progress, failed.expires_at, failed.cover_url) == ("failed", 0, None, None)

    done = links.shown(_view(), "https://x.test")
    assert (done.status, done.progress, done.expires_at) == ("completed", 100, 80)
    assert done.video_url == links.signer.url(VIDEO, "https://x.test", TASK, 80)
    assert done.cover_url == links.signer.url(COVER, "https://x.test", TASK, 80)
    assert links.verify(VIDEO, TASK, 80, done.video_url.rpartition("=")[2])
    # Without a base URL (OpenAI's video object) the expiry alone; a deleted video has no cover.
    assert links.shown(_view()).video_url is None and links.shown(_view()).expires_at == 80
    assert links.shown(_view(video_deleted=True), "https://x.test").cover_url is None


def test_remote_storage_hands_out_its_own_links_and_verifies_none_of_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("boto3")
    from reelq.storage.s3 import S3Storage

    for name, value in {
        "AWS_ACCESS_KEY_ID": "reelq",
        "AWS_SECRET_ACCESS_KEY": "reelq-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": "http://minio.test:9000",
    }.items():
        monkeypatch.setenv(name, value)
    storage = S3Storage("s3://videos/reelq", tmp_path)  # presigning is local: no request is made
    assert not storage.serves_files and LocalStorage(tmp_path).serves_files
    links = Links(storage, SECRET, ttl=60)
    done = links.shown(_view(), "https://x.test")
    assert done.video_url is not None
    assert done.video_url.startswith(f"http://minio.test:9000/videos/reelq/{TASK}-1.mp4?")
    assert done.cover_url == links.signer.url(COVER, "https://x.test", TASK, 80)  # covers are ours
    signature = links.signer.signature(VIDEO, TASK, 80)
    assert not links.verify(VIDEO, TASK, 80, signature)
    with pytest.raises(ValueError, match="no stored video"):
        links.shown(_view(video_key=None), "https://x.test")


def test_link_bases() -> None:
    assert request_base("https://pub.test/r", "http", "h", "") == "https://pub.test/r"
    assert request_base(None, "https", None, "/r", ("::1", 8443)) == "https://[::1]:8443/r"
    assert request_base(None, "http", None, "", ("10.0.0.5", 80)) == "http://10.0.0.5"
    assert request_base(None, "http", "api.test", "", ("10.0.0.5", 80)) == "http://api.test"
    assert request_base(None, "http", None, "") == "http://localhost"
    assert server_base(None, "::1", 8000, "/r") == "http://[::1]:8000/r"
    assert server_base(None, "127.0.0.1", 8000, "") == "http://127.0.0.1:8000"
    assert server_base("https://pub.test", "0.0.0.0", 8000, "") == "https://pub.test"
