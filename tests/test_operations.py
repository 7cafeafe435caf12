"""Operating concerns: retention, storage failures, secrets kept out of logs and answers."""

from __future__ import annotations

import shutil
import time

import httpx
import pytest

from tests.conftest import Server, is_our_video_url, run_cli, wait_terminal
from tests.test_api import assert_error

pytestmark = pytest.mark.e2e

BODY = {"model": "viduq3-turbo", "prompt": "kept for a while", "duration": 1, "resolution": "540p"}


@pytest.mark.scaled  # the purge is the store's, then the video storage's deletes (S3 objects scaled out)
def test_finished_tasks_are_purged_after_retention(make_app_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_app_server(workers=1, REELQ_TASK_RETENTION="2", REELQ_SWEEP_INTERVAL="0.3")
    with server.client() as client:
        task = client.post("/v1/vidu/videos", json=BODY).json()
        done = wait_terminal(client, task["id"])
        assert done["status"] == "completed"
        deadline = time.monotonic() + 60
        while client.get(f"/v1/result/{task['id']}").status_code != 404:
            assert time.monotonic() < deadline, "task was never purged"
            time.sleep(0.2)
    # The sweeper deletes the purged rows' videos just after the purge commits: wait for that too.
    deadline = time.monotonic() + 60
    while server.stored_videos(task["id"]):
        assert time.monotonic() < deadline, "the purged task's video was never deleted"
        time.sleep(0.2)
    assert is_our_video_url(server, task["id"], done["video_url"])
    if done["video_url"].startswith(server.base_url):
        assert_error(httpx.get(done["video_url"], timeout=60), 404)
    else:  # a presigned link: S3 answers for its deleted object, in its own words
        assert httpx.get(done["video_url"], timeout=60).status_code == 404


@pytest.mark.scaled  # the video storage's write path (S3 stages its uploads in the same local directory)
def test_a_storage_write_error_fails_the_task_and_the_service_keeps_serving(make_app_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_app_server(workers=1)
    tmp_dir = server.home / "videos" / ".tmp"
    shutil.rmtree(tmp_dir)
    tmp_dir.write_text("not a directory: every write under it fails")  # an unwritable volume
    try:
        with server.client() as client:
            broken = client.post("/v1/vidu/videos", json=BODY).json()
            failed = wait_terminal(client, broken["id"])
    finally:
        tmp_dir.unlink()
        tmp_dir.mkdir()
    assert failed["status"] == "failed"
    assert failed["error"].startswith("Storage error")
    with server.client() as client:
        healthy = client.post("/v1/vidu/videos", json=BODY).json()
        assert wait_terminal(client, healthy["id"])["status"] == "completed"


# Scaled out, the log holds more (Celery's workers, the database and S3 clients): none may leak the key.
@pytest.mark.scaled
def test_secrets_never_appear_in_logs_answers_or_listings(make_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_server(
        workers=1, REELQ_LOG_LEVEL="DEBUG", REELQ_SIGNING_SECRET="s3cr3t-signing-value"
    )
    key = server.keys[0]
    with server.client() as client:
        task = client.post("/v1/vidu/videos", json=BODY).json()
        done = wait_terminal(client, task["id"])
        assert_error(client.post("/v1/vidu/videos", json={**BODY, "duration": 99}), 400)
    with httpx.Client(base_url=server.base_url, timeout=60) as anon:
        wrong = anon.get(f"/v1/result/{task['id']}", headers={"Authorization": f"Bearer {key}x"})
        assert_error(wrong, 401)
        assert key not in wrong.text
    listing = run_cli(server.home, "keys", "list").stdout
    server.stop()
    log = server.log()
    for secret in (key, "s3cr3t-signing-value"):
        assert secret not in log
        assert secret not in listing
        assert secret not in str(done)
    assert key not in repr(server.query("SELECT * FROM api_keys"))
