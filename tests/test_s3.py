"""S3 storage end to end against a real S3 API (moto's server on a free port): `reelq serve` with
REELQ_STORAGE_URL=s3://…, presigned links downloaded with httpx (whole and Range), decoded with PyAV,
and expiry by the sweeper. boto3 reads the standard AWS_* variables; reelq never does."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.conftest import REELQ, free_port, reelq_env, wait_terminal
from tests.test_hardening import wait_for
from tests.videos import decode_frames

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

pytestmark = pytest.mark.e2e


def aws_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in aws_env(s3_endpoint).items():
        monkeypatch.setenv(name, value)
    name = f"reelq-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3(bucket: str):
    return boto3.client("s3")


def s3_server(make_server: Callable, endpoint: str, url: str, **env: str):
    return make_server(REELQ_STORAGE_URL=url, **aws_env(endpoint), **env)


def create(client: httpx.Client, **body: object) -> dict:
    payload = {"model": "viduq3-turbo", "prompt": "a lighthouse at dusk", "duration": 1, **body}
    response = client.post("/v1/vidu/videos", json=payload)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_video_is_uploaded_and_served_by_a_presigned_url_with_ranges(
    make_server: Callable, s3_endpoint: str, bucket: str, s3
) -> None:
    server = s3_server(make_server, s3_endpoint, f"s3://{bucket}/videos/prod", REELQ_VIDEO_URL_TTL="3600")
    with server.client() as client:
        task = wait_terminal(client, create(client, aspect_ratio="4:3")["id"])
    assert task["status"] == "completed", task
    url = task["video_url"]
    parts = urlsplit(url)
    assert url.startswith(f"{s3_endpoint}/{bucket}/videos/prod/{task['id']}-1.mp4?")
    query = parse_qs(parts.query)
    assert "X-Amz-Signature" in query
    # Valid until completion + TTL, whenever it was signed.
    assert 3500 <= int(query["X-Amz-Expires"][0]) <= 3600

    # The object, and nothing left behind on the worker's disk.
    listed = s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert [o["Key"] for o in listed] == [f"videos/prod/{task['id']}-1.mp4"]
    assert not list((server.home / "videos").rglob("*.mp4"))
    assert not list((server.home / "videos" / ".tmp").glob("*"))

    # No Authorization: the link alone.
    whole = httpx.get(url, timeout=30)
    assert whole.status_code == 200
    assert whole.headers["content-type"] == "video/mp4"
    frames = decode_frames(whole.content)
    assert len(frames) == 24
    assert frames[0].shape == (720, 960, 3)

    ranged = httpx.get(url, headers={"Range": "bytes=100-1099"}, timeout=30)
    assert ranged.status_code == 206
    assert ranged.content == whole.content[100:1100]
    assert ranged.headers["content-range"] == f"bytes 100-1099/{len(whole.content)}"
    head = httpx.head(url, timeout=30)
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(whole.content)

    # (moto does not check signatures, so a forged link is not tested here: that is S3's own rule.)

    # Polls of the finished task hand out the same link (cached, same expiry).
    with server.client() as client:
        assert client.get(f"/v1/result/{task['id']}").json()["video_url"] == url
        # OpenAI's `/content` sends the client to the same link; the cover is decoded from a download
        # of the object, behind our own signed link; no `/v1/files` video link of ours opens anything.
        content = client.get(f"/v1/videos/{task['id']}/content")
        assert content.status_code == 302 and content.headers["location"] == url
        cover_url = client.get("/v1/vidu/videos").json()["data"][0]["cover_url"]
        cover = httpx.get(cover_url, timeout=30)
        assert cover.status_code == 200 and cover.content.startswith(b"\xff\xd8\xff")
        ours = cover_url.replace("/covers/", "/").replace(".jpg", ".mp4")
        assert httpx.get(ours, timeout=30).status_code == 403
    assert httpx.get(f"{server.base_url}/readyz", timeout=60).json() == {"status": "ready"}
    # The web page may play it: the bucket's origin is a media source of its Content-Security-Policy.
    csp = httpx.get(f"{server.base_url}/", timeout=60).headers["content-security-policy"]
    assert f"media-src 'self' blob: {parts.scheme}://{parts.netloc};" in csp


def test_the_sweeper_deletes_the_object_when_its_link_expires(
    make_server: Callable, s3_endpoint: str, bucket: str, s3
) -> None:
    server = s3_server(make_server, s3_endpoint, f"s3://{bucket}", REELQ_VIDEO_URL_TTL="2")
    with server.client() as client:
        task = wait_terminal(client, create(client)["id"])
    assert task["status"] == "completed", task
    key = f"{task['id']}-1.mp4"
    wait_for(lambda: s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0, 30)
    assert httpx.get(task["video_url"], timeout=30).status_code in (403, 404)
    with server.client() as client:  # the task still reads completed, its link now dead
        assert client.get(f"/v1/result/{task['id']}").json()["status"] == "completed"
    assert not any(o["Key"] == key for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def test_readiness_follows_the_bucket(make_server: Callable, s3_endpoint: str, bucket: str, s3) -> None:
    server = s3_server(make_server, s3_endpoint, f"s3://{bucket}/p", REELQ_WORKERS="0")
    s3.delete_bucket(Bucket=bucket)
    answer = httpx.get(f"{server.base_url}/readyz", timeout=60)
    assert answer.status_code == 503
    assert bucket in answer.json()["reason"]
    s3.create_bucket(Bucket=bucket)
    assert httpx.get(f"{server.base_url}/readyz", timeout=60).status_code == 200


def test_large_videos_are_uploaded_in_parts(tmp_path: Path, bucket: str, s3) -> None:
    from reelq.storage.s3 import MULTIPART_THRESHOLD, S3Storage

    storage = S3Storage(f"s3://{bucket}/big", tmp_path)
    temp = storage.temp_path("task_x", "host:1:w0")
    data = os.urandom(MULTIPART_THRESHOLD + MULTIPART_THRESHOLD // 2)
    temp.write_bytes(data)
    key = storage.commit(temp, "task_x", 2)
    assert key == "task_x-2.mp4" and not temp.exists()
    head = s3.head_object(Bucket=bucket, Key="big/task_x-2.mp4")
    assert head["ETag"].strip('"').endswith("-2")  # a multipart upload of two parts
    assert head["ContentType"] == "video/mp4"
    out = tmp_path / "out.mp4"
    storage.download(key, out)
    assert out.read_bytes() == data
    storage.delete(key)
    storage.delete(key)  # twice is harmless
    assert not storage.exists(key)


def test_a_storage_url_that_is_not_s3_stops_start_up_with_one_line(tmp_path: Path) -> None:
    import subprocess

    env = reelq_env(tmp_path, REELQ_STORAGE_URL="ftp://bucket/x")
    done = subprocess.run(
        [*REELQ, "serve", "--port", str(free_port())], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "reelq: invalid configuration: REELQ_STORAGE_URL: must be s3://bucket or s3://bucket/prefix"
    ]
    env = reelq_env(tmp_path, REELQ_STORAGE_URL="s3://b", REELQ_VIDEO_URL_TTL=str(8 * 86400))
    done = subprocess.run(
        [*REELQ, "serve", "--port", str(free_port())], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "at most 604800 seconds (7 days) with S3 storage" in done.stderr
