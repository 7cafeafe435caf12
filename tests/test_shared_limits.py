"""Shared limits on the real Redis at 127.0.0.1:6379 (REELQ_REDIS_URL): token buckets and quota counts
shared by every API process, and failing open, with one warning, when Redis is down.

Each test uses its own key prefix, so tests (and a developer's own data) never share a budget.
Under CI=true a missing Redis fails these tests instead of skipping them."""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from reelq.database import NewTask, Quotas, TaskStore, make_engine, migrate
from reelq.database.quotas import QuotaExceeded
from reelq.ratelimit import Limit
from tests.conftest import Server, free_port
from tests.test_api import assert_error

redis = pytest.importorskip("redis")

REDIS_URL = os.environ.get("REELQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
BODY = {"model": "viduq3-turbo", "prompt": "a shared budget", "duration": 1, "resolution": "540p"}


@pytest.fixture
def prefix() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"Redis at {REDIS_URL} is required under CI=true: {exc}")
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    name = f"reelq-test-{uuid.uuid4().hex[:12]}:"
    yield name
    for key in client.scan_iter(match=f"{name}*"):
        client.delete(key)
    client.close()


def link(prefix: str, url: str = REDIS_URL, **kwargs: object):
    from reelq.sharedlimits import RedisLink

    return RedisLink(url, prefix, **kwargs)


# --- the token bucket ----------------------------------------------------------------------------------


def test_a_bucket_admits_its_burst_then_refuses_with_the_wait_for_one_token(prefix: str) -> None:
    from reelq.sharedlimits import RedisRateLimiter

    limiter = RedisRateLimiter(link(prefix))
    limit = Limit(rate=2.0, burst=5)
    started = time.monotonic()
    assert [limiter.acquire("k", limit) for _ in range(5)] == [0.0] * 5
    wait = limiter.acquire("k", limit)
    # One token at 2/s, minus what refilled since the burst began (a stall of a loaded machine included).
    assert 0.5 - (time.monotonic() - started) - 0.001 < wait <= 0.5
    time.sleep(0.55)
    assert limiter.acquire("k", limit) == 0.0  # refilled
    assert limiter.acquire("other", limit) == 0.0  # buckets are independent


def test_two_processes_draw_from_one_budget(prefix: str) -> None:
    from reelq.sharedlimits import RedisRateLimiter

    first, second = RedisRateLimiter(link(prefix)), RedisRateLimiter(link(prefix))
    limit = Limit(rate=0.01, burst=4)
    results = [(first if i % 2 else second).acquire("create:key", limit) for i in range(6)]
    assert results[:4] == [0.0] * 4 and all(r > 0 for r in results[4:])
    # Idle buckets do not pile up: each expires once it would have refilled.
    ttl = redis.Redis.from_url(REDIS_URL).pttl(f"{prefix}rl:create:key")
    assert 0 < ttl <= 4 / 0.01 * 1000 + 1000


def test_a_dead_redis_fails_open_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    from reelq.sharedlimits import RETRY_AFTER_FAILURE, RedisRateLimiter

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    # The link's clock is stopped, so its retry second cannot run out on a slow machine; the tries on
    # Redis are counted, not timed.
    now = [1000.0]
    limiter = RedisRateLimiter(link("x:", dead, clock=lambda: now[0]))
    tries: list[object] = []
    script = limiter._script

    def counted(*args: object, **kwargs: object) -> object:
        tries.append(args)
        return script(*args, **kwargs)

    limiter._script = counted  # type: ignore[assignment]
    limit = Limit(rate=0.001, burst=1)
    assert [limiter.acquire("k", limit) for _ in range(1000)] == [0.0] * 1000
    assert len(tries) == 1  # one failed connect, not one per check: the rest failed open untried
    now[0] += RETRY_AFTER_FAILURE  # a second on: tried again, once, and still open
    assert [limiter.acquire("k", limit) for _ in range(10)] == [0.0] * 10
    assert len(tries) == 2
    warnings = [r for r in caplog.records if r.name == "reelq.limits"]
    assert len(warnings) == 1 and "fail open" in warnings[0].getMessage()


