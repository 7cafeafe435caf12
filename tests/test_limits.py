"""Rate limits, quotas and Idempotency-Key against a real server (SPEC §1)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.conftest import Server
from tests.test_api import assert_error

# Every test here reads or writes tasks, videos, limits or deliveries: the backend's behaviour.
pytestmark = [pytest.mark.e2e, pytest.mark.scaled]

BODY = {"model": "viduq3-turbo", "prompt": "rate limited fox", "duration": 1, "resolution": "540p"}


def task_count(server: Server) -> int:
    return server.query("SELECT count(*) FROM tasks")[0][0]


def test_status_reads_are_limited_per_key_and_task(make_app_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_app_server(workers=0, REELQ_POLL_RATE="1", REELQ_POLL_BURST="3")
    other_key = server.new_key("other")
    with server.client() as client, server.client(other_key) as other:
        task = client.post("/v1/vidu/videos", json=BODY).json()
        second = client.post("/v1/vidu/videos", json=BODY).json()
        codes = [client.get(f"/v1/result/{task['id']}").status_code for _ in range(6)]
        assert codes[:3] == [200, 200, 200]
        limited = client.get(f"/v1/result/{task['id']}")
        assert_error(limited, 429)
        assert 1 <= int(limited.headers["retry-after"]) <= 2
        # Another task of the same key, and another key, have their own budgets.
        assert client.get(f"/v1/result/{second['id']}").status_code == 200
        assert other.get(f"/v1/result/{task['id']}").status_code == 404


def test_creates_per_minute(make_app_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_app_server(workers=0, REELQ_CREATE_RATE="5")
    with server.client() as client:
        codes = [client.post("/v1/vidu/videos", json=BODY).status_code for _ in range(6)]
        assert codes == [200] * 5 + [429]
        limited = client.post("/v1/vidu/videos", json=BODY)
        assert_error(limited, 429)
        assert int(limited.headers["retry-after"]) >= 1
    assert task_count(server) == 5


def test_active_tasks_per_key(make_app_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_app_server(workers=0, REELQ_MAX_ACTIVE_PER_KEY="3")
    other_key = server.new_key("other")
    with server.client() as client, server.client(other_key) as other:
        for _ in range(3):
            assert client.post("/v1/vidu/videos", json=BODY).status_code == 200
        over = client.post("/v1/vidu/videos", json=BODY)
        error = assert_error(over, 429)
        assert error["code"] == "too_many_active_tasks" and over.headers["retry-after"].isdigit()
        assert other.post("/v1/vidu/videos", json=BODY).status_code == 200
    assert task_count(server) == 4


def test_queue_depth_answers_503(make_app_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_app_server(workers=0, REELQ_MAX_QUEUE="2")
    with server.client() as client:
        assert [client.post("/v1/vidu/videos", json=BODY).status_code for _ in range(2)] == [200, 200]
        full = client.post("/v1/vidu/videos", json=BODY)
        assert_error(full, 503)
        assert full.headers["retry-after"].isdigit()


def test_idempotency_key_returns_the_same_task(make_app_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_app_server(workers=0)
    other_key = server.new_key("other")
    with server.client() as client, server.client(other_key) as other:
        first = client.post("/v1/vidu/videos", json=BODY, headers={"Idempotency-Key": "abc-1"}).json()
        # Same validated body, different spelling: same task.
        again = client.post(
            "/v1/vidu/videos",
            content=b'{"prompt": "  rate limited fox ", "duration": 1, "model": "viduq3-turbo", '
            b'"resolution": "540p", "aspect_ratio": "16:9"}',
            headers={"Idempotency-Key": "abc-1", "content-type": "application/json"},
        ).json()
        assert again["id"] == first["id"]
        conflict = client.post(
            "/v1/vidu/videos", json={**BODY, "duration": 2}, headers={"Idempotency-Key": "abc-1"}
        )
        assert_error(conflict, 409, "Idempotency-Key")
        # Scoped to the API key: another key with the same Idempotency-Key gets its own task.
        theirs = other.post("/v1/vidu/videos", json=BODY, headers={"Idempotency-Key": "abc-1"}).json()
        assert theirs["id"] != first["id"]
        for bad in ("", "x" * 201, "caf\u00e9"):
            response = client.post("/v1/vidu/videos", json=BODY, headers={"Idempotency-Key": bad.encode()})
            assert_error(response, 400, "Idempotency-Key")
    assert task_count(server) == 2


def test_concurrent_retries_with_one_idempotency_key_make_one_task(make_app_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_app_server(workers=0)
    ids: list[str] = []
    errors: list[str] = []
    barrier = threading.Barrier(12)

    def create() -> None:
        with server.client() as client:
            barrier.wait()
            response = client.post("/v1/vidu/videos", json=BODY, headers={"Idempotency-Key": "same"})
            if response.status_code == 200:
                ids.append(response.json()["id"])
            else:
                errors.append(response.text)

    threads = [threading.Thread(target=create) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(ids) == 12 and len(set(ids)) == 1
    assert task_count(server) == 1


def test_unauthenticated_requests_are_not_rate_limited_into_other_keys(app_server: Server) -> None:
    with httpx.Client(base_url=app_server.base_url, timeout=60) as anonymous:
        for _ in range(5):
            assert_error(anonymous.post("/v1/vidu/videos", json=BODY), 401)
    with app_server.client() as client:
        assert client.post("/v1/vidu/videos", json=BODY).status_code == 200


def test_default_poll_limit_allows_one_read_a_second_and_refuses_hammering(make_app_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_app_server(workers=0, start=False)
    for name in ("REELQ_POLL_RATE", "REELQ_POLL_BURST"):  # the shipped defaults, not the test's
        server.env.pop(name)
    server.start(workers=0)
    with server.client() as client:
        task = client.post("/v1/vidu/videos", json=BODY).json()
        for _ in range(6):
            assert client.get(f"/v1/result/{task['id']}").status_code == 200
            time.sleep(1.0)
        codes = [client.get(f"/v1/result/{task['id']}").status_code for _ in range(10)]
        assert 429 in codes and codes[0] == 200


def test_a_concurrent_burst_admits_exactly_the_quota(make_app_server) -> None:  # type: ignore[no-untyped-def]
    """Creates in one burst are stored in shared transactions (group commit); quotas stay exact."""
    server: Server = make_app_server(workers=0, REELQ_MAX_ACTIVE_PER_KEY="7")
    other_key = server.new_key("other")
    codes: dict[str, list[int]] = {"mine": [], "other": []}

    def burst(name: str, key: str | None) -> None:
        with server.client(key) as client:
            go.wait()
            codes[name] += [client.post("/v1/vidu/videos", json=BODY).status_code for _ in range(10)]

    go = threading.Event()
    threads = [threading.Thread(target=burst, args=("mine", None)) for _ in range(3)]
    threads += [threading.Thread(target=burst, args=("other", other_key)) for _ in range(2)]
    for thread in threads:
        thread.start()
    go.set()
    for thread in threads:
        thread.join(60)
    assert sorted(codes["mine"]) == [200] * 7 + [429] * 23
    assert sorted(codes["other"]) == [200] * 7 + [429] * 13
    assert task_count(server) == 14