# --- quota counts ---------------------------------------------------------------------------------------


@pytest.fixture
def two_stores(tmp_path: Path, prefix: str) -> Iterator[tuple[TaskStore, TaskStore]]:
    from reelq.sharedlimits import SharedQuotaCounts

    engine = make_engine(f"sqlite:///{tmp_path / 'reelq.db'}")
    migrate(engine)
    other = make_engine(f"sqlite:///{tmp_path / 'reelq.db'}")
    yield (
        TaskStore(engine, SharedQuotaCounts(link(prefix))),
        TaskStore(other, SharedQuotaCounts(link(prefix))),
    )
    engine.dispose()
    other.dispose()


def test_quota_counts_reused_by_one_process_include_the_creates_of_the_others(
    two_stores: tuple[TaskStore, TaskStore],
) -> None:
    first, second = two_stores
    key = first.create_key("k")[0].id
    new = NewTask(model="viduq3-turbo", prompt="p", duration=1, aspect_ratio="16:9", resolution="540p")
    quotas = Quotas(max_active_per_key=100, max_queue=10_000)

    def admitted(store: TaskStore, n: int) -> int:
        outcomes = store.create_tasks([(key, new)] * n, quotas)
        return sum(not isinstance(o, QuotaExceeded) for o in outcomes)

    assert admitted(first, 50) == 50
    assert admitted(second, 39) == 39
    # Within the second a count is reused: the first process's own count (50) would admit 50 more;
    # the shared one knows of the other's 39 and takes a fresh count near the limit.
    assert admitted(first, 20) == 11
    assert admitted(second, 5) == 0


# --- two real API processes -----------------------------------------------------------------------------


def _second_server(first: Server, **env: str) -> Server:
    server = Server(home=first.home, port=free_port(), env={**first.env, **env}, keys=first.keys)
    server.start(workers=0)
    return server


def test_two_api_processes_share_the_poll_and_create_budgets(make_server: Callable, prefix: str) -> None:
    env = {
        "REELQ_REDIS_URL": REDIS_URL,
        "REELQ_REDIS_PREFIX": prefix,
        "REELQ_POLL_RATE": "0.01",
        "REELQ_POLL_BURST": "4",
        "REELQ_CREATE_RATE": "3",
    }
    first: Server = make_server(workers=0, **env)
    second = _second_server(first)
    try:
        with first.client() as a, second.client() as b:
            creates = [(a if i % 2 else b).post("/v1/vidu/videos", json=BODY) for i in range(4)]
            assert [r.status_code for r in creates] == [200, 200, 200, 429]
            assert_error(creates[3], 429)
            assert_error(a.post("/v1/vidu/videos", json=BODY), 429)
            task = creates[0].json()["id"]
            reads = [(a if i % 2 else b).get(f"/v1/result/{task}") for i in range(5)]
            assert [r.status_code for r in reads] == [200, 200, 200, 200, 429]
            assert int(reads[4].headers["retry-after"]) >= 1
            # The routed path (a long-poll) draws from the same bucket.
            assert_error(a.get(f"/v1/result/{task}?wait=1"), 429)
            # Another task has its own budget.
            other = creates[1].json()["id"]
            assert b.get(f"/v1/result/{other}").status_code == 200
    finally:
        second.stop(signal.SIGKILL)


def test_an_api_whose_redis_is_dead_keeps_serving_and_says_so_once(make_server: Callable) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    server: Server = make_server(workers=1, REELQ_REDIS_URL=dead, REELQ_POLL_RATE="1", REELQ_POLL_BURST="2")
    with server.client() as client:
        task = client.post("/v1/vidu/videos", json=BODY)
        assert task.status_code == 200
        codes = [client.get(f"/v1/result/{task.json()['id']}").status_code for _ in range(30)]
    assert codes == [200] * 30  # failed open: no limit without Redis, and no error either
    assert httpx.get(f"{server.base_url}/readyz", timeout=60).status_code == 200
    lines = [line for line in server.log().splitlines() if "Redis unavailable" in line]
    assert len(lines) == 1, server.log()
